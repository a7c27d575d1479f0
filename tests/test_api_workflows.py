"""Workflows RPCs and PostWorkflowResults, with remote models served by the test."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from api_helpers import (
    CHANNELS,
    Api,
    assert_error,
    channel_params,
    collector_pb,
    metadata,
    post_workflows,
    random_sample_workflow_json,
    random_sample_workflow_pb,
)
from clarifai_grpc.grpc.api import resources_pb2, service_pb2

pytest_plugins = ("api_fixtures",)


def thresholder_node(node_id: str = "threshold", **fields: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "model": {
            "id": "thresholder",
            "model_type_id": "concept-thresholder",
            "output_info": {
                "params": {"concept_threshold_type": 1},
                "data": {"concepts": [{"id": "cat", "value": 0.5}]},
            },
        },
        **fields,
    }


def remote_node(
    base_url: str, node_id: str = "remote", api_key: str = "model-key", **fields: Any
) -> dict[str, Any]:
    return {
        "id": node_id,
        "model": {
            "id": "detector",
            "user_id": "owner",
            "app_id": "models",
            "output_info": {"params": {"base_url": base_url, "api_key": api_key}},
        },
        **fields,
    }


def post_json(api: Api, key: str, *workflows: dict[str, Any]) -> dict[str, Any]:
    with api.http(key) as client:
        response = client.post("/v2/workflows", json={"workflows": list(workflows)})
    body: dict[str, Any] = response.json()
    body["http_status"] = response.status_code
    return body


# --- create, get, list, patch, delete -------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
def test_workflow_round_trip(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    workflow = random_sample_workflow_pb("wf1", keep_fraction=0.25)
    workflow.description = "a quarter"

    created = post_workflows(stub, metadata(key), workflow)
    fetched = stub.GetWorkflow(
        service_pb2.GetWorkflowRequest(workflow_id="wf1"), metadata=metadata(key)
    )

    assert created.status.code == 10000, created.status
    got = fetched.workflow
    assert got.id == "wf1"
    assert got.app_id == "app1"
    assert got.user_id == "alice"
    assert got.description == "a quarter"
    assert got.created_at.seconds > 0
    assert [node.id for node in got.nodes] == ["sample"]
    assert got.nodes[0].model.model_type_id == "random-sample"
    assert dict(got.nodes[0].model.output_info.params) == {"keep_fraction": 0.25}


@pytest.mark.parametrize("channel", CHANNELS)
def test_list_workflows(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    for workflow_id in ("w1", "w2", "w3"):
        post_workflows(stub, metadata(key), random_sample_workflow_pb(workflow_id))

    everything = stub.ListWorkflows(
        service_pb2.ListWorkflowsRequest(), metadata=metadata(key)
    )
    second = stub.ListWorkflows(
        service_pb2.ListWorkflowsRequest(page=2, per_page=2), metadata=metadata(key)
    )

    assert [w.id for w in everything.workflows] == ["w1", "w2", "w3"]
    assert [w.id for w in second.workflows] == ["w3"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_patch_workflow(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post_workflows(stub, metadata(key), random_sample_workflow_pb("wf1"))

    described = stub.PatchWorkflows(
        service_pb2.PatchWorkflowsRequest(
            action="overwrite",
            workflows=[resources_pb2.Workflow(id="wf1", description="new")],
        ),
        metadata=metadata(key),
    )
    renoded = stub.PatchWorkflows(
        service_pb2.PatchWorkflowsRequest(
            workflows=[random_sample_workflow_pb("wf1", keep_fraction=0.75)]
        ),
        metadata=metadata(key),
    )
    invalid = stub.PatchWorkflows(
        service_pb2.PatchWorkflowsRequest(
            workflows=[random_sample_workflow_pb("wf1", keep_fraction=7)]
        ),
        metadata=metadata(key),
    )
    unknown = stub.PatchWorkflows(
        service_pb2.PatchWorkflowsRequest(
            workflows=[resources_pb2.Workflow(id="ghost", description="x")]
        ),
        metadata=metadata(key),
    )
    merge = stub.PatchWorkflows(
        service_pb2.PatchWorkflowsRequest(
            action="merge", workflows=[resources_pb2.Workflow(id="wf1")]
        ),
        metadata=metadata(key),
    )

    assert described.status.code == 10000, described.status
    assert described.workflows[0].description == "new"
    assert len(described.workflows[0].nodes) == 1
    assert renoded.status.code == 10000
    assert renoded.workflows[0].description == "new"
    params = dict(renoded.workflows[0].nodes[0].model.output_info.params)
    assert params == {"keep_fraction": 0.75}
    assert_error(invalid.status, 22104, "keep_fraction")
    assert_error(unknown.status, 22102, "ghost")
    assert_error(merge.status, 11102, "action")


@pytest.mark.parametrize("channel", CHANNELS)
def test_delete_workflows(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post_workflows(
        stub,
        metadata(key),
        random_sample_workflow_pb("w1"),
        random_sample_workflow_pb("w2"),
        random_sample_workflow_pb("w3"),
    )

    by_ids = stub.DeleteWorkflows(
        service_pb2.DeleteWorkflowsRequest(ids=["w1"]), metadata=metadata(key)
    )
    single = stub.DeleteWorkflow(
        service_pb2.DeleteWorkflowRequest(workflow_id="w2"), metadata=metadata(key)
    )
    unknown = stub.DeleteWorkflows(
        service_pb2.DeleteWorkflowsRequest(ids=["w3", "ghost"]), metadata=metadata(key)
    )
    remaining = stub.ListWorkflows(
        service_pb2.ListWorkflowsRequest(), metadata=metadata(key)
    )
    everything = stub.DeleteWorkflows(
        service_pb2.DeleteWorkflowsRequest(delete_all=True), metadata=metadata(key)
    )
    none_left = stub.ListWorkflows(
        service_pb2.ListWorkflowsRequest(), metadata=metadata(key)
    )

    assert by_ids.status.code == 10000
    assert single.status.code == 10000
    assert_error(unknown.status, 22102, "ghost")
    assert [w.id for w in remaining.workflows] == ["w3"]
    assert everything.status.code == 10000
    assert list(none_left.workflows) == []


@pytest.mark.parametrize("channel", CHANNELS)
def test_delete_used_workflow(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post_workflows(
        stub,
        metadata(key),
        random_sample_workflow_pb("used"),
        random_sample_workflow_pb("free"),
    )
    stub.PostCollectors(
        service_pb2.PostCollectorsRequest(
            collectors=[
                collector_pb("c1", key, pre_queue_workflow_id="used"),
                collector_pb("c2", key, post_queue_workflow_id="used"),
            ]
        ),
        metadata=metadata(key),
    )

    by_id = stub.DeleteWorkflows(
        service_pb2.DeleteWorkflowsRequest(ids=["used", "free"]), metadata=metadata(key)
    )
    everything = stub.DeleteWorkflows(
        service_pb2.DeleteWorkflowsRequest(delete_all=True), metadata=metadata(key)
    )
    free = stub.DeleteWorkflow(
        service_pb2.DeleteWorkflowRequest(workflow_id="free"), metadata=metadata(key)
    )

    assert_error(by_id.status, 11102, "used", "c1", "c2")
    assert_error(everything.status, 11102, "c1")
    assert free.status.code == 10000
    listed = stub.ListWorkflows(
        service_pb2.ListWorkflowsRequest(), metadata=metadata(key)
    )
    assert [w.id for w in listed.workflows] == ["used"]


def test_rest_bindings(api: Api) -> None:
    key = api.key()
    with api.http(key) as client:
        for prefix in ("/v2", "/v2/users/alice/apps/app1"):
            workflow = random_sample_workflow_json(f"wf{len(prefix)}")
            created = client.post(f"{prefix}/workflows", json={"workflows": [workflow]})
            fetched = client.get(f"{prefix}/workflows/{workflow['id']}")
            listed = client.get(f"{prefix}/workflows", params={"per_page": 1})
            patched = client.patch(
                f"{prefix}/workflows",
                json={"workflows": [{"id": workflow["id"], "description": "p"}]},
            )
            deleted = client.request(
                "DELETE", f"{prefix}/workflows", json={"ids": [workflow["id"]]}
            )
            missing = client.get(f"{prefix}/workflows/{workflow['id']}")

            assert created.status_code == 200, created.json()
            assert fetched.json()["workflow"]["id"] == workflow["id"]
            assert len(listed.json()["workflows"]) == 1
            assert patched.json()["workflows"][0]["description"] == "p"
            assert deleted.status_code == 200
            assert missing.status_code == 404
            assert missing.json()["status"]["code"] == 22102


# --- validation ---------------------------------------------------------------------


def _invalid_workflows(base_url: str) -> list[tuple[dict[str, Any], int, str]]:
    sample = random_sample_workflow_json("wf")
    sample_node = sample["nodes"][0]
    return [
        ({**sample, "id": "bad id"}, 11102, "workflows[0].id"),
        ({**sample, "nodes": []}, 22107, "workflows[0].nodes"),
        (
            random_sample_workflow_json("wf", keep_fraction=1.5),
            22104,
            "workflows[0].nodes[0].model.output_info.params.keep_fraction",
        ),
        (
            {
                "id": "wf",
                "nodes": [{"id": "n", "model": {"model_type_id": "teleport"}}],
            },
            22104,
            "workflows[0].nodes[0].model.model_type_id",
        ),
        (
            {
                "id": "wf",
                "nodes": [{**sample_node, "node_inputs": [{"node_id": "zz"}]}],
            },
            22107,
            "workflows[0].nodes[0].node_inputs[0].node_id",
        ),
        (
            {
                "id": "wf",
                "nodes": [
                    {**sample_node, "id": "a", "node_inputs": [{"node_id": "b"}]},
                    {**sample_node, "id": "b", "node_inputs": [{"node_id": "a"}]},
                ],
            },
            22107,
            "node_inputs",
        ),
        (
            {"id": "wf", "nodes": [sample_node, sample_node]},
            22107,
            "workflows[0].nodes[1].id",
        ),
        (
            {"id": "wf", "nodes": [{**sample_node, "suppress_output": True}]},
            22107,
            "workflows[0].nodes",
        ),
        (
            {"id": "wf", "nodes": [{**sample_node, "id": "bad node!"}]},
            22104,
            "workflows[0].nodes.0.id",
        ),
        (
            {"id": "wf", "nodes": [remote_node("http://198.51.100.7:8080")]},
            22104,
            "workflows[0].nodes[0].model.output_info.params.base_url",
        ),
        (
            {"id": "wf", "nodes": [remote_node(base_url + ".evil.test")]},
            22104,
            "workflows[0].nodes[0].model.output_info.params.base_url",
        ),
        (
            {"id": "wf", "nodes": [remote_node("ftp://127.0.0.1/models")]},
            22104,
            "base_url",
        ),
    ]


@pytest.mark.parametrize("case", range(12))
def test_post_rejects_invalid(api: Api, fake_model: Any, case: int) -> None:
    key = api.key()
    workflow, code, field = _invalid_workflows(fake_model.url)[case]

    body = post_json(api, key, workflow)

    assert body["status"]["code"] == code, body
    assert field in body["status"]["description"]
    assert body["http_status"] == 400
    with api.http(key) as client:
        assert client.get("/v2/workflows").json()["workflows"] == []


def test_invalid_case_count(api: Api, fake_model: Any) -> None:
    assert len(_invalid_workflows(fake_model.url)) == 12


@pytest.mark.parametrize("channel", CHANNELS)
def test_post_errors_by_channel(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post_workflows(stub, metadata(key), random_sample_workflow_pb("wf"))

    duplicate = post_workflows(stub, metadata(key), random_sample_workflow_pb("wf"))
    repeated = post_workflows(
        stub,
        metadata(key),
        random_sample_workflow_pb("x"),
        random_sample_workflow_pb("x"),
    )
    invalid = post_workflows(
        stub, metadata(key), random_sample_workflow_pb("y", keep_fraction=0)
    )
    empty = post_workflows(stub, metadata(key))
    unknown = stub.GetWorkflow(
        service_pb2.GetWorkflowRequest(workflow_id="ghost"), metadata=metadata(key)
    )

    assert_error(duplicate.status, 40010, "wf")
    assert_error(repeated.status, 11102, "workflows[1].id")
    assert_error(invalid.status, 22104, "keep_fraction")
    assert_error(empty.status, 11102, "workflows")
    assert_error(unknown.status, 22102, "ghost")


@pytest.mark.parametrize("channel", channel_params(broken_json=True))
def test_thresholder_workflow(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    workflow = resources_pb2.Workflow(id="thr")
    node = workflow.nodes.add(id="t")
    node.model.model_type_id = "concept-thresholder"
    node.model.output_info.params.update({"concept_threshold_type": 1})
    node.model.output_info.data.concepts.add(id="cat", value=0.5)

    response = post_workflows(stub, metadata(key), workflow)

    assert response.status.code == 10000, response.status
    concepts = response.workflows[0].nodes[0].model.output_info.data.concepts
    assert [(c.id, c.value) for c in concepts] == [("cat", 0.5)]


# --- model keys ---------------------------------------------------------------------


def test_model_key_encrypted(api: Api, fake_model: Any) -> None:
    key = api.key()
    workflow = {
        "id": "wf",
        "nodes": [remote_node(fake_model.url, api_key="s3cret-model-key")],
    }

    created = post_json(api, key, workflow)
    raw = redis.Redis.from_url(api.settings.redis_url).get("col:workflow:alice:app1:wf")
    with api.http(key) as client:
        fetched = client.get("/v2/workflows/wf").json()

    assert created["status"]["code"] == 10000, created
    assert raw is not None
    assert b"s3cret-model-key" not in raw
    assert b"api_key_encrypted" in raw
    params = fetched["workflow"]["nodes"][0]["model"]["output_info"]["params"]
    assert params == {"base_url": fake_model.url, "api_key": "s3cret-model-key"}


def test_model_url_below_prefix(api: Api, fake_model: Any) -> None:
    key = api.key()
    workflow = {"id": "wf", "nodes": [remote_node(fake_model.url + "/models/v1")]}

    assert post_json(api, key, workflow)["status"]["code"] == 10000


# --- PostWorkflowResults -------------------------------------------------------------


def test_results_local_nodes(api: Api) -> None:
    key = api.key()
    workflow = {
        "id": "wf",
        "nodes": [
            thresholder_node("t"),
            {
                "id": "keep",
                "model": {
                    "model_type_id": "random-sample",
                    "output_info": {"params": {"keep_fraction": 1}},
                },
                "node_inputs": [{"node_id": "t"}],
            },
        ],
    }
    post_json(api, key, workflow)
    concepts = [{"id": "cat", "value": 0.9}, {"id": "dog", "value": 0.2}]
    with api.http(key) as client:
        response = client.post(
            "/v2/workflows/wf/results",
            json={"inputs": [{"id": "in1", "data": {"concepts": concepts}}]},
        )

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"]["code"] == 10000
    (result,) = body["results"]
    assert result["input"]["id"] == "in1"
    outputs = {output["model"]["model_type_id"]: output for output in result["outputs"]}
    assert set(outputs) == {"concept-thresholder", "random-sample"}
    assert outputs["concept-thresholder"]["data"]["concepts"] == [
        {"id": "cat", "value": 0.9}
    ]
    assert outputs["random-sample"]["data"]["concepts"] == [{"id": "cat", "value": 0.9}]


@pytest.mark.parametrize("channel", CHANNELS)
def test_results_remote_node(api: Api, fake_model: Any, channel: str) -> None:
    key = api.key()
    post_json(api, key, {"id": "wf", "nodes": [remote_node(fake_model.url)]})
    stub = api.stub(channel)

    response = stub.PostWorkflowResults(
        service_pb2.PostWorkflowResultsRequest(
            workflow_id="wf",
            inputs=[
                resources_pb2.Input(
                    id="in1",
                    data=resources_pb2.Data(
                        image=resources_pb2.Image(url="https://example.test/a.jpg")
                    ),
                )
            ],
        ),
        metadata=metadata(key),
    )

    assert response.status.code == 10000, response.status
    (output,) = response.results[0].outputs
    assert [c.id for c in output.data.concepts] == ["remote-cat"]
    assert "api_key" not in dict(output.model.output_info.params)
    (request,) = fake_model.requests
    assert request["path"] == "/v2/users/owner/apps/models/models/detector/outputs"
    assert request["authorization"] == "Key model-key"
    assert request["body"]["inputs"][0]["id"] == "in1"
    assert request["body"]["inputs"][0]["data"]["image"]["url"] == (
        "https://example.test/a.jpg"
    )


def test_results_remote_failure(api: Api, fake_model: Any) -> None:
    key = api.key()
    post_json(api, key, {"id": "wf", "nodes": [remote_node(fake_model.url)]})
    fake_model.fail_with = 503
    with api.http(key) as client:
        response = client.post(
            "/v2/workflows/wf/results",
            json={"inputs": [{"data": {"image": {"url": "https://e.test/a.jpg"}}}]},
        )

    body = response.json()
    assert response.status_code == 200
    assert body["status"]["code"] == 10010
    (result,) = body["results"]
    assert result["status"]["code"] == 10020
    assert "HTTP 503" in result["outputs"][0]["status"]["description"]
    assert result["outputs"][0]["data"] == {}


def test_results_errors(api: Api) -> None:
    key = api.key()
    post_json(api, key, random_sample_workflow_json("wf"))
    with api.http(key) as client:
        unknown = client.post(
            "/v2/workflows/ghost/results",
            json={"inputs": [{"data": {"text": {"raw": "x"}}}]},
        )
        no_inputs = client.post("/v2/workflows/wf/results", json={"inputs": []})
        no_data = client.post(
            "/v2/workflows/wf/results", json={"inputs": [{"id": "a"}]}
        )
        versioned = client.post(
            "/v2/users/alice/apps/app1/workflows/wf/versions/v1/results",
            json={"inputs": [{"data": {"text": {"raw": "x"}}}]},
        )

    assert unknown.status_code == 404
    assert unknown.json()["status"]["code"] == 22102
    assert no_inputs.json()["status"]["code"] == 11102
    assert "inputs[0].data" in no_data.json()["status"]["description"]
    assert versioned.status_code == 200
    assert versioned.json()["status"]["code"] == 10000
