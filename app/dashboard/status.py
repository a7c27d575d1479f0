"""One collector's configuration and funnel, for `collectors status`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.stats import FUNNEL_STEPS
from app.dashboard.stats import read_funnels
from app.models import CollectorRecord
from app.store import Store


@dataclass(frozen=True, slots=True)
class CollectorStatus:
    key: str
    # None when the collector is not configured (deleted, or never created).
    record: CollectorRecord | None
    funnel: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "configured": self.record is not None,
            "collector": self.record.to_api() if self.record else None,
            "funnel": self.funnel,
        }


async def read_collector_status(
    store: Store, user_id: str, app_id: str, collector_id: str
) -> CollectorStatus | None:
    """Return the collector's record and funnel; None when Redis has neither."""
    key = f"{user_id}/{app_id}/{collector_id}"
    record = await store.get_collector(user_id, app_id, collector_id)
    counts = (await read_funnels(store.redis, [key]))[key]
    if record is None and not counts:
        return None
    funnel = {step: counts.get(step, 0) for step in FUNNEL_STEPS}
    funnel.update((name, value) for name, value in counts.items() if name not in funnel)
    return CollectorStatus(key, record, funnel)


def format_collector_status(status: CollectorStatus) -> str:
    """Render the status as aligned `name  value` lines."""
    record = status.record
    if record is None:
        state = "not configured (deleted?); statistics remain"
    else:
        state = "active" if record.active else "paused"
    lines = [("collector", f"{status.key} ({state})")]
    if record is not None:
        lines.extend(_configuration(record))
    width = max(len(name) for name, _ in lines)
    text = [f"{name.ljust(width)}  {value}" for name, value in lines]

    steps = list(status.funnel.items())
    step_width = max(len("funnel step"), *(len(step) for step, _ in steps))
    numbers = [f"{value:,}" for _, value in steps]
    number_width = max(len("inputs"), *(len(n) for n in numbers))
    text += ["", f"{'funnel step'.ljust(step_width)}  {'inputs'.rjust(number_width)}"]
    text += [
        f"{step.ljust(step_width)}  {number.rjust(number_width)}"
        for (step, _), number in zip(steps, numbers)
    ]
    return "\n".join(text)


def _configuration(record: CollectorRecord) -> list[tuple[str, str]]:
    version = record.model_version_id or "any version"
    caller = (
        f"caller {record.caller_user_id}" if record.caller_user_id else "any caller"
    )
    return [
        ("description", record.description or "-"),
        ("model", f"{record.source_key}, {version}, {caller}"),
        ("random sample", f"{record.pre_queue_random_sample:g}"),
        ("pre-queue", record.pre_queue_workflow_id or "-"),
        ("post-queue", record.post_queue_workflow_id or "-"),
        ("sample key", record.sample_key or "-"),
        ("outputs", "collected" if record.collect_outputs else "not collected"),
        (
            "failed predictions",
            "collected" if record.collect_failed_predictions else "skipped",
        ),
        ("destination", f"app {record.user_id}/{record.app_id}"),
    ]
