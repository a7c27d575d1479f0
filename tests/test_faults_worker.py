"""Worker processes killed, restarted and added while events stream in.

Each test publishes a continuous stream of events, disturbs the consumer group,
and then checks the destination. Every expected input must be present (missing 0),
and no input may be held twice under different ids (duplicates at the destination
0). A repeated POST of the same id is allowed and counted.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.fault_fixtures import Scenario, assert_alive


@pytest.mark.slow
async def test_worker_sigkilled_three_times(scenario: Scenario) -> None:
    await scenario.create_topics()
    await scenario.add_collectors()
    worker = scenario.worker("a").start()
    # 40 s of events, so that the stream outlasts the three kills and the pauses of
    # about 10 s after each while the group waits for the killed member's session.
    publisher = scenario.publisher(count=3000, rate=75).start()

    # Each kill lands soon after the restarted worker delivers again, often before
    # its first commit, so many inputs are posted more than once (allowed).
    for _ in range(3):
        await scenario.wait_for_progress(100, [worker], "inputs before the kill")
        await asyncio.sleep(random.uniform(0.0, 0.5))
        worker.kill()
        worker.start()

    await scenario.finish("a (3 SIGKILLs)", publisher, [worker])


@pytest.mark.slow
async def test_group_member_killed_other_takes_over(scenario: Scenario) -> None:
    await scenario.create_topics()
    await scenario.add_collectors()
    first = scenario.worker("first").start()
    second = scenario.worker("second").start()
    await scenario.wait_for_members(2, [first, second])
    publisher = scenario.publisher(count=1500, rate=100).start()

    await scenario.wait_for_progress(200, [first, second], "inputs before the kill")
    first.kill()

    members = await scenario.wait_for_members(1, [second])
    assert len(members) == 1
    await scenario.finish("b (group member killed)", publisher, [second])


@pytest.mark.slow
async def test_rolling_restart_with_sigterm(scenario: Scenario) -> None:
    await scenario.create_topics()
    await scenario.add_collectors()
    workers = [scenario.worker("first").start(), scenario.worker("second").start()]
    await scenario.wait_for_members(2, workers)
    publisher = scenario.publisher(count=2500, rate=100).start()

    for worker in workers:
        await scenario.wait_for_progress(100, workers, "inputs before the restart")
        worker.stop()
        assert worker.process is not None
        assert worker.process.returncode == 0, worker.log_text()[-3000:]
        worker.start()
        await scenario.wait_for_members(2, workers)

    await scenario.finish("c (rolling restart)", publisher, workers)


@pytest.mark.slow
async def test_second_worker_joins_mid_stream(scenario: Scenario) -> None:
    await scenario.create_topics()
    await scenario.add_collectors()
    first = scenario.worker("first").start()
    publisher = scenario.publisher(count=1500, rate=100).start()

    await scenario.wait_for_progress(300, [first], "inputs before the join")
    second = scenario.worker("second").start()
    members = await scenario.wait_for_members(2, [first, second])
    assert all(members.values())
    assert_alive(first, second)

    await scenario.finish("g (second worker joins)", publisher, [first, second])
