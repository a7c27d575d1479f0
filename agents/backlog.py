"""How far this worker's reading of a topic trails the broker, and the delivery
window that follows from it.

A worker with both stages splits one core between them. Stage two posts what
stage one queued since its last batch, one request per destination app and key.
When stage one reads a backlog, it queues its survivors in a steady stream, and
stage two's short window turns them into many small requests (in the benchmark,
four inputs per request over 250 apps). Those requests then take the CPU that
stage one needs to catch up. While stage one is behind, its survivors are late
anyway, so stage two waits longer for each batch and posts fuller requests, as
long as its requests are small.
When stage one has caught up, the short window is back and latency is as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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
            assigned = {tp for tp in consumer.assignment() if tp.topic == self._topic}
        except Exception:  # the consumer has not started, or is rebalancing
            return 0
        # Forgets revoked partitions, so that one assigned again later does not
        # count from the offset taken before.
        for tp in [tp for tp in self._last_taken if tp not in assigned]:
            del self._last_taken[tp]
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


# Requests that carry fewer inputs than this on average, an eighth of the 128
# that a request may carry, are small enough that a longer window pays.
SMALL_REQUEST_INPUTS = 16


class DeliveryWindow:
    """The time stage two waits to fill a batch: `within_s`, or `behind_s` while
    stage one's backlog exceeds `behind_records` and stage two's requests are
    small.

    `request_counts` returns the requests that stage two has sent and the inputs
    that they carried, both counted since the worker started. When requests are
    full already, as when most predictions survive, a longer window would only
    leave stage two idle.
    """

    def __init__(
        self,
        backlog: Backlog | None,
        within_s: float,
        behind_s: float,
        behind_records: int,
        request_counts: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self._backlog = backlog
        self._request_counts = request_counts
        self.within_s = within_s
        self.behind_s = max(within_s, behind_s)
        self.behind_records = behind_records
        # Whether the last window returned was the longer one.
        self.behind = False
        # Whether the requests sent since the previous call averaged fewer than
        # SMALL_REQUEST_INPUTS inputs (assumed until the first requests).
        self.small_requests = True
        self._counted = (0, 0)

    def __call__(self) -> float:
        if self._backlog is None or self.behind_s == self.within_s:
            return self.within_s
        self._update_request_size()
        behind = self.small_requests and self._backlog.records() > self.behind_records
        if behind != self.behind:
            self.behind = behind
            logger.debug(
                "delivery batches wait up to %.3f s (stage one behind and requests "
                "small: %s)",
                self.behind_s if behind else self.within_s,
                behind,
            )
        return self.behind_s if behind else self.within_s

    def _update_request_size(self) -> None:
        if self._request_counts is None:
            return
        requests, inputs = self._request_counts()
        new_requests = requests - self._counted[0]
        new_inputs = inputs - self._counted[1]
        self._counted = (requests, inputs)
        if new_requests > 0:
            self.small_requests = new_inputs < SMALL_REQUEST_INPUTS * new_requests
