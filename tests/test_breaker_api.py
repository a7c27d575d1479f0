"""Malformed API calls over REST and gRPC: each gets a Clarifai status with the
expected code and HTTP status, never a server error or a traceback."""

from __future__ import annotations

from typing import Any

import grpc
import orjson
import pytest
from api_helpers import Api, collector_json, collector_pb, metadata
from clarifai_grpc.grpc.api import resources_pb2, service_pb2

pytest_plugins = ("api_fixtures",)

LONG_ID = "a" * 49
MAX_ID = "a" * 48


def rest_cases() -> list[Any]:
    """(method, path, body, key kind, code, HTTP status, description fragment)."""
    return [
        (
            "GET",
            "/v2/collectors?per_page=" + "9" * 30,
            None,
            "key",
            11102,
            400,
            "per_page",
        ),
        ("GET", "/v2/collectors?per_page=1001", None, "key", 11102, 400, "per_page"),
        ("GET", "/v2/collectors?page=0", None, "key", 11102, 400, "page"),
        ("GET", "/v2/collectors?page=-1", None, "key", 11102, 400, "page"),
        ("GET", "/v2/collectors?page=1.5", None, "key", 11102, 400, "page"),
        ("GET", "/v2/collectors/a%20b", None, "key", 11102, 400, "collector_id"),
        ("GET", f"/v2/collectors/{LONG_ID}", None, "key", 11102, 400, "collector_id"),
        ("GET", f"/v2/collectors/{MAX_ID}", None, "key", 52000, 404, MAX_ID),
        ("GET", "/v2/collectors/a%2Fb", None, "key", 11101, 404, "no such path"),
        ("GET", "/v2/collectors/%C3%A9", None, "key", 11102, 400, "collector_id"),
        ("GET", "/v2/collectors/%00", None, "key", 11102, 400, "collector_id"),
        (
            "PATCH",
            "/v2/collectors",
            {"collectors": [{"id": "ghost", "description": "x"}]},
            "key",
            52000,
            404,
            "ghost",
        ),
        (
            "DELETE",
            "/v2/collectors",
            {"ids": ["c1"], "delete_all": True},
            "key",
            11102,
            400,
            "ids",
        ),
        ("DELETE", "/v2/collectors", {"ids": ["bad id"]}, "key", 11102, 400, "ids[0]"),
        ("DELETE", "/v2/collectors", {"ids": ["ghost"]}, "key", 52000, 404, "ghost"),
        (
            "DELETE",
            "/v2/collectors",
            {"delete_all": "yes"},
            "key",
            11102,
            400,
            "delete_all",
        ),
        ("GET", "/v2/collectors", None, "pat", 11102, 400, "user_app_id"),
        (
            "GET",
            "/v2/users/alice/apps/other/collectors",
            None,
            "key",
            11008,
            401,
            "other",
        ),
        ("GET", "/v2/collectors", None, "missing", 11102, 401, "missing Authorization"),
        ("GET", "/v2/collectors", None, "Key", 11102, 401, "malformed"),
        ("GET", "/v2/collectors", None, "Bearer x", 11102, 401, "malformed"),
        ("GET", "/v2/collectors", None, "Key " + "f" * 32, 11009, 401, "not a known"),
        ("POST", "/v2/collectors", b"{bad", "key", 11100, 400, "not valid JSON"),
        ("POST", "/v2/collectors", b"\xff\xfe", "key", 11100, 400, "not valid JSON"),
        ("POST", "/v2/collectors", b"[]", "key", 11100, 400, "JSON object"),
        (
            "POST",
            "/v2/collectors",
            b'{"collectors": [{"id": "x", "pre_queue_random_sample": 1e999}]}',
            "key",
            11100,
            400,
            "not valid JSON",
        ),
    ]


@pytest.mark.parametrize(
    ("method", "path", "body", "key_kind", "code", "http_status", "fragment"),
    rest_cases(),
)
def test_rest_malformed_call(
    api: Api,
    method: str,
    path: str,
    body: Any,
    key_kind: str,
    code: int,
    http_status: int,
    fragment: str,
) -> None:
    headers: dict[str, str] = {}
    if key_kind == "key":
        headers["Authorization"] = f"Key {api.key()}"
    elif key_kind == "pat":
        headers["Authorization"] = f"Key {api.key(pat=True)}"
    elif key_kind != "missing":
        headers["Authorization"] = key_kind
    content = body if isinstance(body, bytes) else None
    if body is not None and content is None:
        content = orjson.dumps(body)
    if content is not None:
        headers["Content-Type"] = "application/json"

    with api.http(None) as client:
        response = client.request(method, path, content=content, headers=headers)

    assert "Traceback" not in response.text
    assert response.status_code == http_status, response.text
    status = response.json()["status"]
    assert status["code"] == code, status
    assert fragment in status["description"], status
    assert status["req_id"]


def test_rest_post_inputs_key_of_other_app(api: Api) -> None:
    other_app_key = api.key(app_id="other")
    body = {"collectors": [collector_json("c1", other_app_key)]}
    with api.http(api.key()) as client:
        response = client.post("/v2/collectors", json=body)

    assert response.status_code == 400
    status = response.json()["status"]
    assert status["code"] == 11102
    assert "post_inputs_key_id" in status["description"]
    assert other_app_key not in response.text


def grpc_call(api: Api, name: str, request: Any, key: str | None) -> Any:
    stub = api.grpc_stub()
    headers = metadata(key) if key else ()
    return getattr(stub, name)(request, metadata=headers)


def test_grpc_malformed_calls(api: Api) -> None:
    key = api.key()
    pat = api.key(pat=True)
    other_app_key = api.key(app_id="other")
    cases = [
        ("ListCollectors", service_pb2.ListCollectorsRequest(), None, 11102),
        (
            "ListCollectors",
            service_pb2.ListCollectorsRequest(per_page=4294967295),
            key,
            11102,
        ),
        ("ListCollectors", service_pb2.ListCollectorsRequest(), pat, 11102),
        (
            "GetCollector",
            service_pb2.GetCollectorRequest(collector_id="a/b"),
            key,
            11102,
        ),
        (
            "GetCollector",
            service_pb2.GetCollectorRequest(collector_id=LONG_ID),
            key,
            11102,
        ),
        ("GetCollector", service_pb2.GetCollectorRequest(collector_id=""), key, 11102),
        (
            "PatchCollectors",
            service_pb2.PatchCollectorsRequest(
                collectors=[resources_pb2.Collector(id="ghost")], action="overwrite"
            ),
            key,
            52000,
        ),
        (
            "DeleteCollectors",
            service_pb2.DeleteCollectorsRequest(ids=["c1"], delete_all=True),
            key,
            11102,
        ),
        (
            "PostCollectors",
            service_pb2.PostCollectorsRequest(
                collectors=[
                    collector_pb("c1", key, pre_queue_random_sample=float("nan"))
                ]
            ),
            key,
            11102,
        ),
        (
            "PostCollectors",
            service_pb2.PostCollectorsRequest(
                collectors=[collector_pb("c1", other_app_key)]
            ),
            key,
            11102,
        ),
    ]
    for name, request, call_key, code in cases:
        response = grpc_call(api, name, request, call_key)
        assert response.status.code == code, (name, request, response.status)
        assert response.status.req_id, (name, response.status)
        assert "Traceback" not in response.status.description


def grpc_raw(api: Api, method: str) -> Any:
    channel = grpc.insecure_channel(f"127.0.0.1:{api.running.grpc_port}")
    call = channel.unary_unary(
        method,
        request_serializer=lambda body: body,
        response_deserializer=lambda body: body,
    )
    return channel, call


def test_grpc_json_service_malformed_bodies(api: Api) -> None:
    key = api.key()
    channel, preview = grpc_raw(api, "/collectors.v1.Collectors/PreviewCollector")
    cases = [
        (b"not json", 11100),
        (b"\xff", 11100),
        (b"[]", 11100),
        (b'{"collector_id": "c1", "last_n": 100001}', 11102),
        (b'{"collector_id": "c1", "examples": 51}', 11102),
        (b'{"collector_id": "c1", "start_time": "yesterday"}', 11102),
        (b'{"collector_id": "ghost"}', 52000),
    ]
    with channel:
        for body, code in cases:
            document = orjson.loads(preview(body, metadata=metadata(key)))
            assert document["status"]["code"] == code, (body, document)


def test_grpc_json_service_wrong_id_type(api: Api) -> None:
    key = api.key()
    methods = ("PreviewCollector", "ListCollectorRevisions")
    values = [5, 1.5, True, ["c1"], {"id": "c1"}]
    for method in methods:
        channel, call = grpc_raw(api, f"/collectors.v1.Collectors/{method}")
        with channel:
            for value in values:
                body = orjson.dumps({"collector_id": value})
                status = orjson.loads(call(body, metadata=metadata(key)))["status"]
                description = status["description"]
                case = (method, value, status)

                assert status["code"] == 11102, case
                assert status["http_status_code"] == 400, case
                assert "collector_id: expected a string id" in description, case
                assert "1 to 48 letters, digits, '-' or '_'" in description, case
                assert "missing" not in description, case


def test_grpc_json_service_missing_id(api: Api) -> None:
    channel, preview = grpc_raw(api, "/collectors.v1.Collectors/PreviewCollector")
    with channel:
        for body in (b"{}", b'{"collector_id": null}', b'{"collector_id": ""}'):
            document = orjson.loads(preview(body, metadata=metadata(api.key())))
            status = document["status"]

            assert status["code"] == 11102, (body, status)
            assert "collector_id: missing id" in status["description"], (body, status)


def test_grpc_undecodable_request(api: Api) -> None:
    channel, list_collectors = grpc_raw(api, "/clarifai.api.V2/ListCollectors")
    with channel:
        body = list_collectors(b"\xff\xff\xff\xff", metadata=metadata(api.key()))
    response = service_pb2.MultiCollectorResponse.FromString(body)
    description = response.status.description

    assert response.status.code == 11100, response.status
    assert response.status.req_id, response.status
    assert response.status.http_status_code == 400, response.status
    assert "could not be decoded as clarifai.api.ListCollectorsRequest" in description


def test_grpc_undecodable_request_before_auth(api: Api) -> None:
    channel, get_collector = grpc_raw(api, "/clarifai.api.V2/GetCollector")
    with channel:
        body = get_collector(b"\x0a\x05ab", metadata=())
    response = service_pb2.SingleCollectorResponse.FromString(body)

    assert response.status.code == 11100, response.status
    assert "GetCollectorRequest" in response.status.description, response.status


def test_grpc_unimplemented_v2_rpc(api: Api) -> None:
    stub = api.grpc_stub()
    with pytest.raises(grpc.RpcError) as raised:
        stub.ListApps(service_pb2.ListAppsRequest(), metadata=metadata(api.key()))

    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
