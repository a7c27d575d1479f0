"""How far this worker's reading of a topic trails the broker, and the delivery
window that follows from it.

A worker with both stages splits one core between them. Stage two posts what
stage one queued since its last batch, one request per destination app and key.
When stage one reads a backlog, it queues its survivors in a steady stream, and
stage two's short window turns them into many small requests (in the benchmark,
four inputs per request over 250 apps). Those requests then take the CPU that
stage one needs to catch up. While stage one is behind, its survivors are late
anyway, so stage two waits longer for each batch and posts fuller requests.
When stage one has caught up, the short window is back and latency is as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from faust.types import EventT

logger = logging.getLogger(__name__)


class Backlog:
    """The records of `topic` on the broker that this worker's stage one has not
    taken in a batch yet, summed over the partitions assigned to the worker.

    Offsets handed to a stream's buffer are no measure of it: the consumer hands
    over a whole fetch at once, which may be the whole backlog of a partition of
    small events. So the route agent notes the offsets that it takes.
    """

    def __init__(self, app: Any, topic: str) -> None:
        self._app = app
        self._topic = topic
        # The offset of the last event taken, per partition.
        self._last_taken: dict[Any, int] = {}

    def note_taken(self, events: Sequence[EventT]) -> None:
        """Record the offsets of a batch of the topic's events that stage one took."""
        last_taken = self._last_taken
        for event in events:
            message = event.message
            last_taken[message.tp] = message.offset

    def records(self) -> int:
        """Return the backlog, from the high watermarks of the last fetches; 0 for
        a partition that has no batch taken since it was assigned."""
        consumer = self._app.consumer
        try:
            assigned = [tp for tp in consumer.assignment() if tp.topic == self._topic]
        except Exception:  # the consumer has not started, or is rebalancing
            return 0
        total = 0
        for tp in assigned:
            last_taken = self._last_taken.get(tp)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # revoked since assignment()
                continue
            if last_taken is None or highwater is None:
                continue
            total += max(0, highwater - last_taken - 1)
        return total


class DeliveryWindow:
    """The time stage two waits to fill a batch: `within_s`, or `behind_s` while
    stage one's backlog exceeds `behind_records`."""

    def __init__(
        self,
        backlog: Backlog | None,
        within_s: float,
        behind_s: float,
        behind_records: int,
    ) -> None:
        self._backlog = backlog
        self.within_s = within_s
        self.behind_s = max(within_s, behind_s)
        self.behind_records = behind_records
        # Whether the last window returned was the longer one.
        self.behind = False

    def __call__(self) -> float:
        if self._backlog is None or self.behind_s == self.within_s:
            return self.within_s
        behind = self._backlog.records() > self.behind_records
        if behind != self.behind:
            self.behind = behind
            logger.debug(
                "stage one %s; delivery batches wait up to %.3f s",
                "is behind" if behind else "has caught up",
                self.behind_s if behind else self.within_s,
            )
        return self.behind_s if behind else self.within_s
