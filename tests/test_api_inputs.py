"""Inputs RPCs: the destination app that collectors post into."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from api_helpers import CHANNELS, Api, assert_error, channel_params, metadata
from clarifai_grpc.grpc.api import resources_pb2, service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2

pytest_plugins = ("api_fixtures",)

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def image_input(input_id: str = "", url: str = "https://example.test/a.jpg") -> Any:
    return resources_pb2.Input(
        id=input_id, data=resources_pb2.Data(image=resources_pb2.Image(url=url))
    )


def post(stub: Any, key: str, *inputs: resources_pb2.Input) -> Any:
    return stub.PostInputs(
        service_pb2.PostInputsRequest(inputs=list(inputs)), metadata=metadata(key)
    )


@pytest.mark.parametrize("channel", CHANNELS)
def test_post_kinds_of_data(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    inputs = [
        image_input("url"),
        resources_pb2.Input(
            id="b64",
            data=resources_pb2.Data(image=resources_pb2.Image(base64=PNG_BYTES)),
        ),
        resources_pb2.Input(
            id="raw", data=resources_pb2.Data(text=resources_pb2.Text(raw="hello"))
        ),
        resources_pb2.Input(
            id="text-url",
            data=resources_pb2.Data(text=resources_pb2.Text(url="https://e.test/t")),
        ),
    ]

    response = post(stub, key, *inputs)

    assert response.status.code == 10000, response.status
    assert [i.id for i in response.inputs] == ["url", "b64", "raw", "text-url"]
    assert all(i.status.code == status_code_pb2.INPUT_SUCCESS for i in response.inputs)
    stored = stub.GetInput(
        service_pb2.GetInputRequest(input_id="b64"), metadata=metadata(key)
    )
    assert stored.input.data.image.base64 == PNG_BYTES
    assert stored.input.created_at.seconds > 0


@pytest.mark.parametrize("channel", channel_params(broken_json=True))
def test_post_keeps_concepts_and_metadata(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    item = image_input("i1")
    item.data.concepts.add(id="cat", value=1.0)
    item.data.concepts.add(id="dog", value=0.0)
    item.data.metadata.update({"camera": "north", "count": 3})

    post(stub, key, item)
    stored = stub.GetInput(
        service_pb2.GetInputRequest(input_id="i1"), metadata=metadata(key)
    ).input

    assert [(c.id, c.value) for c in stored.data.concepts] == [
        ("cat", 1.0),
        ("dog", 0.0),
    ]
    assert dict(stored.data.metadata) == {"camera": "north", "count": 3}


def test_rest_concept_value_defaults_to_one(api: Api) -> None:
    key = api.key()
    body = {
        "inputs": [
            {
                "id": "i1",
                "data": {
                    "image": {"url": "https://example.test/a.jpg"},
                    "concepts": [{"id": "cat"}, {"id": "dog", "value": 0}],
                },
            }
        ]
    }
    with api.http(key) as client:
        client.post("/v2/inputs", json=body)
        stored = client.get("/v2/inputs/i1").json()["input"]

    assert stored["data"]["concepts"] == [
        {"id": "cat", "value": 1},
        {"id": "dog", "value": 0},
    ]


@pytest.mark.parametrize("channel", CHANNELS)
def test_post_generates_ids(api: Api, channel: str) -> None:
    key = api.key()

    response = post(api.stub(channel), key, image_input(), image_input())

    ids = [item.id for item in response.inputs]
    assert all(ids)
    assert len(set(ids)) == 2


@pytest.mark.parametrize("channel", CHANNELS)
def test_post_existing_id_unchanged(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post(stub, key, image_input("i1", url="https://example.test/first.jpg"))

    again = post(stub, key, image_input("i1", url="https://example.test/second.jpg"))

    assert again.status.code == 10000
    assert again.inputs[0].status.code == status_code_pb2.INPUT_SUCCESS
    assert again.inputs[0].data.image.url == "https://example.test/first.jpg"
    listed = stub.ListInputs(service_pb2.ListInputsRequest(), metadata=metadata(key))
    assert [(i.id, i.data.image.url) for i in listed.inputs] == [
        ("i1", "https://example.test/first.jpg")
    ]


@pytest.mark.parametrize("channel", CHANNELS)
def test_post_rejects_invalid(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)

    no_data = post(stub, key, image_input("ok"), resources_pb2.Input(id="empty"))
    bad_id = post(stub, key, image_input("bad id!"))
    none = post(stub, key)
    too_many = post(stub, key, *[image_input(f"i{n}") for n in range(129)])

    assert_error(no_data.status, 11102, "inputs[1].data")
    assert_error(bad_id.status, 11102, "inputs[0].id")
    assert_error(none.status, 11102, "inputs")
    assert_error(too_many.status, 11102, "inputs")
    listed = stub.ListInputs(service_pb2.ListInputsRequest(), metadata=metadata(key))
    assert list(listed.inputs) == []


def test_post_max_batch(api: Api) -> None:
    key = api.key()

    response = post(api.grpc_stub(), key, *[image_input(f"i{n}") for n in range(128)])

    assert response.status.code == 10000
    assert len(response.inputs) == 128


@pytest.mark.parametrize("channel", CHANNELS)
def test_list_order_and_pages(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    for name in ("z", "a", "m"):
        post(stub, key, image_input(name))

    first = stub.ListInputs(
        service_pb2.ListInputsRequest(page=1, per_page=2), metadata=metadata(key)
    )
    second = stub.ListInputs(
        service_pb2.ListInputsRequest(page=2, per_page=2), metadata=metadata(key)
    )

    assert [i.id for i in first.inputs] == ["z", "a"]
    assert [i.id for i in second.inputs] == ["m"]


def test_list_rejects_bad_paging(api: Api) -> None:
    with api.http(api.key()) as client:
        response = client.get("/v2/inputs", params={"per_page": 5000})

    assert response.status_code == 400
    assert "per_page" in response.json()["status"]["description"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_get_unknown(api: Api, channel: str) -> None:
    response = api.stub(channel).GetInput(
        service_pb2.GetInputRequest(input_id="ghost"), metadata=metadata(api.key())
    )

    assert_error(response.status, 30102, "ghost")


@pytest.mark.parametrize("channel", CHANNELS)
def test_delete_inputs(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)
    post(stub, key, image_input("a"), image_input("b"), image_input("c"))

    deleted = stub.DeleteInputs(
        service_pb2.DeleteInputsRequest(ids=["a", "b"]), metadata=metadata(key)
    )
    unknown = stub.DeleteInputs(
        service_pb2.DeleteInputsRequest(ids=["c", "ghost"]), metadata=metadata(key)
    )
    single = stub.DeleteInput(
        service_pb2.DeleteInputRequest(input_id="c"), metadata=metadata(key)
    )
    empty = stub.DeleteInputs(service_pb2.DeleteInputsRequest(), metadata=metadata(key))

    assert deleted.status.code == 10000
    assert_error(unknown.status, 30102, "ghost")
    assert single.status.code == 10000
    assert_error(empty.status, 11102, "ids")
    listed = stub.ListInputs(service_pb2.ListInputsRequest(), metadata=metadata(key))
    assert list(listed.inputs) == []


def test_rest_delete_all(api: Api) -> None:
    key = api.key()
    post(api.grpc_stub(), key, image_input("a"), image_input("b"))
    with api.http(key) as client:
        bad = client.request("DELETE", "/v2/inputs", json={"delete_all": "yes"})
        deleted = client.request("DELETE", "/v2/inputs", json={"delete_all": True})
        listed = client.get("/v2/inputs")

    assert bad.status_code == 400
    assert "delete_all" in bad.json()["status"]["description"]
    assert deleted.status_code == 200
    assert listed.json()["inputs"] == []


def test_rest_base64_round_trip(api: Api) -> None:
    key = api.key()
    encoded = base64.b64encode(PNG_BYTES).decode()
    body = {"inputs": [{"id": "b", "data": {"image": {"base64": encoded}}}]}
    with api.http(key) as client:
        created = client.post("/v2/users/alice/apps/app1/inputs", json=body)
        bad = client.post(
            "/v2/inputs",
            json={"inputs": [{"data": {"image": {"base64": "***not base64***"}}}]},
        )
        stored = client.get("/v2/users/alice/apps/app1/inputs/b")

    assert created.status_code == 200
    assert stored.json()["input"]["data"]["image"]["base64"] == encoded
    assert bad.status_code == 400
    assert bad.json()["status"]["code"] == 11102


@pytest.mark.parametrize(
    ("scopes", "code"), [(("Inputs:Get",), 11007), (("Inputs:Add",), 10000)]
)
def test_post_needs_inputs_add(api: Api, scopes: tuple[str, ...], code: int) -> None:
    key = api.key(scopes=scopes)

    response = post(api.grpc_stub(), key, image_input("a"))

    assert response.status.code == code


def test_worker_style_ids(api: Api) -> None:
    """Ids derived as 32 hex digits of a SHA-256 digest are accepted."""
    key = api.key(scopes=("Inputs:Add",))
    input_id = "0123456789abcdef" * 2
    body: dict[str, Any] = {
        "inputs": [{"id": input_id, "data": {"image": {"url": "https://e.test/x"}}}]
    }
    with api.http(key) as client:
        first = client.post("/v2/users/alice/apps/app1/inputs", json=body)
        again = client.post("/v2/users/alice/apps/app1/inputs", json=body)

    assert first.json()["inputs"][0]["id"] == input_id
    assert again.status_code == 200
    assert again.json()["status"]["code"] == 10000
