"""The whole loop on real Kafka and Redis: events in, exactly the expected inputs at
the destination. Expected sets are computed here from the events and the
collectors' settings, with the documented formulas, not with the service's code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from agents.topics import ensure_topics
from app.models import COLLECTOR_INACTIVE, Workflow
from app.produce import EventPublisher
from app.store import Store, connect
from tests.conftest import KAFKA, free_port
from tests.harness import (
    WorkerProcess,
    event,
    expected_input_id,
    expected_sample,
    group_caught_up,
    output,
    put_collector,
    read_topic,
    serve_destination,
    settings_for,
    wait_for,
    worker_environment,
)

OWNER = "owner"
APP = "dataset"
MODEL = ("owner", "models", "classifier")
OTHER_MODEL = ("owner", "models", "detector")


def thresholder_workflow(workflow_id: str) -> Workflow:
    return Workflow.model_validate(
        {
            "id": workflow_id,
            "nodes": [
                {
                    "id": "uncertain",
                    "model": {
                        "id": "below-0-6",
                        "model_type_id": "max-probability-below",
                        "output_info": {"params": {"threshold": 0.6}},
                    },
                }
            ],
        }
    )


@pytest.fixture
def worker_setup(tmp_path: Path, redis_url: str, unique_name: str):  # type: ignore[no-untyped-def]
    with serve_destination() as destination:
        environment = worker_environment(
            unique_name,
            redis_url,
            destination.url,
            free_port(),
            COLLECTORS_MAX_EVENT_BYTES="65536",
        )
        worker = WorkerProcess(environment, tmp_path / "worker.log")
        asyncio.run(ensure_topics(settings_for(environment)))
        yield environment, destination, worker
        worker.stop()


async def publish(
    environment: dict[str, str], messages: list[tuple[bytes | None, bytes | None]]
) -> None:
    settings = settings_for(environment)
    async with EventPublisher(settings) as publisher:
        await publisher.publish_many_raw(messages)


async def wait_caught_up(environment: dict[str, str], worker: WorkerProcess) -> None:
    group = environment["COLLECTORS_GROUP"]
    topics = [environment["COLLECTORS_INPUT_TOPIC"], f"{group}-queue"]

    async def caught_up() -> bool:
        assert worker.process is not None and worker.process.poll() is None, (
            worker.log_text()[-3000:]
        )
        return await group_caught_up(KAFKA, group, topics)

    await wait_for(caught_up, "the worker to commit every offset")


async def test_pipeline_collects_expected_inputs(worker_setup, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, worker = worker_setup
    store = Store(connect(redis_url))
    await store.create_workflows(OWNER, APP, [thresholder_workflow("uncertain")])
    await store.close()
    sampled = await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="half",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=0.5,
    )
    uncertain = await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="uncertain",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_workflow_id="uncertain",
        collect_outputs=True,
    )
    caller_only = await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="caller-2",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=1.0,
        caller_user_id="caller-2",
    )
    versioned = await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="version-2",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        model_version_id="v2",
        pre_queue_random_sample=1.0,
    )
    await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="paused",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=1.0,
        status_code=COLLECTOR_INACTIVE,
    )
    worker.start()

    messages = []
    expected: set[str] = set()
    for number in range(120):
        caller = "caller-2" if number % 10 == 0 else "caller-1"
        version = "v2" if number % 7 == 0 else "v1"
        outputs = []
        for index in range(1 + number % 4):
            input_id = f"in-{number}-{index}"
            top = (number * 7 + index * 13) % 100 / 100
            outputs.append(
                output(input_id, MODEL, [("cat", top), ("dog", top / 2)], version)
            )
            if expected_sample(sampled.key, input_id, 0.5):
                expected.add(expected_input_id(sampled.key, f"e{number}", input_id))
            if top < 0.6:
                expected.add(expected_input_id(uncertain.key, f"e{number}", input_id))
            if caller == "caller-2":
                expected.add(expected_input_id(caller_only.key, f"e{number}", input_id))
            if version == "v2":
                expected.add(expected_input_id(versioned.key, f"e{number}", input_id))
        outputs.append(output(f"other-{number}", OTHER_MODEL, [("cat", 0.1)]))
        messages.append((f"e{number}".encode(), event(f"e{number}", outputs, caller)))
    await publish(environment, messages)

    await wait_for(
        lambda: worker_alive_and(worker, len(destination.snapshot()) >= len(expected)),
        f"{len(expected)} inputs at the destination",
    )
    await wait_caught_up(environment, worker)
    received = destination.snapshot()
    assert set(received) == expected
    assert max(destination.post_counts.values()) == 1

    one_uncertain = next(
        item
        for item in received.values()
        if item["id"].startswith(tuple(expected)) and "concepts" in item["data"]
    )
    assert {c["id"] for c in one_uncertain["data"]["concepts"]} == {"cat", "dog"}
    assert all(r["authorization"] == "Key dest-key" for r in destination.requests)
    assert all(
        r["path"] == f"/v2/users/{OWNER}/apps/{APP}/inputs"
        for r in destination.requests
    )


async def _async_true(value: bool) -> bool:
    return value


async def worker_alive_and(worker: WorkerProcess, value: bool) -> bool:
    assert worker.process is not None
    assert worker.process.poll() is None, worker.log_text()[-3000:]
    return value


async def test_pipeline_sees_collector_changes_while_running(
    worker_setup, redis_url: str
) -> None:  # type: ignore[no-untyped-def]
    environment, destination, worker = worker_setup
    fields = dict(
        user_id=OWNER,
        app_id=APP,
        id="switch",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=1.0,
    )
    collector = await put_collector(redis_url, **fields)
    worker.start()

    await publish(environment, [(b"a", event("a", [output("first")]))])
    await wait_for(
        lambda: worker_alive_and(worker, len(destination.snapshot()) == 1),
        "the first input",
    )

    await put_collector(redis_url, **{**fields, "status_code": COLLECTOR_INACTIVE})
    await _wait_for_config(environment)
    await publish(environment, [(b"b", event("b", [output("while-paused")]))])
    await wait_caught_up(environment, worker)
    assert set(destination.snapshot()) == {
        expected_input_id(collector.key, "a", "first")
    }

    await put_collector(redis_url, **fields)
    await _wait_for_config(environment)
    await publish(environment, [(b"c", event("c", [output("resumed")]))])
    resumed = expected_input_id(collector.key, "c", "resumed")
    await wait_for(
        lambda: worker_alive_and(worker, resumed in destination.snapshot()),
        "the resumed input",
    )

    store = Store(connect(redis_url))
    await store.delete_collectors(OWNER, APP, ["switch"])
    await store.close()
    await _wait_for_config(environment)
    await publish(environment, [(b"d", event("d", [output("after-delete")]))])
    await wait_caught_up(environment, worker)
    assert len(destination.snapshot()) == 2


async def _wait_for_config(environment: dict[str, str]) -> None:
    """Changes reach the worker within a second; wait a little longer than that."""
    await asyncio.sleep(1.5)


async def test_pipeline_dead_letters_bad_events(worker_setup, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, worker = worker_setup
    collector = await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="all",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=1.0,
    )
    worker.start()
    bad_output = output("broken")
    del bad_output["model"]["id"]
    oversized = event("big", [output("big", metadata={"blob": "x" * 70_000})])
    messages: list[tuple[bytes | None, bytes | None]] = [
        (b"k1", b"this is not json"),
        (b"k2", b'{"id": "no-outputs", "created_at": "2026-12-04T10:00:00Z"}'),
        (b"k3", b""),
        (b"k4", None),
        (b"k5", oversized),
        (b"k6", event("mixed", [output("good-1"), bad_output, output("good-2")])),
        (b"k7", event("unwatched", [output("x", ("someone", "else", "model"))])),
        (b"k8", b"[1, 2, 3]"),
    ]
    await publish(environment, messages)
    await wait_caught_up(environment, worker)

    assert set(destination.snapshot()) == {
        expected_input_id(collector.key, "mixed", "good-1"),
        expected_input_id(collector.key, "mixed", "good-2"),
    }
    dead = await read_topic(KAFKA, environment["COLLECTORS_DLQ_TOPIC"])
    by_key = {message.key: message for message in dead}
    assert set(by_key) == {b"k1", b"k2", b"k3", b"k4", b"k5", b"k6", b"k8"}
    headers = {
        key: dict((n, v.decode()) for n, v in m.headers) for key, m in by_key.items()
    }
    assert headers[b"k1"]["error_code"] == "INVALID_JSON"
    assert headers[b"k2"]["error_code"] == "INVALID_EVENT"
    assert "outputs" in headers[b"k2"]["error"]
    assert "caller" in headers[b"k2"]["error"]
    assert headers[b"k3"]["error_code"] == "EMPTY_EVENT"
    assert headers[b"k4"]["error_code"] == "EMPTY_EVENT"
    assert headers[b"k5"]["error_code"] == "EVENT_TOO_LARGE"
    assert headers[b"k6"]["error_code"] == "INVALID_OUTPUT"
    assert headers[b"k6"]["output_index"] == "1"
    assert "outputs.1.model.id" in headers[b"k6"]["error"]
    assert headers[b"k8"]["error_code"] == "INVALID_EVENT"
    assert by_key[b"k1"].value == b"this is not json"
    assert by_key[b"k5"].value == oversized
    assert headers[b"k1"]["source_topic"] == environment["COLLECTORS_INPUT_TOPIC"]
    assert int(headers[b"k1"]["source_offset"]) >= 0
    assert orjson.loads(by_key[b"k6"].value)["id"] == "mixed"
    assert worker.process is not None and worker.process.poll() is None
