"""A worker SIGKILLed while its inputs wait in the retry topic.

The destination fails, so the deliver agent moves the inputs to the retry topic.
The worker is killed there, then the destination recovers and a new worker starts.
Every input must arrive, each under one id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.topics import ensure_topics
from app.produce import EventPublisher
from tests.conftest import KAFKA, free_port
from tests.fault_fixtures import FAST_FAILOVER
from tests.harness import (
    Destination,
    WorkerProcess,
    end_offsets,
    event,
    expected_input_id,
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
EVENTS = 40


@pytest.fixture
def pipeline(
    tmp_path: Path, redis_url: str, unique_name: str
) -> Iterator[tuple[dict[str, str], Destination, WorkerProcess]]:
    with serve_destination() as destination:
        environment = worker_environment(
            unique_name,
            redis_url,
            destination.url,
            free_port(),
            COLLECTORS_DESTINATION_INLINE_RETRY_S="0.5",
            COLLECTORS_DESTINATION_GIVE_UP_S="120",
            **FAST_FAILOVER,
        )
        worker = WorkerProcess(environment, tmp_path / "worker.log")
        asyncio.run(ensure_topics(settings_for(environment)))
        yield environment, destination, worker
        worker.kill()


async def test_sigkill_with_inputs_in_retry_topic(pipeline, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, worker = pipeline
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
    destination.fail_with = 503
    worker.start()
    messages = [
        (f"e{n}".encode(), event(f"e{n}", [output(f"in-{n}", MODEL)]))
        for n in range(EVENTS)
    ]
    async with EventPublisher(settings_for(environment)) as publisher:
        await publisher.publish_many_raw(messages)

    retry_topic = f"{environment['COLLECTORS_GROUP']}-retry"

    async def in_retry_topic() -> bool:
        assert worker.process is not None and worker.process.poll() is None
        return sum((await end_offsets(KAFKA, retry_topic)).values()) > 0

    await wait_for(in_retry_topic, "inputs in the retry topic", 60.0)
    worker.kill()
    destination.fail_with = None
    worker.start()

    expected = {
        expected_input_id(collector.key, f"e{n}", f"in-{n}") for n in range(EVENTS)
    }

    async def delivered() -> bool:
        assert worker.process is not None and worker.process.poll() is None, (
            worker.log_text()[-3000:]
        )
        return expected <= set(destination.snapshot())

    await wait_for(delivered, "every input after the restart", 90.0)
    assert set(destination.snapshot()) == expected
