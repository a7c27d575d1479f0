"""HTTP conventions of the REST binding: errors, request ids and OpenAPI."""

from __future__ import annotations

import logging

import pytest
import redis
from api_helpers import Api, collector_json

pytest_plugins = ("api_fixtures",)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"collectors": [', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b'{"n": NaN}', "not valid JSON"),
    ],
)
def test_unparseable_body(api: Api, content: bytes, fragment: str) -> None:
    with api.http(api.key()) as client:
        response = client.post(
            "/v2/collectors",
            content=content,
            headers={"Content-Type": "application/json"},
        )

    assert response.status_code == 400
    status = response.json()["status"]
    assert status["code"] == 11100
    assert fragment in status["description"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"collectors": [{"id": 5}]}, "collectors.id"),
        ({"collectors": {"id": "c"}}, "collectors"),
        ({"collectors": [{"id": "c", "colour": "red"}]}, "colour"),
        (
            {"collectors": [{"pre_queue_random_sample": "half"}]},
            "pre_queue_random_sample",
        ),
        ({"collectors": [{"status": {"code": "NOT_A_CODE"}}]}, "code"),
        ({"inputs": [{"data": {"image": {"base64": "%%%"}}}]}, "base64"),
    ],
)
def test_wrong_field_types(api: Api, body: dict[str, object], field: str) -> None:
    path = "/v2/inputs" if "inputs" in body else "/v2/collectors"
    with api.http(api.key()) as client:
        response = client.post(path, json=body)

    assert response.status_code == 400
    status = response.json()["status"]
    assert status["code"] == 11102
    assert field in status["description"]


def test_unknown_path(api: Api) -> None:
    with api.http(api.key()) as client:
        response = client.get("/v2/collectorz")
        root = client.get("/")

    assert response.status_code == 404
    assert response.json()["status"]["code"] == 11101
    assert "/v2/collectorz" in response.json()["status"]["description"]
    assert root.status_code == 404
    assert root.json()["status"]["code"] == 11101


def test_wrong_method(api: Api) -> None:
    with api.http(api.key()) as client:
        response = client.put("/v2/collectors", json={})
        single = client.post("/v2/collectors/c1", json={})

    assert response.status_code == 405
    assert response.json()["status"]["code"] == 11101
    assert response.headers["allow"] == "DELETE, GET, PATCH, POST"
    assert "PUT" in response.json()["status"]["description"]
    assert single.status_code == 405
    assert single.headers["allow"] == "GET"


def test_request_ids_unique(api: Api) -> None:
    with api.http(api.key()) as client:
        responses = [client.get("/v2/collectors") for _ in range(5)]
        responses.append(client.get("/v2/nowhere"))
        responses.append(client.post("/v2/collectors", content=b"{"))

    req_ids = [response.json()["status"]["req_id"] for response in responses]
    assert all(req_ids)
    assert len(set(req_ids)) == len(req_ids)
    assert [r.headers["x-request-id"] for r in responses] == req_ids


@pytest.mark.parametrize(
    ("path", "method", "http_status", "code"),
    [
        ("/v2/collectors/ghost", "GET", 404, 52000),
        ("/v2/workflows/ghost", "GET", 404, 22102),
        ("/v2/inputs/ghost", "GET", 404, 30102),
        ("/v2/collectors", "POST", 400, 11102),
        ("/v2/collectors", "GET", 200, 10000),
    ],
)
def test_http_status_matches_code(
    api: Api, path: str, method: str, http_status: int, code: int
) -> None:
    with api.http(api.key()) as client:
        response = client.request(method, path, json={} if method != "GET" else None)

    assert response.status_code == http_status
    assert response.json()["status"]["code"] == code
    if http_status != 200:
        assert response.json()["status"]["http_status_code"] == http_status


def test_unexpected_error(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    key = api.key()
    with api.http(key) as client:
        client.post("/v2/collectors", json={"collectors": [collector_json("c1", key)]})
    store = redis.Redis.from_url(api.settings.redis_url)
    store.set("col:collector:alice:app1:c1", b"{broken json")
    caplog.set_level(logging.ERROR, logger="app.api.handlers")

    with api.http(key) as client:
        response = client.get("/v2/collectors/c1")

    assert response.status_code == 500
    status = response.json()["status"]
    assert status["code"] == 10020
    assert status["req_id"] in status["description"]
    assert status["req_id"] in caplog.text
    assert "GetCollector failed" in caplog.text
    assert key not in caplog.text


def test_openapi_document(api: Api) -> None:
    with api.http(None) as client:
        response = client.get("/openapi.json")

    assert response.status_code == 200
    document = response.json()
    paths = document["paths"]
    assert "post" in paths["/v2/collectors"]
    assert "delete" in paths["/v2/users/{user_id}/apps/{app_id}/collectors"]
    assert "get" in paths["/v2/collectors/{collector_id}"]
    operation = paths["/v2/collectors"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PostCollectorsRequest"
    }
    schemas = document["components"]["schemas"]
    for name in ("PostCollectorsRequest", "CollectorSchema", "MultiCollectorResponse"):
        assert name in schemas
    listed = paths["/v2/collectors"]["get"]["parameters"]
    assert {p["name"] for p in listed} == {"page", "per_page"}
