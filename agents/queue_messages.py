"""The messages on the queue topic, between the route and the deliver agents.

A queue message carries the queued items of one or more collectors:

    {"batches": [{"collector": "<user>/<app>/<collector>", "items": [...]}, ...]}

The topic is partitioned by collector: every collector's items go to the partition
that Kafka's default partitioner picks for its key, so a collector's items stay in
order and its state is handled in one partition at a time. Several collectors that
hash to the same partition share a message. One message per partition and route
batch, instead of one per collector, is what keeps Faust's cost per message (a few
hundred microseconds) from growing with the number of collectors.

The deliver agent also reads the older one-collector form, `{"collector": ...,
"items": [...]}`, which dead letters of failed deliveries carry and which
`collectors dlq replay` puts back on the topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

# Collector keys whose partition is remembered; the cache starts over when full.
PARTITION_CACHE_MAX = 100_000
# The bytes that `_message` puts around a message's parts: b'{"batches":[' and b']}'.
MESSAGE_ENVELOPE_BYTES = len(b'{"batches":[]}')


@dataclass(frozen=True, slots=True)
class QueueMessage:
    partition: int
    # The collector's key when the message contains one collector, else None.
    key: bytes | None
    value: bytes


class QueuePacker:
    """Packs each route batch's queued items into a few messages per partition."""

    def __init__(self, partitions: int, max_bytes: int) -> None:
        self.partitions = partitions
        self.max_bytes = max_bytes
        self._partition_of: dict[str, int] = {}

    def partition(self, key: str) -> int:
        """Return the partition that Kafka's default partitioner picks for this key."""
        partition = self._partition_of.get(key)
        if partition is None:
            if len(self._partition_of) >= PARTITION_CACHE_MAX:
                self._partition_of.clear()
            partition = (murmur2(key.encode()) & 0x7FFFFFFF) % self.partitions
            self._partition_of[key] = partition
        return partition

    def pack(
        self, batches: Mapping[str, Sequence[dict[str, Any]]]
    ) -> list[QueueMessage]:
        """Return the messages for one batch: per partition, the collectors' parts in
        the order given, split so that a message stays under `max_bytes` (a single
        larger item gets a message of its own)."""
        parts_by_partition: dict[int, list[tuple[str, bytes]]] = {}
        part_max_bytes = self.max_bytes - MESSAGE_ENVELOPE_BYTES
        for key, items in batches.items():
            if not items:
                continue
            parts = parts_by_partition.setdefault(self.partition(key), [])
            parts.extend(
                (key, part) for part in collector_parts(key, items, part_max_bytes)
            )
        messages = []
        for partition, parts in parts_by_partition.items():
            start = 0
            size = MESSAGE_ENVELOPE_BYTES
            for index, (_, part) in enumerate(parts):
                if index > start and size + len(part) > self.max_bytes:
                    messages.append(_message(partition, parts[start:index]))
                    start, size = index, MESSAGE_ENVELOPE_BYTES
                size += len(part) + 1
            messages.append(_message(partition, parts[start:]))
        return messages


def collector_parts(
    key: str, items: Sequence[dict[str, Any]], max_bytes: int
) -> list[bytes]:
    """Encode one collector's items as `{"collector", "items"}` parts of at most
    `max_bytes` each (a single larger item gets a part of its own)."""
    parts: list[bytes] = []
    encoded = [orjson.dumps(item) for item in items]
    prefix = b'{"collector":' + orjson.dumps(key) + b',"items":['
    # The part's bytes besides its items: the prefix and the closing b"]}".
    envelope = len(prefix) + 2
    start = 0
    size = envelope
    for index, blob in enumerate(encoded):
        if index > start and size + len(blob) > max_bytes:
            parts.append(prefix + b",".join(encoded[start:index]) + b"]}")
            start, size = index, envelope
        size += len(blob) + 1
    parts.append(prefix + b",".join(encoded[start:]) + b"]}")
    return parts


def _message(partition: int, parts: Sequence[tuple[str, bytes]]) -> QueueMessage:
    keys = {key for key, _ in parts}
    key = next(iter(keys)).encode() if len(keys) == 1 else None
    value = b'{"batches":[' + b",".join(part for _, part in parts) + b"]}"
    return QueueMessage(partition, key, value)


def unpack_queue_message(value: bytes | None) -> list[tuple[str, list[dict[str, Any]]]]:
    """Return (collector key, items) pairs of a queue message in either form.

    Raises orjson.JSONDecodeError, KeyError or TypeError for a message that is not
    one, before returning anything, so that a broken message is dead-lettered whole.
    """
    document = orjson.loads(value or b"")
    if not isinstance(document, dict):
        raise TypeError(f"expected a JSON object, got {type(document).__name__}")
    parts = document["batches"] if "batches" in document else [document]
    if not isinstance(parts, list):
        raise TypeError(f"expected a list of batches, got {type(parts).__name__}")
    pairs = []
    for part in parts:
        key = part["collector"]
        items = part["items"]
        if not isinstance(key, str) or not isinstance(items, list):
            raise TypeError("a queue part needs a string collector and a list of items")
        if not all(isinstance(item, dict) for item in items):
            raise TypeError(f"the items of collector {key} must be JSON objects")
        pairs.append((key, items))
    return pairs
