"""Collectors RPCs through clarifai_grpc's gRPC and JSON channels, and over REST."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from api_helpers import (
    CHANNELS,
    Api,
    assert_error,
    collector_json,
    collector_pb,
    metadata,
    post_workflows,
    random_sample_workflow_pb,
    source_pb,
)
from clarifai_grpc.grpc.api import resources_pb2, service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2

pytest_plugins = ("api_fixtures",)

SOURCE = "collector_source.api_post_model_outputs_collector_source"


def post(stub: Any, key: str, *collectors: resources_pb2.Collector) -> Any:
    return stub.PostCollectors(
        service_pb2.PostCollectorsRequest(collectors=list(collectors)),
        metadata=metadata(key),
    )


def get(stub: Any, key: str, collector_id: str) -> Any:
    return stub.GetCollector(
        service_pb2.GetCollectorRequest(collector_id=collector_id),
        metadata=metadata(key),
    )


# --- create, get, list, delete ------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
def test_collector_round_trip(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post_workflows(
        stub,
        metadata(key),
        random_sample_workflow_pb("pre"),
        random_sample_workflow_pb("post"),
    )
    collector = collector_pb(
        "c1",
        key,
        description="first",
        pre_queue_workflow_id="pre",
        post_queue_workflow_id="post",
        collect_outputs=True,
        collector_source=source_pb(key, model_version_id="v1"),
    )

    created = post(stub, key, collector)

    assert created.status.code == status_code_pb2.SUCCESS, created.status
    assert created.status.req_id
    fetched = get(stub, key, "c1")
    assert fetched.status.code == status_code_pb2.SUCCESS
    got = fetched.collector
    assert got.id == "c1"
    assert got.description == "first"
    assert got.pre_queue_workflow_id == "pre"
    assert got.post_queue_workflow_id == "post"
    assert got.pre_queue_random_sample == pytest.approx(0.1)
    assert got.collect_outputs is True
    assert got.status.code == status_code_pb2.COLLECTOR_ACTIVE
    assert got.created_at.seconds > 0
    source = got.collector_source.api_post_model_outputs_collector_source
    assert source.model_user_id == "clarifai"
    assert source.model_app_id == "main"
    assert source.model_id == "general-image-recognition"
    assert source.model_version_id == "v1"
    assert source.post_inputs_key_id == key


@pytest.mark.parametrize("channel", CHANNELS)
def test_post_several_collectors(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)

    response = post(stub, key, collector_pb("a", key), collector_pb("b", key))

    assert response.status.code == status_code_pb2.SUCCESS
    assert [c.id for c in response.collectors] == ["a", "b"]


def test_post_key_stored_encrypted(api: Api) -> None:
    key = api.key()
    assert post(api.grpc_stub(), key, collector_pb("c1", key)).status.code == 10000

    raw = redis.Redis.from_url(api.settings.redis_url).get(
        "col:collector:alice:app1:c1"
    )

    assert raw is not None
    assert key.encode() not in raw
    assert b"post_inputs_key_encrypted" in raw


@pytest.mark.parametrize("channel", CHANNELS)
def test_get_unknown_collector(api: Api, channel: str) -> None:
    key = api.key()

    response = get(api.stub(channel), key, "nope")

    assert_error(response.status, 52000, "nope")


@pytest.mark.parametrize("channel", CHANNELS)
def test_list_in_creation_order(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    ids = [f"c{i}" for i in range(5)]
    for collector_id in ids:
        assert post(stub, key, collector_pb(collector_id, key)).status.code == 10000

    everything = stub.ListCollectors(
        service_pb2.ListCollectorsRequest(), metadata=metadata(key)
    )
    pages = [
        stub.ListCollectors(
            service_pb2.ListCollectorsRequest(page=page, per_page=2),
            metadata=metadata(key),
        )
        for page in (1, 2, 3, 4)
    ]

    assert [c.id for c in everything.collectors] == ids
    assert [[c.id for c in page.collectors] for page in pages] == [
        ["c0", "c1"],
        ["c2", "c3"],
        ["c4"],
        [],
    ]
    assert all(page.status.code == 10000 for page in pages)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("per_page=0", "per_page"),
        ("per_page=-3", "per_page"),
        ("per_page=1001", "per_page"),
        ("per_page=ten", "per_page"),
    ],
)
def test_list_rejects_bad_paging(api: Api, query: str, parameter: str) -> None:
    with api.http(api.key()) as client:
        response = client.get(f"/v2/collectors?{query}")

    assert response.status_code == 400
    status = response.json()["status"]
    assert status["code"] == 11102
    assert status["description"].startswith("Invalid request: " + parameter + ":")


def test_list_per_page_limit(api: Api) -> None:
    key = api.key()
    with api.http(key) as client:
        at_limit = client.get("/v2/collectors", params={"per_page": 1000})
        grpc = api.grpc_stub().ListCollectors(
            service_pb2.ListCollectorsRequest(per_page=1001), metadata=metadata(key)
        )

    assert at_limit.status_code == 200
    assert_error(grpc.status, 11102, "per_page")


@pytest.mark.parametrize("channel", CHANNELS)
def test_delete_by_ids(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post(
        stub,
        key,
        collector_pb("a", key),
        collector_pb("b", key),
        collector_pb("c", key),
    )

    response = stub.DeleteCollectors(
        service_pb2.DeleteCollectorsRequest(ids=["a", "c"]), metadata=metadata(key)
    )

    assert response.status.code == 10000
    listed = stub.ListCollectors(
        service_pb2.ListCollectorsRequest(), metadata=metadata(key)
    )
    assert [c.id for c in listed.collectors] == ["b"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_delete_all(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post(stub, key, collector_pb("a", key), collector_pb("b", key))

    response = stub.DeleteCollectors(
        service_pb2.DeleteCollectorsRequest(delete_all=True), metadata=metadata(key)
    )

    assert response.status.code == 10000
    listed = stub.ListCollectors(
        service_pb2.ListCollectorsRequest(), metadata=metadata(key)
    )
    assert list(listed.collectors) == []


@pytest.mark.parametrize("channel", CHANNELS)
def test_delete_errors(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post(stub, key, collector_pb("a", key))

    unknown = stub.DeleteCollectors(
        service_pb2.DeleteCollectorsRequest(ids=["a", "ghost"]), metadata=metadata(key)
    )
    empty = stub.DeleteCollectors(
        service_pb2.DeleteCollectorsRequest(), metadata=metadata(key)
    )
    both = stub.DeleteCollectors(
        service_pb2.DeleteCollectorsRequest(ids=["a"], delete_all=True),
        metadata=metadata(key),
    )

    assert_error(unknown.status, 52000, "ghost")
    assert_error(empty.status, 11102, "ids")
    assert_error(both.status, 11102, "ids")
    assert get(stub, key, "a").status.code == 10000


@pytest.mark.parametrize("prefix", ["/v2", "/v2/users/alice/apps/app1"])
def test_rest_bindings(api: Api, prefix: str) -> None:
    key = api.key()
    with api.http(key) as client:
        created = client.post(
            f"{prefix}/collectors", json={"collectors": [collector_json("c1", key)]}
        )
        fetched = client.get(f"{prefix}/collectors/c1")
        listed = client.get(f"{prefix}/collectors", params={"page": 1, "per_page": 10})
        patched = client.patch(
            f"{prefix}/collectors",
            json={
                "action": "overwrite",
                "collectors": [{"id": "c1", "description": "d"}],
            },
        )
        deleted = client.request("DELETE", f"{prefix}/collectors", json={"ids": ["c1"]})
        after_delete = client.get(f"{prefix}/collectors/c1")

    assert created.status_code == 200, created.json()
    assert created.json()["status"]["code"] == 10000
    assert fetched.json()["collector"]["id"] == "c1"
    assert [c["id"] for c in listed.json()["collectors"]] == ["c1"]
    assert patched.json()["collectors"][0]["description"] == "d"
    assert deleted.status_code == 200
    assert deleted.json()["status"]["code"] == 10000
    assert after_delete.status_code == 404
    assert after_delete.json()["status"]["code"] == 52000


# --- validation -----------------------------------------------------------------------


def _invalid_cases(key: str, other_key: str) -> list[tuple[Any, int, str]]:
    """(collector, expected code, field named in the description)."""
    no_source = resources_pb2.Collector(id="c1", pre_queue_random_sample=0.5)
    return [
        (collector_pb("bad id!", key), 11102, "collectors[0].id"),
        (collector_pb("x" * 49, key), 11102, "collectors[0].id"),
        (collector_pb("", key), 11102, "collectors[0].id"),
        (no_source, 11102, f"collectors[0].{SOURCE}"),
        (
            collector_pb("c1", key, collector_source=source_pb(key, model_user_id="")),
            11102,
            f"{SOURCE}.model_user_id",
        ),
        (
            collector_pb("c1", key, collector_source=source_pb(key, model_app_id="")),
            11102,
            f"{SOURCE}.model_app_id",
        ),
        (
            collector_pb("c1", key, collector_source=source_pb(key, model_id="")),
            11102,
            f"{SOURCE}.model_id",
        ),
        (
            collector_pb("c1", key, pre_queue_workflow_id="ghost"),
            22102,
            "collectors[0].pre_queue_workflow_id",
        ),
        (
            collector_pb("c1", key, post_queue_workflow_id="ghost"),
            22102,
            "collectors[0].post_queue_workflow_id",
        ),
        (
            collector_pb("c1", key, pre_queue_random_sample=0.0),
            11102,
            "pre_queue_random_sample",
        ),
        (
            collector_pb("c1", key, pre_queue_random_sample=1.5),
            11102,
            "collectors[0].pre_queue_random_sample",
        ),
        (
            collector_pb("c1", key, pre_queue_random_sample=-0.25),
            11102,
            "collectors[0].pre_queue_random_sample",
        ),
        (collector_pb("c1", ""), 11102, f"{SOURCE}.post_inputs_key_id"),
        (collector_pb("c1", "0" * 32), 11102, f"{SOURCE}.post_inputs_key_id"),
        (collector_pb("c1", other_key), 11102, f"{SOURCE}.post_inputs_key_id"),
        (
            collector_pb("c1", key, status=status_pb2.Status(code=12345)),
            11102,
            "collectors[0].status.code",
        ),
        (
            collector_pb(
                "c1",
                key,
                status=status_pb2.Status(code=status_code_pb2.COLLECTOR_MISSING),
            ),
            11102,
            "collectors[0].status.code",
        ),
    ]


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("case", range(17))
def test_post_rejects_invalid(api: Api, channel: str, case: int) -> None:
    key = api.key()
    other_key = api.key(app_id="other-app")
    collector, code, field = _invalid_cases(key, other_key)[case]

    response = post(api.stub(channel), key, collector)

    assert_error(response.status, code, field)
    listed = api.grpc_stub().ListCollectors(
        service_pb2.ListCollectorsRequest(), metadata=metadata(key)
    )
    assert list(listed.collectors) == []


def test_invalid_case_count(api: Api) -> None:
    assert len(_invalid_cases("k", "o")) == 17


@pytest.mark.parametrize(
    ("scopes", "pat", "user_id", "app_id", "accepted"),
    [
        (("Inputs:Add",), False, "alice", "app1", True),
        (("All",), False, "alice", "app1", True),
        (("Inputs:Delete",), False, "alice", "app1", True),
        (("Inputs:Get",), False, "alice", "app1", False),
        (("Collectors:Add",), False, "alice", "app1", False),
        (("Inputs:Add",), True, "alice", "", True),
        (("Inputs:Get",), True, "alice", "", False),
        (("All",), True, "bob", "", False),
        (("All",), False, "bob", "app1", False),
    ],
)
def test_post_inputs_key_checks(
    api: Api,
    scopes: tuple[str, ...],
    pat: bool,
    user_id: str,
    app_id: str,
    accepted: bool,
) -> None:
    key = api.key()
    post_key = api.key(user_id=user_id, app_id=app_id, scopes=scopes, pat=pat)

    response = post(api.grpc_stub(), key, collector_pb("c1", post_key))

    if accepted:
        assert response.status.code == 10000, response.status
    else:
        assert_error(response.status, 11102, f"{SOURCE}.post_inputs_key_id")


@pytest.mark.parametrize("channel", CHANNELS)
def test_post_duplicate_id(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    assert post(stub, key, collector_pb("c1", key)).status.code == 10000

    again = post(stub, key, collector_pb("c1", key, description="again"))
    repeated = post(stub, key, collector_pb("c2", key), collector_pb("c2", key))

    assert_error(again.status, 40010, "c1")
    assert_error(repeated.status, 11102, "collectors[1].id")
    assert get(stub, key, "c1").collector.description == ""


def test_post_duplicate_http_status(api: Api) -> None:
    key = api.key()
    body = {"collectors": [collector_json("c1", key)]}
    with api.http(key) as client:
        client.post("/v2/collectors", json=body)
        again = client.post("/v2/collectors", json=body)

    assert again.status_code == 409
    assert again.json()["status"]["code"] == 40010


@pytest.mark.parametrize("channel", CHANNELS)
def test_post_all_or_none(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    assert post(stub, key, collector_pb("existing", key)).status.code == 10000

    invalid_second = post(
        stub,
        key,
        collector_pb("new1", key),
        collector_pb("new2", key, pre_queue_random_sample=2),
    )
    taken_second = post(
        stub, key, collector_pb("new3", key), collector_pb("existing", key)
    )

    assert_error(invalid_second.status, 11102, "collectors[1].pre_queue_random_sample")
    assert_error(taken_second.status, 40010, "existing")
    listed = stub.ListCollectors(
        service_pb2.ListCollectorsRequest(), metadata=metadata(key)
    )
    assert [c.id for c in listed.collectors] == ["existing"]


def test_post_rejects_empty_and_oversized(api: Api) -> None:
    key = api.key()
    stub = api.grpc_stub()

    empty = post(stub, key)
    too_many = post(stub, key, *[collector_pb(f"c{i}", key) for i in range(129)])

    assert_error(empty.status, 11102, "collectors")
    assert_error(too_many.status, 11102, "collectors")


@pytest.mark.parametrize("channel", CHANNELS)
def test_post_accepts_inactive_status(api: Api, channel: str) -> None:
    key = api.key()
    inactive = status_pb2.Status(code=status_code_pb2.COLLECTOR_INACTIVE)

    response = post(api.stub(channel), key, collector_pb("c1", key, status=inactive))

    assert response.status.code == 10000, response.status
    assert response.collectors[0].status.code == status_code_pb2.COLLECTOR_INACTIVE


# --- tenancy of the source ----------------------------------------------------------


@pytest.mark.parametrize(
    ("model_user_id", "requested_caller", "stored_caller"),
    [
        ("clarifai", "", "alice"),
        ("clarifai", "bob", "alice"),
        ("bob", "", "alice"),
        ("bob", "bob", "alice"),
        ("alice", "", ""),
        ("alice", "bob", "bob"),
    ],
)
def test_caller_user_id_rule(
    api: Api, model_user_id: str, requested_caller: str, stored_caller: str
) -> None:
    key = api.key()
    source = source_pb(
        key, model_user_id=model_user_id, caller_user_id=requested_caller
    )

    response = post(
        api.grpc_stub(), key, collector_pb("c1", key, collector_source=source)
    )

    assert response.status.code == 10000, response.status
    got = response.collectors[
        0
    ].collector_source.api_post_model_outputs_collector_source
    assert got.caller_user_id == stored_caller


# --- patch ---------------------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
def test_patch_keeps_other_fields(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post_workflows(stub, metadata(key), random_sample_workflow_pb("wf"))
    post(stub, key, collector_pb("c1", key, description="old"))

    # The guide's patch example: no action, a new description and workflow.
    response = stub.PatchCollectors(
        service_pb2.PatchCollectorsRequest(
            collectors=[
                resources_pb2.Collector(
                    id="c1", description="new", pre_queue_workflow_id="wf"
                )
            ]
        ),
        metadata=metadata(key),
    )

    assert response.status.code == 10000, response.status
    got = get(stub, key, "c1").collector
    assert got.description == "new"
    assert got.pre_queue_workflow_id == "wf"
    assert got.pre_queue_random_sample == pytest.approx(0.1)
    source = got.collector_source.api_post_model_outputs_collector_source
    assert source.model_id == "general-image-recognition"
    assert source.post_inputs_key_id == key


@pytest.mark.parametrize("channel", CHANNELS)
def test_patch_status_and_source(api: Api, channel: str) -> None:
    key = api.key()
    new_key = api.key(scopes=("Inputs:Add",))
    stub = api.stub(channel)
    post(stub, key, collector_pb("c1", key))

    response = stub.PatchCollectors(
        service_pb2.PatchCollectorsRequest(
            action="overwrite",
            collectors=[
                resources_pb2.Collector(
                    id="c1",
                    status=status_pb2.Status(code=status_code_pb2.COLLECTOR_INACTIVE),
                    collector_source=source_pb(new_key, model_user_id="alice"),
                )
            ],
        ),
        metadata=metadata(key),
    )

    assert response.status.code == 10000, response.status
    got = get(stub, key, "c1").collector
    assert got.status.code == status_code_pb2.COLLECTOR_INACTIVE
    source = got.collector_source.api_post_model_outputs_collector_source
    assert source.model_user_id == "alice"
    assert source.post_inputs_key_id == new_key


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("action", ["merge", "remove", "replace"])
def test_patch_rejects_action(api: Api, channel: str, action: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post(stub, key, collector_pb("c1", key))

    response = stub.PatchCollectors(
        service_pb2.PatchCollectorsRequest(
            action=action,
            collectors=[resources_pb2.Collector(id="c1", description="x")],
        ),
        metadata=metadata(key),
    )

    assert_error(response.status, 11102, "action", action)
    assert get(stub, key, "c1").collector.description == ""


@pytest.mark.parametrize("channel", CHANNELS)
def test_patch_errors(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post(stub, key, collector_pb("c1", key))

    def patch(*collectors: resources_pb2.Collector) -> Any:
        return stub.PatchCollectors(
            service_pb2.PatchCollectorsRequest(collectors=list(collectors)),
            metadata=metadata(key),
        )

    unknown = patch(resources_pb2.Collector(id="ghost", description="x"))
    bad_key = patch(
        resources_pb2.Collector(id="c1", collector_source=source_pb("0" * 32))
    )
    bad_workflow = patch(
        resources_pb2.Collector(id="c1", post_queue_workflow_id="nope")
    )
    bad_sample = patch(resources_pb2.Collector(id="c1", pre_queue_random_sample=3))
    bad_status = patch(
        resources_pb2.Collector(id="c1", status=status_pb2.Status(code=10000))
    )
    partly_unknown = patch(
        resources_pb2.Collector(id="c1", description="x"),
        resources_pb2.Collector(id="ghost", description="x"),
    )

    assert_error(unknown.status, 52000, "ghost")
    assert_error(bad_key.status, 11102, f"{SOURCE}.post_inputs_key_id")
    assert_error(bad_workflow.status, 22102, "post_queue_workflow_id")
    assert_error(bad_sample.status, 11102, "pre_queue_random_sample")
    assert_error(bad_status.status, 11102, "status.code")
    assert_error(partly_unknown.status, 52000, "ghost")
    assert get(stub, key, "c1").collector.description == ""


def test_patch_rest_clears_field(api: Api) -> None:
    key = api.key()
    with api.http(key) as client:
        client.post("/v2/workflows", json={"workflows": [_sample_workflow("wf")]})
        client.post(
            "/v2/collectors",
            json={
                "collectors": [
                    collector_json(
                        "c1", key, description="d", pre_queue_workflow_id="wf"
                    )
                ]
            },
        )
        cleared = client.patch(
            "/v2/collectors",
            json={
                "collectors": [
                    {"id": "c1", "description": "", "pre_queue_workflow_id": ""}
                ]
            },
        )
        nothing_left = client.patch(
            "/v2/collectors",
            json={"collectors": [{"id": "c1", "pre_queue_random_sample": 0}]},
        )

    assert cleared.status_code == 200, cleared.json()
    collector = cleared.json()["collectors"][0]
    assert collector["description"] == ""
    assert collector["pre_queue_workflow_id"] == ""
    assert nothing_left.status_code == 400
    assert "pre_queue_random_sample" in nothing_left.json()["status"]["description"]


def _sample_workflow(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "nodes": [
            {
                "id": "n1",
                "model": {
                    "model_type_id": "random-sample",
                    "output_info": {"params": {"keep_fraction": 0.5}},
                },
            }
        ],
    }


def test_patch_concurrent(api: Api) -> None:
    key = api.key()
    post(api.grpc_stub(), key, collector_pb("c1", key))
    results: list[dict[str, Any]] = []

    def patch(description: str) -> None:
        with api.http(key) as client:
            response = client.patch(
                "/v2/collectors",
                json={"collectors": [{"id": "c1", "description": description}]},
            )
        results.append(response.json()["status"])

    threads = [threading.Thread(target=patch, args=(f"d{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 4
    assert all(status["code"] in (10000, 10020) for status in results), results
    assert any(status["code"] == 10000 for status in results)
    final = get(api.grpc_stub(), key, "c1").collector.description
    assert final in {f"d{i}" for i in range(4)}
