"""COLLECTORS_WORKER_STAGES: which agents a worker runs. Also the heap freeze that
every worker does once its configuration is loaded, and the fetch settings it
applies to Faust's consumer."""

from __future__ import annotations

import asyncio
import gc
import time
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from agents.app import TimeSlice, _tune_fetcher, freeze_heap
from agents.worker import build_worker_app
from app.settings import Settings


def _agent_names(stages: str) -> set[str]:
    settings = Settings(COLLECTORS_WORKER_STAGES=stages, COLLECTORS_GROUP="stages")
    app = build_worker_app(settings)
    return {name.rsplit(".", 1)[-1] for name in app.agents}


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        ("route,deliver", {"stages-route", "stages-deliver", "stages-retry"}),
        ("deliver, route", {"stages-route", "stages-deliver", "stages-retry"}),
        ("route", {"stages-route"}),
        ("deliver", {"stages-deliver", "stages-retry"}),
    ],
)
def test_stages_select_agents(stages: str, expected: set[str]) -> None:
    assert _agent_names(stages) == expected


@pytest.mark.parametrize("stages", ["", "route,post", " , "])
def test_invalid_stages_rejected(stages: str) -> None:
    with pytest.raises(ValidationError, match="expected a comma-separated list"):
        Settings(COLLECTORS_WORKER_STAGES=stages)


def test_freeze_heap_hides_objects_from_gc() -> None:
    long_lived = [[number] for number in range(1000)]
    try:
        frozen = freeze_heap()
        assert frozen >= len(long_lived)
        # A frozen object that another thread releases leaves the permanent
        # generation, so the count can only fall after the freeze.
        assert len(long_lived) <= gc.get_freeze_count() <= frozen
        # Collections no longer see frozen objects.
        assert not any(item is long_lived[0] for item in gc.get_objects())
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def _app_with_fetcher(fetcher: object) -> Any:
    """Return a stand-in for a Faust app whose consumer thread contains `fetcher`."""
    consumer = SimpleNamespace(_fetcher=fetcher)
    return SimpleNamespace(
        consumer=SimpleNamespace(_thread=SimpleNamespace(_consumer=consumer))
    )


def test_tune_fetcher_sets_wait_and_minimum() -> None:
    fetcher = SimpleNamespace(_fetch_max_wait_ms=1500, _fetch_min_bytes=1)
    assert _tune_fetcher(_app_with_fetcher(fetcher), 25, 131072) is True
    assert fetcher._fetch_max_wait_ms == 25
    assert fetcher._fetch_min_bytes == 131072


def test_tune_fetcher_waits_for_consumer() -> None:
    app = SimpleNamespace(consumer=SimpleNamespace(_thread=None))
    assert _tune_fetcher(app, 25, 131072) is None


def test_fetch_min_bytes_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="COLLECTORS_FETCH_MIN_BYTES"):
        Settings(COLLECTORS_FETCH_MIN_BYTES="0")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COLLECTORS_BATCH_WITHIN_S", "0"),
        ("COLLECTORS_BATCH_WITHIN_S", "-0.5"),
        ("COLLECTORS_ROUTE_BATCH_MAX", "0"),
        ("COLLECTORS_DELIVER_BATCH_MAX", "0"),
        ("COLLECTORS_DELIVER_WINDOW_BEHIND_S", "0"),
        ("COLLECTORS_DELIVER_WINDOW_BEHIND_S", "11"),
    ],
)
def test_batch_settings_out_of_range(name: str, value: str) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})


async def busy_loop_lets_other_task_run(slice_s: float) -> tuple[bool, int]:
    """Run 20 steps of 2 ms of CPU each with a TimeSlice, and return whether a
    task created before the loop ran before it ended, and how many pauses
    there were."""
    ran = False

    async def other() -> None:
        nonlocal ran
        ran = True

    task = asyncio.create_task(other())
    time_slice = TimeSlice(slice_s)
    pauses = 0
    ran_during_loop = False
    for _ in range(20):
        started = time.monotonic()
        while time.monotonic() - started < 0.002:
            pass
        pauses += await time_slice.pause_if_due()
        ran_during_loop = ran_during_loop or ran
    await task
    return ran_during_loop, pauses


async def test_time_slice_lets_other_tasks_run() -> None:
    ran_during_loop, pauses = await busy_loop_lets_other_task_run(0.01)
    assert ran_during_loop
    # At least 40 ms of steps, in slices of 10 ms.
    assert pauses >= 1


async def test_time_slice_does_not_pause_before_slice_ends() -> None:
    ran_during_loop, pauses = await busy_loop_lets_other_task_run(1000.0)
    assert not ran_during_loop
    assert pauses == 0
