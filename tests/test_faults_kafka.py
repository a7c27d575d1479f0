"""The Kafka broker killed with SIGKILL and restarted while events stream in.

The broker is a private single-node instance of this test, so killing it touches
no other test. Its data directory survives the kill, as a real broker's disk would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import KAFKA
from tests.fault_fixtures import (
    MODEL,
    PrivateServices,
    Scenario,
    assert_alive,
    publish_events,
    scenario_with_private_redis,
)
from tests.harness import (
    event,
    expected_input_id,
    output,
    serve_destination,
    wait_for,
)


@pytest.mark.slow
async def test_broker_sigkilled_and_restarted(tmp_path: Path, unique_name: str) -> None:
    services = PrivateServices(tmp_path / "services", kafka=True, redis=True)
    services.up()
    try:
        with serve_destination() as destination:
            scenario = Scenario(
                unique_name,
                services.bootstrap,
                services.redis_url(),
                destination,
                tmp_path,
            )
            try:
                await _kill_broker_mid_stream(scenario, services)
            finally:
                scenario.stop_all()
    finally:
        services.down()


async def _kill_broker_mid_stream(
    scenario: Scenario, services: PrivateServices
) -> None:
    await scenario.create_topics()
    await scenario.add_collectors()
    worker = scenario.worker("a").start()
    publisher = scenario.publisher(count=1500, rate=100).start()

    await scenario.wait_for_progress(300, [worker], "inputs before the broker dies")
    services.kill_kafka()
    assert not publisher.done, "the stream ended before the broker died"
    await asyncio.sleep(3.0)
    assert_alive(worker)
    services.up("kafka")

    await scenario.finish("d (broker SIGKILL)", publisher, [worker], deadline_s=180)


@pytest.mark.slow
async def test_event_larger_than_fetch_size_is_delivered(
    services: None, tmp_path: Path, unique_name: str
) -> None:
    """An event of 12 MiB, far above the worker's per-partition fetch size, and a
    small event behind it in the same partition both reach the destination."""
    with scenario_with_private_redis(tmp_path, unique_name, KAFKA) as (scenario, _):
        await scenario.create_topics()
        await scenario.add_collectors()
        everything = scenario.collectors[0]
        worker = scenario.worker("a").start()

        big = output("big-input", MODEL, metadata={"blob": "x" * (12 * 1024 * 1024)})
        events = [
            ("big", event("big", [big])),
            ("small", event("small", [output("small-input", MODEL)])),
        ]
        await publish_events(
            scenario.bootstrap,
            scenario.input_topic,
            events,
            key=b"same-partition",
        )
        expected = {
            expected_input_id(everything.key, "big", "big-input"),
            expected_input_id(everything.key, "small", "small-input"),
        }

        async def delivered() -> bool:
            assert_alive(worker)
            return expected <= set(scenario.destination.snapshot())

        await wait_for(delivered, "the 12 MiB event and the one behind it")
        stored = scenario.destination.snapshot()
        big_id = expected_input_id(everything.key, "big", "big-input")
        assert len(stored[big_id]["data"]["metadata"]["blob"]) == 12 * 1024 * 1024
