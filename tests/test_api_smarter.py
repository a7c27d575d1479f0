"""Options beyond Clarifai's API: collector `metadata` options, previews over REST,
gRPC and the CLI, and revision history.

Previews read real Kafka: a module-scoped API server reads a fresh input topic
that these tests publish to, and each test replays only the time range of its own
events (or the newest few, which are its own).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from api_helpers import (
    Api,
    collector_json,
    metadata,
    random_sample_workflow_json,
    run_sync,
)
from clarifai_grpc.grpc.api import service_pb2
from click.testing import CliRunner, Result

from app.api.server import RunningApi, serving_in_thread
from app.cli import main
from app.models import Workflow
from app.settings import Settings
from app.store import Store, connect

if TYPE_CHECKING:
    from api_fixtures import FakeModel

pytest_plugins = ("api_fixtures",)

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MODEL = ("alice", "models", "classifier")
SOURCE = "collector_source.api_post_model_outputs_collector_source"
OWN_SERVICE = "/collectors.v1.Collectors"
DEFAULT_OPTIONS = {"sample_key": "", "collect_failed_predictions": False}


# --- fixtures and helpers -------------------------------------------------------------


@pytest.fixture(scope="module")
def input_topic(services: None) -> Iterator[str]:
    """A fresh input topic with 2 partitions, deleted after the module."""
    topic = f"smarter-{uuid.uuid4().hex[:10]}-predictions"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(topic, num_partitions=2, replication_factor=1)]
            )
        finally:
            await admin.close()

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()

    run_sync(create())
    yield topic
    run_sync(delete())


@contextmanager
def serving_with(settings: Settings, **changes: Any) -> Iterator[RunningApi]:
    with serving_in_thread(settings.model_copy(update=changes)) as running:
        yield running


@pytest.fixture(scope="module")
def preview_server(api_settings: Settings, input_topic: str) -> Iterator[RunningApi]:
    """The API reading the module's input topic, on the API tests' Redis."""
    with serving_with(
        api_settings, kafka_bootstrap_servers=KAFKA, input_topic=input_topic
    ) as running:
        yield running


@pytest.fixture
def sapi(api: Api, preview_server: RunningApi) -> Api:
    """The preview server, on the Redis database that `api` has just flushed."""
    return Api(preview_server, preview_server.services.settings)


def event(
    event_id: str,
    input_id: str,
    top: float = 0.9,
    camera: str | None = None,
    status_code: int = 10000,
) -> bytes:
    user_id, app_id, model_id = MODEL
    return orjson.dumps(
        {
            "id": event_id,
            "created_at": "2026-12-04T10:00:00Z",
            "caller": {"user_id": "caller-1"},
            "outputs": [
                {
                    "id": f"out-{input_id}",
                    "status": {"code": status_code},
                    "model": {
                        "id": model_id,
                        "user_id": user_id,
                        "app_id": app_id,
                        "model_version": {"id": "v1"},
                    },
                    "input": {
                        "id": input_id,
                        "data": {
                            "image": {"url": f"https://images.example/{input_id}.jpg"},
                            "metadata": {"camera": camera} if camera else {},
                        },
                    },
                    "data": {"concepts": [{"id": "a", "name": "a", "value": top}]},
                }
            ],
        }
    )


def publish(topic: str, values: list[bytes]) -> tuple[str, str]:
    """Publish `values` to `topic`; return the RFC 3339 times just before the first
    and just after the last."""

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
        await producer.start()
        try:
            for index, value in enumerate(values):
                await producer.send_and_wait(
                    topic, value=value, key=f"{index}".encode()
                )
        finally:
            await producer.stop()

    start = time.time()
    run_sync(send())
    end = time.time() + 0.002
    return rfc3339(start), rfc3339(end)


def closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def sample_kept(collector_key: str, value: str, fraction: float) -> bool:
    """The documented sticky sample rule, written again here on purpose."""
    digest = hashlib.sha256(f"{collector_key}/{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def without_examples(report: dict[str, Any]) -> dict[str, Any]:
    """A preview's counts. Its examples are the first survivors by event time, and
    events of the same millisecond on different partitions come in any order."""
    return {name: value for name, value in report.items() if name != "examples"}


def model_collector(collector_id: str, key: str, **fields: Any) -> dict[str, Any]:
    """A collector of alice's own classifier, for every caller."""
    collector = collector_json(collector_id, key, **fields)
    collector["collector_source"]["api_post_model_outputs_collector_source"].update(
        model_user_id=MODEL[0], model_app_id=MODEL[1], model_id=MODEL[2]
    )
    return collector


def call(
    api: Api, key: str | None, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    with api.http(key) as client:
        response = client.request(method, path, **kwargs)
    return response.status_code, response.json()


def create(api: Api, key: str, *collectors: dict[str, Any]) -> dict[str, Any]:
    status, body = call(
        api, key, "POST", "/v2/collectors", json={"collectors": list(collectors)}
    )
    assert status == 200, body
    return body


def patch(api: Api, key: str, *collectors: dict[str, Any]) -> tuple[int, dict]:
    return call(
        api, key, "PATCH", "/v2/collectors", json={"collectors": list(collectors)}
    )


def get_collector(api: Api, key: str, collector_id: str) -> dict[str, Any]:
    status, body = call(api, key, "GET", f"/v2/collectors/{collector_id}")
    assert status == 200, body
    collector: dict[str, Any] = body["collector"]
    return collector


def stored_record(api: Api, collector_id: str) -> dict[str, Any]:
    client = redis.Redis.from_url(api.settings.redis_url)
    raw = client.get(f"col:collector:alice:app1:{collector_id}")
    client.close()
    assert raw is not None
    record: dict[str, Any] = json.loads(raw)
    return record


def own_rpc(api: Api, method: str, body: Any, key: str | None) -> dict[str, Any]:
    """Call a method of collectors.v1.Collectors with a JSON body over raw gRPC."""
    with grpc.insecure_channel(f"127.0.0.1:{api.running.grpc_port}") as channel:
        stub = channel.unary_unary(
            f"{OWN_SERVICE}/{method}",
            request_serializer=lambda value: (
                value if isinstance(value, bytes) else json.dumps(value).encode()
            ),
            response_deserializer=json.loads,
        )
        auth = metadata(key) if key else ()
        response: dict[str, Any] = stub(body, metadata=auth, timeout=90)
    return response


def run_cli(api: Api, key: str, *arguments: str) -> Result:
    environment: dict[str, str | None] = {
        "COLLECTORS_API_URL": api.base_url,
        "COLLECTORS_API_KEY": key,
        "CLARIFAI_PAT": None,
    }
    return CliRunner().invoke(main, list(arguments), env=environment)


# --- metadata options ---------------------------------------------------------------


def test_options_round_trip(api: Api) -> None:
    key = api.key()
    options = {"sample_key": "camera.id", "collect_failed_predictions": True}

    created = create(api, key, collector_json("c1", key, metadata=options))
    fetched = get_collector(api, key, "c1")
    status, listed = call(api, key, "GET", "/v2/collectors")

    assert created["collectors"][0]["metadata"] == options
    assert fetched["metadata"] == options
    assert status == 200
    assert listed["collectors"][0]["metadata"] == options
    record = stored_record(api, "c1")
    assert record["sample_key"] == "camera.id"
    assert record["collect_failed_predictions"] is True


def test_options_default(api: Api) -> None:
    key = api.key()

    create(api, key, collector_json("c1", key))
    create(api, key, collector_json("c2", key, metadata=None))

    assert get_collector(api, key, "c1")["metadata"] == DEFAULT_OPTIONS
    assert get_collector(api, key, "c2")["metadata"] == DEFAULT_OPTIONS


def test_failed_predictions_round_trip(api: Api) -> None:
    key = api.key()
    collector = collector_json("c1", key, metadata={"collect_failed_predictions": True})

    create(api, key, collector)

    fetched = get_collector(api, key, "c1")
    assert fetched["metadata"]["collect_failed_predictions"] is True
    assert fetched["metadata"]["sample_key"] == ""
    assert stored_record(api, "c1")["collect_failed_predictions"] is True


INVALID_OPTIONS = [
    ({"colour": "red"}, {}, "collectors[1].metadata.colour"),
    ({"sample_key": 5}, {}, "collectors[1].metadata.sample_key"),
    ({"sample_key": "camera..id"}, {}, "collectors[1].metadata.sample_key"),
    ({"sample_key": " camera"}, {}, "collectors[1].metadata.sample_key"),
    ({"sample_key": "x" * 257}, {}, "collectors[1].metadata.sample_key"),
    (
        {"collect_failed_predictions": "yes"},
        {},
        "collectors[1].metadata.collect_failed_predictions",
    ),
    ({"collect_failed_predictions": 1}, {}, "metadata.collect_failed_predictions"),
    ("camera.id", {}, "collectors[1].metadata"),
    (["sample_key"], {}, "collectors[1].metadata"),
    (
        {"sample_key": "camera"},
        {"pre_queue_random_sample": 0, "pre_queue_workflow_id": "wf"},
        "collectors[1].metadata.sample_key",
    ),
]


@pytest.mark.parametrize(("options", "fields", "named"), INVALID_OPTIONS)
def test_options_rejected(
    api: Api, options: Any, fields: dict[str, Any], named: str
) -> None:
    key = api.key()
    create_workflow = {"workflows": [random_sample_workflow_json("wf")]}
    assert call(api, key, "POST", "/v2/workflows", json=create_workflow)[0] == 200
    collectors = [
        collector_json("good", key),
        collector_json("bad", key, metadata=options, **fields),
    ]

    status, body = call(
        api, key, "POST", "/v2/collectors", json={"collectors": collectors}
    )

    assert status == 400
    assert body["status"]["code"] == 11102
    assert named in body["status"]["description"]
    assert call(api, key, "GET", "/v2/collectors")[1]["collectors"] == []


def test_patch_replaces_options(api: Api) -> None:
    key = api.key()
    options = {"sample_key": "camera", "collect_failed_predictions": True}
    create(api, key, collector_json("c1", key, metadata=options))

    kept_status, _ = patch(api, key, {"id": "c1", "description": "renamed"})
    kept_options = get_collector(api, key, "c1")["metadata"]
    replaced_status, _ = patch(
        api, key, {"id": "c1", "metadata": {"collect_failed_predictions": True}}
    )
    replaced = get_collector(api, key, "c1")["metadata"]
    cleared_status, _ = patch(api, key, {"id": "c1", "metadata": {}})
    cleared = get_collector(api, key, "c1")["metadata"]

    assert kept_status == 200
    assert kept_options == options
    assert replaced_status == 200
    assert replaced == {"sample_key": "", "collect_failed_predictions": True}
    assert cleared_status == 200
    assert cleared == DEFAULT_OPTIONS


def test_patch_rejected_options(api: Api) -> None:
    key = api.key()
    create(api, key, collector_json("c1", key, metadata={"sample_key": "camera"}))
    workflow = {"workflows": [random_sample_workflow_json("wf")]}
    assert call(api, key, "POST", "/v2/workflows", json=workflow)[0] == 200

    unknown_status, unknown = patch(
        api, key, {"id": "c1", "metadata": {"sample": "camera"}}
    )
    unsampled_status, unsampled = patch(
        api,
        key,
        {"id": "c1", "pre_queue_random_sample": 0, "pre_queue_workflow_id": "wf"},
    )

    assert unknown_status == 400
    assert "collectors[0].metadata.sample" in unknown["status"]["description"]
    assert unsampled_status == 400
    assert unsampled["status"]["code"] == 11102
    assert "collectors[0].metadata.sample_key" in unsampled["status"]["description"]
    assert get_collector(api, key, "c1")["metadata"]["sample_key"] == "camera"


@pytest.mark.parametrize("channel", ["grpc", "json"])
def test_options_invisible_to_clarifai_clients(api: Api, channel: str) -> None:
    key = api.key()
    options = {"sample_key": "camera", "collect_failed_predictions": True}
    create(api, key, collector_json("c1", key, metadata=options))
    stub = api.stub(channel)

    fetched = stub.GetCollector(
        service_pb2.GetCollectorRequest(collector_id="c1"), metadata=metadata(key)
    )
    listed = stub.ListCollectors(
        service_pb2.ListCollectorsRequest(), metadata=metadata(key)
    )
    patched = stub.PatchCollectors(
        service_pb2.PatchCollectorsRequest(
            collectors=[fetched.collector], action="overwrite"
        ),
        metadata=metadata(key),
    )

    assert fetched.status.code == 10000, fetched.status
    assert fetched.collector.id == "c1"
    assert fetched.collector.pre_queue_random_sample == pytest.approx(0.1)
    assert [c.id for c in listed.collectors] == ["c1"]
    assert patched.status.code == 10000, patched.status
    assert get_collector(api, key, "c1")["metadata"] == options


# --- preview --------------------------------------------------------------------------


def sticky_collector(key: str, **fields: Any) -> dict[str, Any]:
    """Half of the cameras, by the camera in each input's metadata."""
    return model_collector(
        "sticky",
        key,
        pre_queue_random_sample=0.5,
        metadata={"sample_key": "camera"},
        **fields,
    )


def publish_cameras(topic: str, prefix: str, count: int) -> tuple[str, str, int]:
    """Publish `count` events over 6 cameras plus one invalid event; return the
    time range and how many inputs the sticky collector keeps."""
    values = [
        event(f"{prefix}-e{n}", f"{prefix}-in{n}", camera=f"cam{n % 6}")
        for n in range(count)
    ]
    values.append(b"not json")
    start, end = publish(topic, values)
    kept_inputs = sum(
        sample_kept("alice/app1/sticky", f"cam{n % 6}", 0.5) for n in range(count)
    )
    return start, end, kept_inputs


def test_preview_rest(sapi: Api, input_topic: str) -> None:
    key = sapi.key()
    create(sapi, key, sticky_collector(key, status={"code": 52002}))
    start, end, kept_inputs = publish_cameras(input_topic, "rest", 24)
    body = {"start_time": start, "end_time": end, "examples": 3}

    status, response = call(
        sapi, key, "POST", "/v2/collectors/sticky/preview", json=body
    )
    long_status, long_form = call(
        sapi,
        key,
        "POST",
        "/v2/users/alice/apps/app1/collectors/sticky/preview",
        json=body,
    )

    assert status == 200, response
    assert response["status"]["code"] == 10000
    report = response["preview"]
    assert report["events"] == 25
    assert report["invalid"] == 1
    assert report["matched"] == 24
    assert report["dropped_random_sample"] == 24 - kept_inputs
    assert report["would_post"] == kept_inputs
    assert len(report["examples"]) == min(3, kept_inputs)
    for example in report["examples"]:
        assert example["event_id"].startswith("rest-e")
        camera = example["input"]["data"]["metadata"]["camera"]
        assert sample_kept("alice/app1/sticky", camera, 0.5)
    assert long_status == 200
    assert without_examples(long_form["preview"]) == without_examples(report)
    assert call(sapi, key, "GET", "/v2/inputs")[1]["inputs"] == []


def test_preview_last_n(sapi: Api, input_topic: str) -> None:
    key = sapi.key()
    create(sapi, key, sticky_collector(key))
    publish_cameras(input_topic, "last", 8)

    status, response = call(
        sapi, key, "POST", "/v2/collectors/sticky/preview", json={"last_n": 5}
    )
    _, default = call(sapi, key, "POST", "/v2/collectors/sticky/preview", json={})

    assert status == 200, response
    assert response["preview"]["events"] == 5
    assert response["preview"]["invalid"] == 1
    assert default["preview"]["events"] >= 9


def test_preview_empty_range(sapi: Api) -> None:
    key = sapi.key()
    create(sapi, key, sticky_collector(key))
    body = {"start_time": "2999-01-01T00:00:00Z"}

    status, response = call(
        sapi, key, "POST", "/v2/collectors/sticky/preview", json=body
    )

    assert status == 200, response
    assert response["preview"]["events"] == 0
    assert response["preview"]["examples"] == []


def test_preview_grpc(sapi: Api, input_topic: str) -> None:
    key = sapi.key()
    create(sapi, key, sticky_collector(key))
    start, end, kept_inputs = publish_cameras(input_topic, "grpc", 12)
    body = {"start_time": start, "end_time": end, "examples": 2}

    response = own_rpc(
        sapi, "PreviewCollector", {"collector_id": "sticky", **body}, key
    )
    _, rest = call(sapi, key, "POST", "/v2/collectors/sticky/preview", json=body)

    assert response["status"]["code"] == 10000, response
    assert response["preview"]["events"] == 13
    assert response["preview"]["would_post"] == kept_inputs
    assert without_examples(response["preview"]) == without_examples(rest["preview"])
    assert len(response["preview"]["examples"]) == min(2, kept_inputs)


def test_preview_grpc_errors(sapi: Api) -> None:
    key = sapi.key()
    create(sapi, key, sticky_collector(key))

    not_json = own_rpc(sapi, "PreviewCollector", b"{not json", key)
    not_object = own_rpc(sapi, "PreviewCollector", [1, 2], key)
    no_key = own_rpc(sapi, "PreviewCollector", {"collector_id": "sticky"}, None)
    unknown = own_rpc(sapi, "PreviewCollector", {"collector_id": "ghost"}, key)
    invalid = own_rpc(
        sapi, "PreviewCollector", {"collector_id": "sticky", "last_n": 0}, key
    )
    bad_user_app = own_rpc(
        sapi, "PreviewCollector", {"collector_id": "sticky", "user_app_id": "x"}, key
    )

    assert not_json["status"]["code"] == 11100
    assert not_object["status"]["code"] == 11100
    assert no_key["status"]["code"] == 11102
    assert "Authorization" in no_key["status"]["description"]
    assert unknown["status"]["code"] == 52000
    assert invalid["status"]["code"] == 11102
    assert "last_n" in invalid["status"]["description"]
    assert bad_user_app["status"]["code"] == 11102
    assert "user_app_id" in bad_user_app["status"]["description"]


def test_preview_cli(sapi: Api, input_topic: str) -> None:
    key = sapi.key()
    create(sapi, key, sticky_collector(key))
    start, end, kept_inputs = publish_cameras(input_topic, "cli", 10)

    ranged = run_cli(
        sapi,
        key,
        "collectors",
        "preview",
        "sticky",
        "--start",
        start,
        "--end",
        end,
        "--examples",
        "1",
    )
    newest = run_cli(sapi, key, "collectors", "preview", "sticky", "--last", "3")
    both = run_cli(
        sapi, key, "collectors", "preview", "sticky", "--last", "3", "--start", start
    )
    end_only = run_cli(sapi, key, "collectors", "preview", "sticky", "--end", end)
    unknown = run_cli(sapi, key, "collectors", "preview", "ghost")

    assert ranged.exit_code == 0, ranged.output
    report = json.loads(ranged.stdout)["preview"]
    assert report["events"] == 11
    assert report["would_post"] == kept_inputs
    assert len(report["examples"]) == min(1, kept_inputs)
    assert newest.exit_code == 0, newest.output
    assert json.loads(newest.stdout)["preview"]["events"] == 3
    assert both.exit_code == 2
    assert "not both" in both.output
    assert end_only.exit_code == 2
    assert "--end needs --start" in end_only.output
    assert unknown.exit_code == 1
    assert "Collector does not exist" in unknown.stderr


def test_preview_failed_predictions(sapi: Api, input_topic: str) -> None:
    key = sapi.key()
    failed_too = model_collector(
        "all",
        key,
        pre_queue_random_sample=1.0,
        metadata={"collect_failed_predictions": True},
    )
    create(
        sapi, key, failed_too, model_collector("ok", key, pre_queue_random_sample=1.0)
    )
    values = [
        event("fail-e0", "fail-in0"),
        event("fail-e1", "fail-in1", status_code=21100),
        event("fail-e2", "fail-in2", status_code=21100),
    ]
    start, end = publish(input_topic, values)
    body = {"start_time": start, "end_time": end}

    _, everything = call(sapi, key, "POST", "/v2/collectors/all/preview", json=body)
    _, successes = call(sapi, key, "POST", "/v2/collectors/ok/preview", json=body)

    assert everything["preview"]["would_post"] == 3
    assert successes["preview"]["would_post"] == 1


def test_preview_remote_model(
    sapi: Api, input_topic: str, fake_model: FakeModel
) -> None:
    key = sapi.key()
    workflow = {
        "id": "remote",
        "nodes": [
            {
                "id": "remote",
                "model": {
                    "id": "detector",
                    "user_id": "owner",
                    "app_id": "models",
                    "output_info": {"params": {"base_url": fake_model.url}},
                },
            }
        ],
    }
    assert (
        call(sapi, key, "POST", "/v2/workflows", json={"workflows": [workflow]})[0]
        == 200
    )
    collector = model_collector(
        "remote", key, pre_queue_random_sample=1.0, post_queue_workflow_id="remote"
    )
    create(sapi, key, collector)
    start, end = publish(
        input_topic, [event(f"rm-e{n}", f"rm-in{n}") for n in range(2)]
    )
    body = {"start_time": start, "end_time": end}

    _, passing = call(sapi, key, "POST", "/v2/collectors/remote/preview", json=body)
    called = len(fake_model.requests)
    fake_model.fail_with = 400
    _, failing = call(sapi, key, "POST", "/v2/collectors/remote/preview", json=body)

    assert passing["preview"]["would_post"] == 2, passing
    assert called == 2
    assert failing["preview"]["model_failed"] == 2, failing
    assert failing["preview"]["would_post"] == 0


def test_preview_model_url_not_allowed(sapi: Api, input_topic: str) -> None:
    key = sapi.key()
    # Written to Redis directly, because PostWorkflows rejects the URL; as if the
    # allow-list had shrunk since the workflow was created.
    outside = {
        "id": "outside",
        "nodes": [
            {
                "id": "remote",
                "model": {
                    "id": "detector",
                    "output_info": {"params": {"base_url": "http://127.0.0.1:9"}},
                },
            }
        ],
    }

    async def put_workflow() -> None:
        store = Store(connect(sapi.settings.redis_url))
        await store.create_workflows(
            "alice", "app1", [Workflow.model_validate(outside)]
        )
        await store.close()

    run_sync(put_workflow())
    collector = model_collector(
        "outside", key, pre_queue_random_sample=1.0, post_queue_workflow_id="outside"
    )
    create(sapi, key, collector)
    start, end = publish(input_topic, [event("out-e0", "out-in0")])

    _, response = call(
        sapi,
        key,
        "POST",
        "/v2/collectors/outside/preview",
        json={"start_time": start, "end_time": end},
    )

    assert response["preview"]["model_failed"] == 1, response
    assert response["preview"]["would_post"] == 0


def test_preview_broken_collector(sapi: Api) -> None:
    key = sapi.key()
    create_workflow = {"workflows": [random_sample_workflow_json("wf")]}
    assert call(sapi, key, "POST", "/v2/workflows", json=create_workflow)[0] == 200
    create(sapi, key, model_collector("c1", key, pre_queue_workflow_id="wf"))
    deleted = redis.Redis.from_url(sapi.settings.redis_url)
    deleted.delete("col:workflow:alice:app1:wf")
    deleted.close()

    _, response = call(
        sapi, key, "POST", "/v2/collectors/c1/preview", json={"last_n": 1}
    )

    assert response["status"]["code"] == 10000, response
    assert "'wf' does not exist" in response["preview"]["broken_reason"]


INVALID_PREVIEWS = [
    ({"last_n": 0}, "last_n"),
    ({"last_n": 100_001}, "last_n"),
    ({"last_n": "many"}, "last_n"),
    ({"last_n": 5, "start_time": "2026-01-01T00:00:00Z"}, "last_n"),
    ({"end_time": "2026-01-01T00:00:00Z"}, "start_time"),
    ({"start_time": "yesterday"}, "start_time"),
    ({"start_time": "2026-01-01T00:00:00"}, "start_time"),
    ({"start_time": 1767225600}, "start_time"),
    (
        {"start_time": "2026-01-02T00:00:00Z", "end_time": "2026-01-01T00:00:00Z"},
        "end_time",
    ),
    ({"examples": 51}, "examples"),
    ({"examples": -1}, "examples"),
    ({"examples": True}, "examples"),
    ({"surprise": 1}, "surprise"),
    ({"user_app_id": "alice/app1"}, "user_app_id"),
    ({"user_app_id": {"user_id": 7}}, "user_app_id.user_id"),
]


@pytest.mark.parametrize(("body", "named"), INVALID_PREVIEWS)
def test_preview_rejected(api: Api, body: dict[str, Any], named: str) -> None:
    key = api.key()
    create(api, key, collector_json("c1", key))

    status, response = call(api, key, "POST", "/v2/collectors/c1/preview", json=body)

    assert status == 400, response
    assert response["status"]["code"] == 11102
    assert named in response["status"]["description"]


def test_preview_not_json(api: Api) -> None:
    key = api.key()

    status, response = call(
        api, key, "POST", "/v2/collectors/c1/preview", content=b"[1]"
    )

    assert status == 400
    assert response["status"]["code"] == 11100


def test_preview_unknown_collector(api: Api) -> None:
    key = api.key()

    short_status, short = call(api, key, "POST", "/v2/collectors/ghost/preview")
    long_status, long_form = call(
        api, key, "POST", "/v2/users/alice/apps/app1/collectors/ghost/preview", json={}
    )

    assert short_status == 404
    assert short["status"]["code"] == 52000
    assert "ghost" in short["status"]["description"]
    assert long_status == 404
    assert long_form["status"]["code"] == 52000


def test_preview_kafka_unreachable(api: Api, api_settings: Settings) -> None:
    key = api.key()
    create(api, key, collector_json("c1", key))
    closed = f"127.0.0.1:{closed_port()}"

    with serving_with(api_settings, kafka_bootstrap_servers=closed) as running:
        offline = Api(running, running.services.settings)
        status, response = call(
            offline, key, "POST", "/v2/collectors/c1/preview", json={"last_n": 10}
        )
        via_grpc = own_rpc(offline, "PreviewCollector", {"collector_id": "c1"}, key)

    assert status == 503, response
    assert response["status"]["code"] == 10020
    assert "Kafka is unreachable" in response["status"]["description"]
    assert closed in response["status"]["description"]
    assert via_grpc["status"]["code"] == 10020
    assert "Kafka is unreachable" in via_grpc["status"]["description"]


def test_preview_missing_topic(api: Api, api_settings: Settings) -> None:
    key = api.key()
    create(api, key, collector_json("c1", key))
    missing = f"missing-{uuid.uuid4().hex[:10]}"

    with serving_with(
        api_settings, kafka_bootstrap_servers=KAFKA, input_topic=missing
    ) as running:
        status, response = call(
            Api(running, running.services.settings),
            key,
            "POST",
            "/v2/collectors/c1/preview",
            json={},
        )

    assert status == 200, response
    assert response["preview"]["events"] == 0


# --- revisions and pause --------------------------------------------------------------


def revisions(api: Api, key: str, collector_id: str, **params: Any) -> list[dict]:
    status, body = call(
        api, key, "GET", f"/v2/collectors/{collector_id}/revisions", params=params
    )
    assert status == 200, body
    found: list[dict[str, Any]] = body["revisions"]
    return found


def test_pause_and_resume(api: Api) -> None:
    key = api.key()
    create(api, key, collector_json("c1", key))

    paused_status, paused = patch(api, key, {"id": "c1", "status": {"code": 52002}})
    paused_collector = get_collector(api, key, "c1")
    grpc_view = api.grpc_stub().GetCollector(
        service_pb2.GetCollectorRequest(collector_id="c1"), metadata=metadata(key)
    )
    pause_revision = revisions(api, key, "c1")[0]
    resumed_status, _ = patch(api, key, {"id": "c1", "status": {"code": 52001}})
    resumed_collector = get_collector(api, key, "c1")

    assert paused_status == 200, paused
    assert paused["collectors"][0]["status"]["code"] == 52002
    assert paused_collector["status"]["code"] == 52002
    assert grpc_view.collector.status.code == 52002
    assert pause_revision["action"] == "update"
    assert pause_revision["changes"] == {"status.code": {"from": 52001, "to": 52002}}
    assert resumed_status == 200
    assert resumed_collector["status"]["code"] == 52001
    assert revisions(api, key, "c1")[0]["changes"] == {
        "status.code": {"from": 52002, "to": 52001}
    }


def test_revisions_lifecycle(api: Api) -> None:
    key = api.key()
    second_key = api.key()
    create(api, key, collector_json("c1", key, metadata={"sample_key": "camera"}))
    assert patch(api, key, {"id": "c1", "description": "renamed"})[0] == 200
    assert patch(api, key, {"id": "c1", "status": {"code": 52002}})[0] == 200
    assert patch(api, key, {"id": "c1", "status": {"code": 52001}})[0] == 200
    new_key = {
        "id": "c1",
        "collector_source": {
            "api_post_model_outputs_collector_source": {
                "post_inputs_key_id": second_key
            }
        },
    }
    assert patch(api, key, new_key)[0] == 200
    status, _ = call(api, key, "DELETE", "/v2/collectors", json={"ids": ["c1"]})
    assert status == 200

    with api.http(key) as client:
        raw = client.get("/v2/collectors/c1/revisions")
    history = raw.json()["revisions"]
    page_two = revisions(api, key, "c1", page=2, per_page=2)
    _, after_delete = call(api, key, "GET", "/v2/collectors/c1")

    assert raw.status_code == 200
    assert after_delete["status"]["code"] == 52000
    actions = [entry["action"] for entry in history]
    assert actions == ["delete", "update", "update", "update", "update", "create"]
    assert page_two == history[2:4]
    times = [entry["created_at"] for entry in history]
    assert times == sorted(times, reverse=True)
    assert all(entry["actor"].startswith("alice (app_key ") for entry in history)
    created = history[-1]["changes"]
    assert created["id"] == {"from": None, "to": "c1"}
    assert created["metadata.sample_key"] == {"from": None, "to": "camera"}
    assert created[f"{SOURCE}.model_id"]["to"] == "general-image-recognition"
    assert created["status.code"]["to"] == 52001
    assert history[4]["changes"] == {"description": {"from": "", "to": "renamed"}}
    assert history[1]["changes"] == {
        f"{SOURCE}.post_inputs_key_id": {"from": "(hidden)", "to": "(changed)"}
    }
    assert history[0]["changes"]["id"] == {"from": "c1", "to": None}
    assert key not in raw.text
    assert second_key not in raw.text
    assert "encrypted" not in raw.text


def test_revisions_of_recreated_collector(api: Api) -> None:
    key = api.key()
    create(api, key, collector_json("c1", key))
    call(api, key, "DELETE", "/v2/collectors", json={"ids": ["c1"]})
    create(api, key, collector_json("c1", key))

    history = revisions(api, key, "c1")

    assert [entry["action"] for entry in history] == ["create", "delete", "create"]


def test_revisions_errors(api: Api) -> None:
    key = api.key()
    create(api, key, collector_json("c1", key))

    unknown_status, unknown = call(api, key, "GET", "/v2/collectors/ghost/revisions")
    beyond = revisions(api, key, "c1", page=5)
    paging_status, paging = call(
        api, key, "GET", "/v2/collectors/c1/revisions", params={"per_page": 1001}
    )

    assert unknown_status == 404
    assert unknown["status"]["code"] == 52000
    assert beyond == []
    assert paging_status == 400
    assert "per_page" in paging["status"]["description"]


def test_revisions_grpc_and_cli(api: Api) -> None:
    key = api.key()
    create(api, key, collector_json("c1", key))
    assert patch(api, key, {"id": "c1", "description": "renamed"})[0] == 200

    via_grpc = own_rpc(
        api, "ListCollectorRevisions", {"collector_id": "c1", "per_page": 1}, key
    )
    via_cli = run_cli(api, key, "collectors", "history", "c1")
    unknown_field = own_rpc(
        api, "ListCollectorRevisions", {"collector_id": "c1", "limit": 1}, key
    )

    assert via_grpc["status"]["code"] == 10000, via_grpc
    assert [entry["action"] for entry in via_grpc["revisions"]] == ["update"]
    assert via_cli.exit_code == 0, via_cli.output
    cli_history = json.loads(via_cli.stdout)["revisions"]
    assert [entry["action"] for entry in cli_history] == ["update", "create"]
    assert unknown_field["status"]["code"] == 11102
    assert "limit" in unknown_field["status"]["description"]


# --- tenancy and scopes ---------------------------------------------------------------


def test_other_app_cannot_preview_or_read(api: Api) -> None:
    key = api.key("alice", "app1")
    other_app = api.key("alice", "app2")
    bob_pat = api.key("bob", pat=True)
    create(api, key, collector_json("c1", key, description="alice-only"))
    long_path = "/v2/users/alice/apps/app1/collectors/c1"

    attempts = {
        "short preview": call(api, other_app, "POST", "/v2/collectors/c1/preview"),
        "short revisions": call(api, other_app, "GET", "/v2/collectors/c1/revisions"),
        "long preview": call(api, other_app, "POST", f"{long_path}/preview"),
        "long revisions": call(api, other_app, "GET", f"{long_path}/revisions"),
        "pat preview": call(api, bob_pat, "POST", f"{long_path}/preview"),
        "pat revisions": call(api, bob_pat, "GET", f"{long_path}/revisions"),
    }
    grpc_attempts = {
        method: own_rpc(
            api,
            method,
            {
                "collector_id": "c1",
                "user_app_id": {"user_id": "alice", "app_id": "app1"},
            },
            other_app,
        )
        for method in ("PreviewCollector", "ListCollectorRevisions")
    }

    expected = {
        "short preview": (404, 52000),
        "short revisions": (404, 52000),
        "long preview": (401, 11008),
        "long revisions": (401, 11008),
        "pat preview": (401, 11008),
        "pat revisions": (401, 11008),
    }
    for name, (status, body) in attempts.items():
        assert (status, body["status"]["code"]) == expected[name], name
        assert "alice-only" not in json.dumps(body), name
    for method, body in grpc_attempts.items():
        assert body["status"]["code"] == 11008, method
        assert "revisions" not in body, method


def test_scopes_required(api: Api) -> None:
    key = api.key()
    create(api, key, collector_json("c1", key))
    inputs_only = api.key(scopes=("Inputs:Add",))
    readers = api.key(scopes=("Apps:Get", "Collectors:Get"))

    preview_status, preview = call(
        api, inputs_only, "POST", "/v2/collectors/c1/preview"
    )
    history_status, history = call(
        api, inputs_only, "GET", "/v2/collectors/c1/revisions"
    )
    allowed = call(api, readers, "GET", "/v2/collectors/c1/revisions")
    _, scopes = call(api, readers, "GET", "/v2/myscopes")

    assert preview_status == 403
    assert preview["status"]["code"] == 11007
    assert "Collectors:Get" in preview["status"]["description"]
    assert history_status == 403
    assert history["status"]["code"] == 11007
    assert allowed[0] == 200
    assert f"{OWN_SERVICE}/PreviewCollector" in scopes["endpoints"]
    assert f"{OWN_SERVICE}/ListCollectorRevisions" in scopes["endpoints"]


# --- OpenAPI -----------------------------------------------------------------------


def test_openapi_documents_options(api: Api) -> None:
    with api.http(None) as client:
        document = client.get("/openapi.json").json()

    paths = document["paths"]
    schemas = document["components"]["schemas"]
    preview = paths["/v2/collectors/{collector_id}/preview"]["post"]
    long_preview = paths[
        "/v2/users/{user_id}/apps/{app_id}/collectors/{collector_id}/preview"
    ]
    history = paths["/v2/collectors/{collector_id}/revisions"]["get"]
    long_history = paths[
        "/v2/users/{user_id}/apps/{app_id}/collectors/{collector_id}/revisions"
    ]
    body_schema = preview["requestBody"]["content"]["application/json"]["schema"]
    preview_response = preview["responses"]["200"]["content"]["application/json"]
    history_response = history["responses"]["200"]["content"]["application/json"]

    assert body_schema == {"$ref": "#/components/schemas/PreviewCollectorRequest"}
    assert "post" in long_preview
    assert "get" in long_history
    assert {p["name"] for p in history["parameters"]} >= {"page", "per_page"}
    assert preview_response["schema"]["$ref"].endswith("/PreviewCollectorResponse")
    assert history_response["schema"]["$ref"].endswith(
        "/ListCollectorRevisionsResponse"
    )
    assert set(schemas["PreviewCollectorRequest"]["properties"]) >= {
        "last_n",
        "start_time",
        "end_time",
        "examples",
    }
    assert "metadata" in schemas["CollectorSchema"]["properties"]
    assert set(schemas["CollectorOptionsSchema"]["properties"]) == {
        "sample_key",
        "collect_failed_predictions",
    }
    assert "from" in schemas["RevisionChangeSchema"]["properties"]


def test_concurrent_previews(sapi: Api, input_topic: str) -> None:
    """Previews in parallel each read the topic with their own consumer."""
    key = sapi.key()
    create(sapi, key, sticky_collector(key))
    start, end, kept_inputs = publish_cameras(input_topic, "para", 6)
    body = {"start_time": start, "end_time": end}

    async def preview_many() -> list[int]:
        async def one() -> int:
            response = await asyncio.to_thread(
                call, sapi, key, "POST", "/v2/collectors/sticky/preview", json=body
            )
            return int(response[1]["preview"]["would_post"])

        return list(await asyncio.gather(*(one() for _ in range(4))))

    assert run_sync(preview_many()) == [kept_inputs] * 4
