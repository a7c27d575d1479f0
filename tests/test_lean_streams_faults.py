"""The agents' batches from `take_batches` under faults that land while a batch is
in flight: repeated rebalances, SIGTERM and SIGKILL under load, the retry topic
during a rebalance, and malformed messages on every topic the agents read.

Each test checks the destination as the other fault tests do: every expected
input present, none held twice under different ids, every offset committed.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.fault_fixtures import Scenario, assert_alive, publish_events
from tests.harness import WorkerProcess, end_offsets, read_topic, wait_for

# Short retry timings, so that a failing destination moves inputs through the
# retry topic within seconds, and never reaches the give-up time.
RETRY_TIMINGS = {
    "COLLECTORS_DESTINATION_INLINE_RETRY_S": "1",
    "COLLECTORS_RETRY_BACKOFF_MAX_S": "3",
    "COLLECTORS_DESTINATION_GIVE_UP_S": "120",
}


def assert_clean_exit(worker: WorkerProcess) -> None:
    assert worker.process is not None
    assert worker.process.returncode == 0, worker.log_text()[-3000:]


@pytest.mark.slow
async def test_member_joins_and_leaves_repeatedly(scenario: Scenario) -> None:
    await scenario.create_topics()
    await scenario.add_collectors()
    first = scenario.worker("first").start()
    second = scenario.worker("second")
    # 60 s of events, so that the stream outlasts the cycles below (each SIGKILL
    # costs a pause of about 10 s while the group waits for the member's session).
    publisher = scenario.publisher(count=6000, rate=100).start()
    await scenario.wait_for_progress(100, [first], "inputs before the first join")

    # Each cycle moves partitions twice. The second member leaves with SIGTERM and
    # SIGKILL in turn, soon after its join, while both members have batches open.
    for cycle in range(4):
        second.start()
        await scenario.wait_for_members(2, [first, second])
        await asyncio.sleep(random.uniform(0.5, 2.0))
        if cycle % 2 == 0:
            second.stop()
            assert_clean_exit(second)
        else:
            second.kill()
        await scenario.wait_for_members(1, [first])

    assert_alive(first)
    await scenario.finish("joins and leaves", publisher, [first], deadline_s=180.0)


@pytest.mark.slow
async def test_sigterm_and_sigkill_under_heavy_load(scenario: Scenario) -> None:
    await scenario.create_topics()
    await scenario.add_collectors()
    worker = scenario.worker("a").start()
    publisher = scenario.publisher(count=8000, rate=400).start()

    # At 400 events a second, a signal is likely to find a batch in flight.
    for signal_name in ("SIGTERM", "SIGKILL", "SIGTERM"):
        await scenario.wait_for_progress(300, [worker], f"inputs before {signal_name}")
        await asyncio.sleep(random.uniform(0.0, 0.3))
        if signal_name == "SIGTERM":
            worker.stop()
            assert_clean_exit(worker)
        else:
            worker.kill()
        worker.start()

    await scenario.finish("signals under load", publisher, [worker], deadline_s=240.0)


@pytest.mark.slow
async def test_retry_topic_through_rebalances(scenario: Scenario) -> None:
    scenario.extra_environment.update(RETRY_TIMINGS)
    await scenario.create_topics()
    await scenario.add_collectors()
    first = scenario.worker("first").start()
    second = scenario.worker("second").start()
    await scenario.wait_for_members(2, [first, second])
    # 50 s of events: the two rebalances below take up to about 30 s on a loaded
    # machine, and must land while events still arrive.
    publisher = scenario.publisher(count=5000, rate=100).start()
    await scenario.wait_for_progress(100, [first, second], "inputs before the outage")

    # Only the sampled collector's app fails, so its inputs cycle through the retry
    # topic while the group rebalances twice, when a member is killed and when it
    # starts again.
    scenario.destination.failing_apps = {"owner/sampled"}
    scenario.destination.fail_with = 503

    async def retries_published() -> bool:
        assert_alive(first, second)
        retried = await end_offsets(scenario.bootstrap, f"{scenario.name}-retry")
        return sum(retried.values()) >= 5

    await wait_for(retries_published, "failed deliveries in the retry topic")
    second.kill()
    await scenario.wait_for_members(1, [first])
    second.start()
    await scenario.wait_for_members(2, [first, second])
    assert not publisher.done, "the stream ended during the outage"

    scenario.destination.fail_with = None
    await scenario.finish("retry topic, rebalances", publisher, [first, second])
    dead = await end_offsets(scenario.bootstrap, f"{scenario.name}-predictions.dlq")
    assert sum(dead.values()) == 0


@pytest.mark.slow
async def test_malformed_messages_on_every_topic(scenario: Scenario) -> None:
    await scenario.create_topics()
    await scenario.add_collectors()
    worker = scenario.worker("a").start()
    publisher = scenario.publisher(count=2000, rate=100).start()
    await scenario.wait_for_progress(100, [worker], "inputs before malformed ones")

    # Three rounds of malformed messages on the input, queue and retry topics,
    # interleaved with the stream, and a SIGKILL after the second round.
    malformed_per_topic = 5
    for round_number in range(3):
        for topic in (
            scenario.input_topic,
            f"{scenario.name}-queue",
            f"{scenario.name}-retry",
        ):
            await publish_events(
                scenario.bootstrap,
                topic,
                [
                    (f"bad-{round_number}-{number}", b"\xffnot json{")
                    for number in range(malformed_per_topic)
                ],
            )
        await scenario.wait_for_progress(100, [worker], "inputs after malformed ones")
        if round_number == 1:
            worker.kill()
            worker.start()

    await scenario.finish("malformed messages", publisher, [worker])
    dead = await read_topic(scenario.bootstrap, f"{scenario.name}-predictions.dlq")
    # A SIGKILL before a commit may dead-letter a message twice, so the topic may
    # contain more dead letters than malformed messages were published.
    assert len(dead) >= 3 * 3 * malformed_per_topic
