"""Two tenants, alice and bob, each trying to reach the other's objects.

Every attempt must end in not-found or an invalid key, and no response may carry
the other tenant's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from api_helpers import (
    CHANNELS,
    Api,
    collector_json,
    collector_pb,
    metadata,
    random_sample_workflow_json,
)
from clarifai_grpc.grpc.api import resources_pb2, service_pb2

pytest_plugins = ("api_fixtures",)

ALICE_MARK = "alice-secret-description"


@dataclass
class Tenants:
    alice_key: str
    alice_pat: str
    bob_key: str
    bob_pat: str


@pytest.fixture
def tenants(api: Api) -> Tenants:
    """Alice owns app1 with a collector, a workflow, an input and a relation."""
    tenants = Tenants(
        alice_key=api.key("alice", "app1"),
        alice_pat=api.key("alice", pat=True),
        bob_key=api.key("bob", "app1"),
        bob_pat=api.key("bob", pat=True),
    )
    key = tenants.alice_key
    with api.http(key) as client:
        workflow = {**random_sample_workflow_json("wf"), "description": ALICE_MARK}
        collector = collector_json("c1", key, description=ALICE_MARK)
        responses = [
            client.post("/v2/workflows", json={"workflows": [workflow]}),
            client.post("/v2/collectors", json={"collectors": [collector]}),
            client.post(
                "/v2/inputs",
                json={"inputs": [{"id": "i1", "data": {"text": {"raw": ALICE_MARK}}}]},
            ),
            client.post(
                "/v2/users/alice/apps/app1/concepts/kitten/relations",
                json={
                    "concept_relations": [
                        {"object_concept": {"id": "cat"}, "predicate": "hyponym"}
                    ]
                },
            ),
        ]
    assert all(response.status_code == 200 for response in responses)
    return tenants


def _assert_no_leak(response: Any, key: str) -> None:
    text = response.text
    assert ALICE_MARK not in text
    assert key not in text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/collectors/c1", None),
        ("GET", "/collectors", None),
        ("PATCH", "/collectors", {"collectors": [{"id": "c1", "description": "x"}]}),
        ("DELETE", "/collectors", {"ids": ["c1"]}),
        ("GET", "/workflows/wf", None),
        ("GET", "/workflows", None),
        ("DELETE", "/workflows", {"ids": ["wf"]}),
        ("GET", "/inputs/i1", None),
        ("GET", "/inputs", None),
        ("DELETE", "/inputs", {"ids": ["i1"]}),
    ],
)
@pytest.mark.parametrize("credential", ["bob_key", "bob_pat"])
def test_bob_on_alice_paths(
    api: Api,
    tenants: Tenants,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    credential: str,
) -> None:
    key = getattr(tenants, credential)
    with api.http(key) as client:
        response = client.request(method, f"/v2/users/alice/apps/app1{path}", json=body)

    assert response.status_code == 401
    assert response.json()["status"]["code"] == 11008
    _assert_no_leak(response, tenants.alice_key)


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("GET", "/collectors/c1", None, 52000),
        ("PATCH", "/collectors", {"collectors": [{"id": "c1"}]}, 52000),
        ("DELETE", "/collectors", {"ids": ["c1"]}, 52000),
        ("GET", "/workflows/wf", None, 22102),
        ("DELETE", "/workflows", {"ids": ["wf"]}, 22102),
        ("GET", "/inputs/i1", None, 30102),
        ("DELETE", "/inputs", {"ids": ["i1"]}, 30102),
    ],
)
def test_bob_own_app_same_ids(
    api: Api,
    tenants: Tenants,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    code: int,
) -> None:
    """Bob's app1 is not alice's app1: the same ids are simply not found there."""
    with api.http(tenants.bob_key) as client:
        response = client.request(method, f"/v2{path}", json=body)
        listed = [
            client.get("/v2/collectors"),
            client.get("/v2/workflows"),
            client.get("/v2/inputs"),
        ]

    assert response.status_code == 404
    assert response.json()["status"]["code"] == code
    _assert_no_leak(response, tenants.alice_key)
    for page in listed:
        assert page.status_code == 200
        _assert_no_leak(page, tenants.alice_key)
    assert listed[0].json()["collectors"] == []


def test_bob_sees_no_relations(api: Api, tenants: Tenants) -> None:
    with api.http(tenants.bob_pat) as client:
        own = client.get("/v2/users/bob/apps/app1/concepts/relations")
        alice = client.get("/v2/users/alice/apps/app1/concepts/relations")

    assert own.json()["concept_relations"] == []
    assert alice.status_code == 401


@pytest.mark.parametrize("channel", CHANNELS)
def test_bob_grpc(api: Api, tenants: Tenants, channel: str) -> None:
    stub = api.stub(channel)
    alice_app = resources_pb2.UserAppIDSet(user_id="alice", app_id="app1")

    responses = {
        "key on alice's app": stub.GetCollector(
            service_pb2.GetCollectorRequest(user_app_id=alice_app, collector_id="c1"),
            metadata=metadata(tenants.bob_key),
        ),
        "pat on alice's app": stub.ListCollectors(
            service_pb2.ListCollectorsRequest(user_app_id=alice_app),
            metadata=metadata(tenants.bob_pat),
        ),
        "own app": stub.GetCollector(
            service_pb2.GetCollectorRequest(collector_id="c1"),
            metadata=metadata(tenants.bob_key),
        ),
        "own inputs": stub.GetInput(
            service_pb2.GetInputRequest(input_id="i1"),
            metadata=metadata(tenants.bob_key),
        ),
    }

    assert responses["key on alice's app"].status.code == 11008
    assert responses["pat on alice's app"].status.code == 11008
    assert list(responses["pat on alice's app"].collectors) == []
    assert responses["own app"].status.code == 52000
    assert responses["own inputs"].status.code == 30102
    for response in responses.values():
        assert ALICE_MARK not in str(response)


def test_bob_cannot_use_alice_objects(api: Api, tenants: Tenants) -> None:
    stub = api.grpc_stub()

    with_alice_key = stub.PostCollectors(
        service_pb2.PostCollectorsRequest(
            collectors=[collector_pb("b1", tenants.alice_key)]
        ),
        metadata=metadata(tenants.bob_key),
    )
    with_alice_workflow = stub.PostCollectors(
        service_pb2.PostCollectorsRequest(
            collectors=[collector_pb("b2", tenants.bob_key, pre_queue_workflow_id="wf")]
        ),
        metadata=metadata(tenants.bob_key),
    )
    results = stub.PostWorkflowResults(
        service_pb2.PostWorkflowResultsRequest(
            workflow_id="wf",
            inputs=[
                resources_pb2.Input(
                    data=resources_pb2.Data(text=resources_pb2.Text(raw="x"))
                )
            ],
        ),
        metadata=metadata(tenants.bob_key),
    )

    assert with_alice_key.status.code == 11102
    assert "post_inputs_key_id" in with_alice_key.status.description
    assert with_alice_workflow.status.code == 22102
    assert results.status.code == 22102


def test_bob_collects_only_own_calls(api: Api, tenants: Tenants) -> None:
    """Bob's collector on alice's model is limited to bob's own predict calls."""
    source = collector_pb("b1", tenants.bob_key).collector_source
    source.api_post_model_outputs_collector_source.model_user_id = "alice"
    source.api_post_model_outputs_collector_source.caller_user_id = "alice"

    response = api.grpc_stub().PostCollectors(
        service_pb2.PostCollectorsRequest(
            collectors=[collector_pb("b1", tenants.bob_key, collector_source=source)]
        ),
        metadata=metadata(tenants.bob_key),
    )

    assert response.status.code == 10000
    stored = response.collectors[0].collector_source
    assert stored.api_post_model_outputs_collector_source.caller_user_id == "bob"


def test_alice_data_intact(api: Api, tenants: Tenants) -> None:
    with api.http(tenants.bob_key) as client:
        for path in ("/v2/collectors", "/v2/workflows", "/v2/inputs"):
            client.request("DELETE", path, json={"delete_all": True})
    with api.http(tenants.alice_key) as client:
        collector = client.get("/v2/collectors/c1")
        workflow = client.get("/v2/workflows/wf")
        item = client.get("/v2/inputs/i1")

    assert collector.json()["collector"]["description"] == ALICE_MARK
    assert workflow.json()["workflow"]["description"] == ALICE_MARK
    assert item.json()["input"]["data"]["text"]["raw"] == ALICE_MARK
