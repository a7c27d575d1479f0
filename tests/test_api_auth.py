"""Authentication and scopes, on REST and both clarifai_grpc channels."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import CHANNELS, Api, assert_error, collector_pb, metadata
from clarifai_grpc.grpc.api import resources_pb2, service_pb2

pytest_plugins = ("api_fixtures",)


def list_collectors(stub: Any, key: str, **user_app: str) -> Any:
    request = service_pb2.ListCollectorsRequest(
        user_app_id=resources_pb2.UserAppIDSet(**user_app) if user_app else None
    )
    return stub.ListCollectors(request, metadata=metadata(key))


@pytest.mark.parametrize(
    ("headers", "description"),
    [
        ({}, "missing Authorization header"),
        ({"Authorization": ""}, "missing Authorization header"),
        ({"Authorization": "Bearer abc"}, "malformed Authorization header"),
        ({"Authorization": "Key"}, "malformed Authorization header"),
        ({"Authorization": "Key a b"}, "malformed Authorization header"),
    ],
)
def test_rest_bad_header(api: Api, headers: dict[str, str], description: str) -> None:
    with api.http(None) as client:
        response = client.get("/v2/collectors", headers=headers)

    assert response.status_code == 401
    status = response.json()["status"]
    assert status["code"] == 11102
    assert description in status["description"]


def test_grpc_missing_metadata(api: Api) -> None:
    response = api.grpc_stub().ListCollectors(service_pb2.ListCollectorsRequest())

    assert_error(response.status, 11102, "missing Authorization header")


@pytest.mark.parametrize("channel", CHANNELS)
def test_unknown_key(api: Api, channel: str) -> None:
    response = list_collectors(api.stub(channel), "f" * 32)

    assert_error(response.status, 11009)


def test_unknown_key_http_status(api: Api) -> None:
    with api.http("f" * 32) as client:
        response = client.get("/v2/collectors")

    assert response.status_code == 401
    assert response.json()["status"]["code"] == 11009


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize(
    "user_app",
    [{"user_id": "alice", "app_id": "app2"}, {"user_id": "bob", "app_id": "app1"}],
)
def test_app_key_other_app(api: Api, channel: str, user_app: dict[str, str]) -> None:
    key = api.key()

    response = list_collectors(api.stub(channel), key, **user_app)

    assert_error(response.status, 11008)


def test_app_key_other_app_rest(api: Api) -> None:
    with api.http(api.key()) as client:
        response = client.get("/v2/users/alice/apps/app2/collectors")

    assert response.status_code == 401
    assert response.json()["status"]["code"] == 11008


@pytest.mark.parametrize("channel", CHANNELS)
def test_app_key_own_app_forms(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)

    forms = [
        list_collectors(stub, key),
        list_collectors(stub, key, user_id="alice", app_id="app1"),
        list_collectors(stub, key, user_id="me", app_id="app1"),
        list_collectors(stub, key, app_id="app1"),
    ]

    assert [response.status.code for response in forms] == [10000] * 4


@pytest.mark.parametrize("channel", CHANNELS)
def test_pat_needs_app(api: Api, channel: str) -> None:
    pat = api.key(pat=True)
    stub = api.stub(channel)

    short = list_collectors(stub, pat)
    own = list_collectors(stub, pat, user_id="alice", app_id="app1")
    me = list_collectors(stub, pat, app_id="app1")
    other_user = list_collectors(stub, pat, user_id="bob", app_id="app1")

    assert_error(short.status, 11102, "user_app_id")
    assert own.status.code == 10000
    assert me.status.code == 10000
    assert_error(other_user.status, 11008)


def test_pat_rest_paths(api: Api) -> None:
    pat = api.key(pat=True)
    with api.http(pat) as client:
        short = client.get("/v2/collectors")
        own = client.get("/v2/users/alice/apps/app1/collectors")
        other = client.get("/v2/users/bob/apps/app1/collectors")
        bad_app = client.get("/v2/users/alice/apps/bad:app/collectors")

    assert short.status_code == 400
    assert short.json()["status"]["code"] == 11102
    assert own.status_code == 200
    assert other.status_code == 401
    assert other.json()["status"]["code"] == 11008
    assert bad_app.status_code == 400
    assert "user_app_id.app_id" in bad_app.json()["status"]["description"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_missing_scopes_named(api: Api, channel: str) -> None:
    key = api.key(scopes=("Collectors:Get", "Inputs:Add"))

    response = api.stub(channel).PostCollectors(
        service_pb2.PostCollectorsRequest(collectors=[collector_pb("c1", key)]),
        metadata=metadata(key),
    )

    assert_error(response.status, 11007, "Apps:Get", "Collectors:Add", "Predict")
    assert "Inputs:Add" not in response.status.description


def test_missing_scopes_http_status(api: Api) -> None:
    with api.http(api.key(scopes=("Inputs:Get",))) as client:
        response = client.get("/v2/collectors")

    assert response.status_code == 403
    assert response.json()["status"]["code"] == 11007


@pytest.mark.parametrize(
    ("scopes", "rpc", "allowed"),
    [
        (("Apps:Get", "Collectors:Get"), "ListCollectors", True),
        (("Apps:Get", "Collectors:Add"), "ListCollectors", True),
        (("Apps:Get",), "ListCollectors", False),
        (("Apps:Get", "Collectors:Delete"), "DeleteCollectors", True),
        (("Apps:Get", "Collectors:Add"), "DeleteCollectors", False),
        (("Apps:Get", "Collectors:Add"), "PatchCollectors", True),
        (("Apps:Get", "Collectors:Get"), "PatchCollectors", False),
        (("All",), "DeleteCollectors", True),
    ],
)
def test_implied_scopes(
    api: Api, scopes: tuple[str, ...], rpc: str, allowed: bool
) -> None:
    key = api.key(scopes=scopes)
    requests = {
        "ListCollectors": service_pb2.ListCollectorsRequest(),
        "DeleteCollectors": service_pb2.DeleteCollectorsRequest(delete_all=True),
        "PatchCollectors": service_pb2.PatchCollectorsRequest(
            collectors=[resources_pb2.Collector(id="ghost")]
        ),
    }

    response = getattr(api.grpc_stub(), rpc)(requests[rpc], metadata=metadata(key))

    if allowed:
        assert response.status.code != 11007, response.status
    else:
        assert_error(response.status, 11007)


@pytest.mark.parametrize("channel", CHANNELS)
def test_my_scopes(api: Api, channel: str) -> None:
    key = api.key(scopes=("Collectors:Delete", "Apps:Get"))

    response = api.stub(channel).MyScopes(
        service_pb2.MyScopesRequest(), metadata=metadata(key)
    )

    assert response.status.code == 10000
    assert sorted(response.scopes) == [
        "Apps:Get",
        "Collectors:Add",
        "Collectors:Delete",
        "Collectors:Get",
    ]
    assert response.app.id == "app1"
    assert response.app.user_id == "alice"
    assert "/clarifai.api.V2/DeleteCollectors" in response.endpoints
    assert "/clarifai.api.V2/PostCollectors" not in response.endpoints


@pytest.mark.parametrize(
    "path", ["/v2/myscopes", "/v2/my_scopes", "/v2/users/alice/apps/app1/myscopes"]
)
def test_my_scopes_rest(api: Api, path: str) -> None:
    with api.http(api.key()) as client:
        response = client.get(path)

    assert response.status_code == 200
    assert "All" in response.json()["scopes"]


def test_key_never_logged(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    key = api.key()
    caplog.set_level("DEBUG")
    with api.http(key) as client:
        client.get("/v2/users/alice/apps/app2/collectors")
        client.post("/v2/collectors", json={"collectors": [collector_json_bad(key)]})

    assert key not in caplog.text


def collector_json_bad(key: str) -> dict[str, Any]:
    return {"id": "bad id", "collector_source": {}, "description": key[:4]}
