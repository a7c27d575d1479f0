"""Redis, the configuration store, stopped and started under a running worker.

A worker that has loaded its configuration keeps routing on it while Redis is down,
reports that at /readyz (`config_stale`) and in /metrics (`collectors_config_stale`),
and reloads when Redis returns. A worker that never loaded its configuration
consumes nothing, so no offset is committed for events it could not route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.models import COLLECTOR_INACTIVE
from tests.conftest import KAFKA
from tests.fault_fixtures import (
    MODEL,
    OUTPUTS_PER_EVENT,
    PrivateServices,
    Scenario,
    assert_alive,
    metric_value,
    publish_events,
    readiness,
    scenario_with_private_redis,
    stream_event,
)
from tests.harness import (
    WorkerProcess,
    committed_offsets,
    expected_input_id,
    put_collector,
    wait_for,
)


@pytest.fixture
def scenario_and_redis(
    services: None, tmp_path: Path, unique_name: str
) -> Iterator[tuple[Scenario, PrivateServices]]:
    with scenario_with_private_redis(tmp_path, unique_name, KAFKA) as pair:
        yield pair


async def _wait_for_staleness(
    scenario: Scenario, worker: WorkerProcess, stale: bool
) -> None:
    port = scenario.web_port(worker)

    async def reported() -> bool:
        assert_alive(worker)
        _, body = await readiness(port)
        gauge = await metric_value(port, "collectors_config_stale")
        return body["config_stale"] is stale and gauge == (1.0 if stale else 0.0)

    await wait_for(reported, f"/readyz and /metrics to report stale={stale}")


@pytest.mark.slow
async def test_redis_hang_and_restart_keep_routing(
    scenario_and_redis: tuple[Scenario, PrivateServices],
) -> None:
    scenario, redis_server = scenario_and_redis
    await scenario.create_topics()
    await scenario.add_collectors()
    worker = scenario.worker("a").start()
    publisher = scenario.publisher(count=4000, rate=100).start()
    await scenario.wait_for_progress(200, [worker], "inputs before Redis hangs")
    await _wait_for_staleness(scenario, worker, stale=False)

    # A hung server (SIGSTOP) accepts connections but never replies, so only a
    # read timeout lets the worker notice that its configuration cannot refresh.
    redis_server.pause_redis()
    try:
        await _wait_for_staleness(scenario, worker, stale=True)
        await scenario.wait_for_progress(300, [worker], "inputs while Redis hangs")
    finally:
        redis_server.resume_redis()
    await _wait_for_staleness(scenario, worker, stale=False)

    redis_server.stop_redis()
    await _wait_for_staleness(scenario, worker, stale=True)
    await scenario.wait_for_progress(300, [worker], "inputs while Redis is down")
    assert not publisher.done, "the stream ended before Redis came back"
    redis_server.start_redis()
    await _wait_for_staleness(scenario, worker, stale=False)

    await scenario.finish("e (Redis hang and restart)", publisher, [worker])
    await _check_changes_after_restart(scenario, worker)


async def _check_changes_after_restart(
    scenario: Scenario, worker: WorkerProcess
) -> None:
    """Pause one collector and create another; events published afterwards must
    follow the new configuration."""
    everything = scenario.collectors[0]
    paused = await put_collector(
        scenario.redis_url,
        user_id="owner",
        app_id=everything.app_id,
        id="all",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=1.0,
        status_code=COLLECTOR_INACTIVE,
    )
    late = await put_collector(
        scenario.redis_url,
        user_id="owner",
        app_id="late",
        id="late",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=1.0,
    )
    await asyncio.sleep(1.5)  # changes reach a worker within a second

    event_id, value = stream_event("after-restart", 0)
    await publish_events(scenario.bootstrap, scenario.input_topic, [(event_id, value)])
    input_ids = [f"{event_id}-i{index}" for index in range(OUTPUTS_PER_EVENT)]
    late_ids = {expected_input_id(late.key, event_id, i) for i in input_ids}
    paused_ids = {expected_input_id(paused.key, event_id, i) for i in input_ids}

    async def late_collected() -> bool:
        assert_alive(worker)
        return late_ids <= set(scenario.destination.snapshot())

    await wait_for(late_collected, "the new collector's inputs")
    assert not paused_ids & set(scenario.destination.snapshot())


@pytest.mark.slow
async def test_worker_without_configuration_consumes_nothing(
    scenario_and_redis: tuple[Scenario, PrivateServices],
) -> None:
    scenario, redis_server = scenario_and_redis
    await scenario.create_topics()
    await scenario.add_collectors()
    redis_server.stop_redis()
    worker = scenario.worker("a").start()
    publisher = scenario.publisher(count=300, rate=300).start()
    await publisher.wait()

    await scenario.wait_for_members(1, [worker])
    status, body = await readiness(scenario.web_port(worker))
    assert status == 503, body
    assert body["ready"] is False
    await asyncio.sleep(5.0)  # several commit intervals of the worker
    assert_alive(worker)
    assert await _committed_offsets(scenario) == {}
    assert scenario.destination.snapshot() == {}

    redis_server.start_redis()
    await scenario.finish("i (no configuration at start)", publisher, [worker])


async def _committed_offsets(scenario: Scenario) -> dict[tuple[str, int], int]:
    committed = await committed_offsets(scenario.bootstrap, scenario.name)
    return {
        (tp.topic, tp.partition): metadata.offset
        for tp, metadata in committed.items()
        if metadata.offset >= 0
    }
