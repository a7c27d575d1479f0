"""Destination outages: retries, the retry topic, and dead letters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.topics import ensure_topics
from tests.conftest import KAFKA, free_port
from tests.harness import (
    WorkerProcess,
    event,
    expected_input_id,
    group_caught_up,
    output,
    put_collector,
    read_topic,
    serve_destination,
    settings_for,
    wait_for,
    worker_environment,
)
from tests.test_pipeline import publish

MODEL = ("owner", "models", "classifier")


@pytest.fixture
def setup(
    tmp_path: Path, redis_url: str, unique_name: str
) -> Iterator[tuple[Any, Any, Any]]:
    with serve_destination() as destination:
        environment = worker_environment(
            unique_name,
            redis_url,
            destination.url,
            free_port(),
            COLLECTORS_DESTINATION_GIVE_UP_S="25",
            COLLECTORS_DESTINATION_INLINE_RETRY_S="1",
            COLLECTORS_RETRY_BACKOFF_MAX_S="3",
        )
        asyncio.run(ensure_topics(settings_for(environment)))
        worker = WorkerProcess(environment, tmp_path / "worker.log")
        yield environment, destination, worker
        worker.stop()


async def add_collector(redis_url: str, app_id: str) -> str:
    record = await put_collector(
        redis_url,
        user_id="owner",
        app_id=app_id,
        id="all",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=1.0,
    )
    return record.key


async def all_topics_done(environment: dict[str, str], worker: WorkerProcess) -> bool:
    assert worker.process is not None and worker.process.poll() is None, (
        worker.log_text()[-3000:]
    )
    group = environment["COLLECTORS_GROUP"]
    topics = [environment["COLLECTORS_INPUT_TOPIC"], f"{group}-queue", f"{group}-retry"]
    return await group_caught_up(KAFKA, group, topics)


async def test_outage_longer_than_inline_retries_delivers_once(
    setup, redis_url: str
) -> None:  # type: ignore[no-untyped-def]
    environment, destination, worker = setup
    key = await add_collector(redis_url, "dataset")
    destination.fail_with = 503
    worker.start()
    await publish(
        environment,
        [(f"e{n}".encode(), event(f"e{n}", [output(f"in-{n}")])) for n in range(20)],
    )

    await wait_for(lambda: _requests_at_least(destination, 5), "failing POST attempts")
    await asyncio.sleep(
        6
    )  # longer than the inline retries, shorter than the give-up time
    destination.fail_with = None

    expected = {expected_input_id(key, f"e{n}", f"in-{n}") for n in range(20)}
    await wait_for(lambda: _has(destination, expected), "every input after the outage")
    await wait_for(
        lambda: all_topics_done(environment, worker), "every offset committed"
    )
    assert set(destination.snapshot()) == expected
    assert await read_topic(KAFKA, environment["COLLECTORS_DLQ_TOPIC"]) == []


async def test_failing_app_does_not_block_other_collectors(
    setup, redis_url: str
) -> None:  # type: ignore[no-untyped-def]
    environment, destination, worker = setup
    failing_key = await add_collector(redis_url, "failing")
    healthy_key = await add_collector(redis_url, "healthy")
    destination.fail_with = 503
    destination.failing_apps = {"owner/failing"}
    worker.start()

    started = time.monotonic()
    for n in range(5):
        await publish(
            environment, [(f"e{n}".encode(), event(f"e{n}", [output(f"in-{n}")]))]
        )
    healthy = {expected_input_id(healthy_key, f"e{n}", f"in-{n}") for n in range(5)}
    await wait_for(lambda: _has(destination, healthy), "the healthy collector's inputs")
    # The failing app keeps failing for the whole wait, so the healthy inputs
    # arrived while the failing ones were still being retried.
    assert time.monotonic() - started < 25
    failing = {expected_input_id(failing_key, f"e{n}", f"in-{n}") for n in range(5)}
    assert not failing & set(destination.snapshot())

    dead = await _wait_for_dead_letters(environment, count=1)
    headers = {name: value.decode() for name, value in dead[0].headers}
    assert headers["error_code"] == "COLLECTOR_POST_INPUT_FAILED"
    assert headers["collector"] == failing_key
    assert int(headers["attempts"]) > 1


async def test_rejected_post_is_dead_lettered_without_retry(
    setup, redis_url: str
) -> None:  # type: ignore[no-untyped-def]
    environment, destination, worker = setup
    key = await add_collector(redis_url, "dataset")
    destination.fail_with = 400
    worker.start()
    await publish(environment, [(b"e1", event("e1", [output("in-1")]))])

    dead = await _wait_for_dead_letters(environment, count=1)
    headers = {name: value.decode() for name, value in dead[0].headers}
    assert headers["error_code"] == "COLLECTOR_POST_INPUT_FAILED"
    assert headers["attempts"] == "1"
    assert "HTTP 400" in headers["error"]
    assert headers["collector"] == key
    assert len(destination.requests) == 1


async def _requests_at_least(destination: Any, count: int) -> bool:
    return len(destination.requests) >= count


async def _has(destination: Any, expected: set[str]) -> bool:
    return expected <= set(destination.snapshot())


async def _wait_for_dead_letters(environment: dict[str, str], count: int) -> list[Any]:
    found: list[Any] = []

    async def arrived() -> bool:
        found[:] = await read_topic(KAFKA, environment["COLLECTORS_DLQ_TOPIC"])
        return len(found) >= count

    await wait_for(arrived, f"{count} dead letters")
    return found
