"""Stage two's window while stage one reads a backlog (agents/backlog.py).

The unit tests drive `Backlog` with a stand-in for the two consumer reads it
makes, and `DeliveryWindow` with a backlog of fixed size. The worker
tests use the shared broker. A worker that starts on a backlog widens some
delivery batches and still posts every input once, also when it is killed
during them. A worker that keeps up with a slow stream never widens a batch.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from faust.types import TP

from agents.backlog import SMALL_REQUEST_INPUTS, Backlog, DeliveryWindow
from tests.fault_fixtures import Scenario, StreamPublisher, assert_alive
from tests.harness import WorkerProcess, wait_for

WIDENED = 'collectors_worker_events_total{result="delivery_batches_widened"}'


class FixedBacklog:
    def __init__(self, records: int) -> None:
        self.value = records

    def records(self) -> int:
        return self.value


class StubConsumer:
    """The two reads that Backlog makes of Faust's consumer."""

    def __init__(self, highwaters: dict[TP, int]) -> None:
        self.highwaters = highwaters

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int:
        return self.highwaters[tp]


def taken_event(tp: TP, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


def test_backlog_counts_after_last_taken() -> None:
    first, second, other = TP("in", 0), TP("in", 1), TP("other", 0)
    consumer = StubConsumer({first: 100, second: 50, other: 900})
    backlog = Backlog(SimpleNamespace(consumer=consumer), "in")
    # No batch taken yet: nothing is counted.
    assert backlog.records() == 0
    backlog.note_taken([taken_event(first, 10), taken_event(first, 19)])
    assert backlog.records() == 80
    backlog.note_taken([taken_event(second, 49)])
    assert backlog.records() == 80


def test_backlog_forgets_revoked_partition() -> None:
    tp = TP("in", 0)
    consumer = StubConsumer({tp: 100})
    backlog = Backlog(SimpleNamespace(consumer=consumer), "in")
    backlog.note_taken([taken_event(tp, 9)])
    assert backlog.records() == 90
    consumer.highwaters = {}
    assert backlog.records() == 0
    # Assigned again: no count until stage one takes a batch of it.
    consumer.highwaters = {tp: 500}
    assert backlog.records() == 0


@pytest.mark.parametrize(
    ("records", "expected_s", "behind"),
    [(0, 0.02, False), (500, 0.02, False), (501, 0.25, True)],
)
def test_window_widens_above_threshold(
    records: int, expected_s: float, behind: bool
) -> None:
    window = DeliveryWindow(FixedBacklog(records), 0.02, 0.25, behind_records=500)
    assert window() == expected_s
    assert window.behind is behind


def test_window_shortens_after_catching_up() -> None:
    backlog = FixedBacklog(501)
    window = DeliveryWindow(backlog, 0.02, 0.25, behind_records=500)
    assert window() == 0.25
    backlog.value = 3
    assert window() == 0.02
    assert not window.behind


def test_window_short_when_requests_full() -> None:
    counts = (10, 10 * SMALL_REQUEST_INPUTS)
    window = DeliveryWindow(
        FixedBacklog(10_000), 0.02, 0.25, 500, request_counts=lambda: counts
    )
    assert window() == 0.02
    assert not window.small_requests


def test_window_follows_request_size() -> None:
    counts = (0, 0)
    window = DeliveryWindow(
        FixedBacklog(10_000), 0.02, 0.25, 500, request_counts=lambda: counts
    )
    # No request yet: they are taken to be small.
    assert window() == 0.25
    counts = (10, 10 * SMALL_REQUEST_INPUTS - 1)
    assert window() == 0.25
    counts = (20, 30 * SMALL_REQUEST_INPUTS)
    assert window() == 0.02
    # No request since the last batch: the last size still applies.
    assert window() == 0.02
    counts = (30, 30 * SMALL_REQUEST_INPUTS + 40)
    assert window() == 0.25


def test_window_without_route_stage() -> None:
    window = DeliveryWindow(None, 0.02, 0.25, behind_records=0)
    assert window() == 0.02
    assert not window.behind


def test_window_never_below_usual_window() -> None:
    window = DeliveryWindow(FixedBacklog(10_000), 0.1, 0.05, behind_records=0)
    assert window() == 0.1


async def widened_batches(web_port: int) -> float:
    """Return the worker's count of delivery batches that waited the longer
    window, from its /metrics (0 before the first one)."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(f"http://127.0.0.1:{web_port}/metrics")
    for line in response.text.splitlines():
        if line.startswith(WIDENED + " "):
            return float(line.split()[1])
    return 0.0


async def start_on_backlog(
    scenario: Scenario, events: int
) -> tuple[StreamPublisher, WorkerProcess]:
    """Publish `events` events before any worker runs, then start a worker whose
    threshold is a backlog of 20 events."""
    await scenario.create_topics()
    await scenario.add_collectors()
    publisher = scenario.publisher(count=events, rate=100_000).start()
    await publisher.wait()
    worker = scenario.worker("a", COLLECTORS_ROUTE_BATCH_MAX="20").start()
    return publisher, worker


@pytest.mark.slow
async def test_worker_backlog_widens_batches(scenario: Scenario) -> None:
    publisher, worker = await start_on_backlog(scenario, 3000)
    # finish() checks that every input reached the destination once.
    await scenario.finish("backlog", publisher, [worker], deadline_s=240.0)
    assert await widened_batches(scenario.web_port(worker)) > 0


@pytest.mark.slow
async def test_worker_keeping_up_short_window(scenario: Scenario) -> None:
    await scenario.create_topics()
    await scenario.add_collectors()
    worker = scenario.worker("a").start()
    publisher = scenario.publisher(count=200, rate=40).start()
    await scenario.finish("slow stream", publisher, [worker])
    assert await widened_batches(scenario.web_port(worker)) == 0


@pytest.mark.slow
async def test_worker_killed_during_widened_batches(scenario: Scenario) -> None:
    publisher, worker = await start_on_backlog(scenario, 20_000)
    port = scenario.web_port(worker)

    async def widened() -> bool:
        assert_alive(worker)
        try:
            return await widened_batches(port) > 0
        except httpx.ConnectError:  # the web server has not started yet
            return False

    # SIGKILL while a widened batch may be held, unacked, then a restart on the
    # rest of the backlog: finish() checks that no input is lost or duplicated.
    await wait_for(widened, "a widened delivery batch")
    worker.kill()
    worker.start()
    await scenario.finish("killed on a backlog", publisher, [worker], deadline_s=240.0)
