"""Counters of one worker process: the event totals and each collector's funnel.

The agents add to plain integers; `app/metrics.py` turns them into Prometheus
metrics at scrape time and the summary task logs them, so the hot path never calls
into a metrics library.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

# The steps of a collector's funnel, in order.
FUNNEL_STEPS = (
    "matched",
    "dropped_random_sample",
    "dropped_pre_queue",
    "enqueued",
    "dropped_inactive",
    "dropped_post_queue",
    "dropped_duplicate",
    "dropped_quota",
    "posted",
    "already_present",
    "failed",
    "dead_lettered",
)

# Event-level totals.
EVENT_RESULTS = (
    "events_in",
    "outputs_in",
    "outputs_skipped_status",
    "outputs_unwatched",
    "events_dead_lettered",
    "outputs_dead_lettered",
    "queue_messages_out",
    "queue_messages_in",
)


@dataclass
class WorkerStats:
    totals: Counter[str] = field(default_factory=Counter)
    funnel: defaultdict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    # Per pre-queue rule drops: (collector key, node id) -> count.
    rule_drops: Counter[tuple[str, str]] = field(default_factory=Counter)
    destination_latency_s: list[float] = field(default_factory=list)

    def add_funnel(self, collector_key: str, step: str, count: int = 1) -> None:
        self.funnel[collector_key][step] += count

    def funnel_totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for steps in self.funnel.values():
            total.update(steps)
        return total
