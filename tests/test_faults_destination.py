"""The destination app down for a while, and the first event after a quiet period."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fault_fixtures import (
    OUTPUTS_PER_EVENT,
    Scenario,
    TcpGate,
    assert_alive,
    publish_events,
    stream_event,
)
from tests.harness import end_offsets, expected_input_id, wait_for

# Short retry timings, so that an outage of some seconds outlasts the inline
# retries and moves inputs through the retry topic, without reaching the give-up
# time (after which inputs would be dead-lettered).
RETRY_TIMINGS = {
    "COLLECTORS_DESTINATION_INLINE_RETRY_S": "1",
    "COLLECTORS_RETRY_BACKOFF_MAX_S": "3",
    "COLLECTORS_DESTINATION_GIVE_UP_S": "90",
}


@pytest.mark.slow
async def test_destination_down_longer_than_inline_retries(
    scenario: Scenario,
) -> None:
    gate = TcpGate(int(scenario.destination.url.rsplit(":", 1)[1]))
    await gate.open()
    scenario.destination_url = gate.url
    scenario.extra_environment.update(RETRY_TIMINGS)
    await scenario.create_topics()
    await scenario.add_collectors()
    worker = scenario.worker("a").start()
    publisher = scenario.publisher(count=3000, rate=100).start()
    await scenario.wait_for_progress(200, [worker], "inputs before the outage")

    # First the destination returns HTTP 503, then it is gone (connections refused
    # and open ones cut), 14 s in all.
    scenario.destination.fail_with = 503
    await asyncio.sleep(6.0)
    await gate.close()
    await asyncio.sleep(8.0)
    assert_alive(worker)
    assert not publisher.done, "the stream ended during the outage"
    await gate.open()
    scenario.destination.fail_with = None

    await scenario.finish("f (destination down 14 s)", publisher, [worker])
    retried = await end_offsets(scenario.bootstrap, f"{scenario.name}-retry")
    assert sum(retried.values()) > 0, "the outage never reached the retry topic"
    dead = await end_offsets(scenario.bootstrap, f"{scenario.name}-predictions.dlq")
    assert sum(dead.values()) == 0


IDLE_S = 30.0


@pytest.mark.slow
async def test_first_event_after_idle_is_prompt(scenario: Scenario) -> None:
    """30 s of silence outlasts the destination client's keep-alive expiry (httpx,
    5 s) and the Redis client's health-check interval (10 s). Kafka's idle
    connection limits are minutes long: aiokafka closes idle connections after
    540 s and the broker after 600 s, both defaults."""
    await scenario.create_topics()
    await scenario.add_collectors()
    worker = scenario.worker("a").start()
    everything = scenario.collectors[0]

    delays_s = []
    for number, pause_s in enumerate((0.0, IDLE_S)):
        await asyncio.sleep(pause_s)
        event_id, value = stream_event(scenario.name, number)
        expected = {
            expected_input_id(everything.key, event_id, f"{event_id}-i{index}")
            for index in range(OUTPUTS_PER_EVENT)
        }
        published_at = time.monotonic()
        await publish_events(
            scenario.bootstrap, scenario.input_topic, [(event_id, value)]
        )

        async def arrived(expected: set[str] = expected) -> bool:
            assert_alive(worker)
            return expected <= set(scenario.destination.snapshot())

        await wait_for(arrived, f"event {number} at the destination", deadline_s=90)
        delays_s.append(time.monotonic() - published_at)

    print(
        f"fault case h (first event after {IDLE_S:.0f} s idle): "
        f"delay_s={delays_s[1]:.2f} (first event after start: {delays_s[0]:.2f})"
    )
    # A generous bound that only a wait for some timeout would exceed.
    assert delays_s[1] < 30.0
