"""Collector changes while events stream through a real worker.

Collectors are created, patched, paused, deleted and flipped many times while a
publisher sends events. Events sent more than CONFIG_FOLLOW_S after the last change
must be collected by the new configuration. Events sent earlier may meet either
configuration, but a collector that never changed must get every input.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents.topics import ensure_topics
from app.models import COLLECTOR_INACTIVE, collector_key
from app.store import Store, connect
from tests.conftest import KAFKA, free_port
from tests.harness import (
    Destination,
    WorkerProcess,
    expected_input_id,
    expected_sample,
    group_caught_up,
    output,
    put_collector,
    serve_destination,
    settings_for,
    wait_for,
    worker_environment,
)

OWNER = "owner"
APP = "dataset"
MODEL = ("owner", "models", "classifier")
OUTPUTS_PER_EVENT = 2
# Workers poll the configuration every 0.25 s and must follow a change within
# about a second. The extra half second leaves room for a slow poll.
CONFIG_FOLLOW_S = 1.5
EVENTS_PER_SECOND = 100
CHUNK = 10
EXIT_S = 15.0


@pytest.fixture
def pipeline(
    tmp_path: Path, redis_url: str, unique_name: str
) -> Iterator[tuple[dict[str, str], Destination, WorkerProcess]]:
    with serve_destination() as destination:
        environment = worker_environment(
            unique_name, redis_url, destination.url, free_port()
        )
        worker = WorkerProcess(environment, tmp_path / "worker.log")
        asyncio.run(ensure_topics(settings_for(environment)))
        yield environment, destination, worker
        worker.kill()


def collector_fields(collector_id: str, **extra: object) -> dict[str, object]:
    return {
        "user_id": OWNER,
        "app_id": APP,
        "id": collector_id,
        "model_user_id": MODEL[0],
        "model_app_id": MODEL[1],
        "model_id": MODEL[2],
        "pre_queue_random_sample": 1.0,
        **extra,
    }


def input_ids(event_id: str) -> list[str]:
    return [f"{event_id}-i{n}" for n in range(OUTPUTS_PER_EVENT)]


class TimedPublisher:
    """Publishes numbered events at a steady rate and records when each chunk was
    handed to the producer (before the send, so no worker can read it earlier)."""

    def __init__(self, topic: str, run: str) -> None:
        self.topic = topic
        self.run = run
        self.sent_at: dict[str, float] = {}
        self.stop = asyncio.Event()

    async def publish(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all", linger_ms=5)
        await producer.start()
        try:
            number = 0
            while not self.stop.is_set():
                began = time.monotonic()
                futures = []
                for _ in range(CHUNK):
                    event_id = f"{self.run}-e{number}"
                    number += 1
                    document = {
                        "id": event_id,
                        "created_at": "2026-12-04T10:00:00Z",
                        "caller": {"user_id": "caller-1"},
                        "outputs": [output(i, MODEL) for i in input_ids(event_id)],
                    }
                    self.sent_at[event_id] = began
                    futures.append(
                        await producer.send(
                            self.topic, orjson.dumps(document), key=event_id.encode()
                        )
                    )
                for future in futures:
                    await future
                pause = CHUNK / EVENTS_PER_SECOND - (time.monotonic() - began)
                await asyncio.sleep(max(0.0, pause))
        finally:
            await producer.stop()


async def test_collector_changes_under_load(pipeline, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, worker = pipeline
    for collector_id in ("steady", "paused", "gone", "patched", "flapping"):
        await put_collector(redis_url, **collector_fields(collector_id))
    worker.start()
    publisher = TimedPublisher(environment["COLLECTORS_INPUT_TOPIC"], "load")
    publishing = asyncio.create_task(publisher.publish())

    async def first_inputs() -> bool:
        assert worker.process is not None and worker.process.poll() is None
        return len(destination.snapshot()) >= 50

    await wait_for(first_inputs, "the first inputs", 60.0)
    await put_collector(redis_url, **collector_fields("late"))
    await put_collector(
        redis_url, **collector_fields("paused", status_code=COLLECTOR_INACTIVE)
    )
    store = Store(connect(redis_url))
    try:
        assert await store.delete_collectors(OWNER, APP, ["gone"])
    finally:
        await store.close()
    await put_collector(
        redis_url, **collector_fields("patched", pre_queue_random_sample=0.5)
    )
    for _ in range(10):
        await put_collector(
            redis_url, **collector_fields("flapping", status_code=COLLECTOR_INACTIVE)
        )
        await asyncio.sleep(0.05)
        await put_collector(redis_url, **collector_fields("flapping"))
        await asyncio.sleep(0.05)
    changed_at = time.monotonic()

    await asyncio.sleep(CONFIG_FOLLOW_S + 3.0)
    publisher.stop.set()
    await publishing

    group = environment["COLLECTORS_GROUP"]
    topics = [environment["COLLECTORS_INPUT_TOPIC"], f"{group}-queue"]

    async def caught_up() -> bool:
        assert worker.process is not None and worker.process.poll() is None, (
            worker.log_text()[-3000:]
        )
        return await group_caught_up(KAFKA, group, topics)

    await wait_for(caught_up, "the worker to commit every offset", 60.0)

    stored = set(destination.snapshot())
    keys = {
        name: collector_key(OWNER, APP, name)
        for name in ("steady", "late", "paused", "gone", "patched", "flapping")
    }
    after = [
        e for e, t in publisher.sent_at.items() if t >= changed_at + CONFIG_FOLLOW_S
    ]
    assert len(after) >= 100, "too few events after the changes to judge"

    def ids(name: str, events: list[str]) -> set[str]:
        return {
            expected_input_id(keys[name], event_id, input_id)
            for event_id in events
            for input_id in input_ids(event_id)
        }

    universe = set().union(*(ids(name, list(publisher.sent_at)) for name in keys))
    assert stored <= universe, "inputs with ids that no collector and event explain"
    assert ids("steady", list(publisher.sent_at)) <= stored
    assert ids("late", after) <= stored
    assert ids("flapping", after) <= stored
    assert not ids("paused", after) & stored
    assert not ids("gone", after) & stored
    sampled = {
        expected_input_id(keys["patched"], event_id, input_id)
        for event_id in after
        for input_id in input_ids(event_id)
        if expected_sample(keys["patched"], input_id, 0.5)
    }
    assert ids("patched", after) & stored == sampled
    log = worker.log_text()
    assert "Crashed" not in log
    assert "Traceback" not in log

    assert worker.process is not None
    worker.process.terminate()
    started = time.monotonic()
    # Polls a child process, which has no event to await.
    while worker.process.poll() is None and time.monotonic() - started < EXIT_S:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    assert worker.process.returncode == 0, f"no clean exit {EXIT_S} s after SIGTERM"
