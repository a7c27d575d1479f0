"""Queue messages on their own: packing route batches into one message per queue
partition, and reading both the packed and the older one-collector form."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from agents.queue_messages import QueueMessage, QueuePacker, unpack_queue_message

# Signed murmur2 hashes from Apache Kafka's UtilsTest.testMurmur2 (the Java
# client). The Java DefaultPartitioner picks (hash & 0x7fffffff) % partitions.
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}
COLLECTOR_KEYS = [f"owner/app-{n}/collector-{n % 3}" for n in range(40)]


def queue_items(key: str, count: int, padding: int = 40) -> list[dict[str, Any]]:
    """Items shaped like the route agent's, with ids unique to the collector."""
    return [
        {
            "id": f"{key}#{n}",
            "event_id": f"e{n}",
            "created_at": 1_780_000_000.0,
            "input": {"id": f"in-{n}", "data": {"text": {"raw": "x" * padding}}},
        }
        for n in range(count)
    ]


def unpacked_by_key(messages: list[QueueMessage]) -> dict[str, list[dict[str, Any]]]:
    """Concatenate each collector's items over the messages, in message order."""
    items_by_key: dict[str, list[dict[str, Any]]] = {}
    for message in messages:
        for key, items in unpack_queue_message(message.value):
            items_by_key.setdefault(key, []).extend(items)
    return items_by_key


def item_counts(message: QueueMessage) -> list[int]:
    return [len(items) for _, items in unpack_queue_message(message.value)]


# --- partitions -------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 3, 8, 12])
def test_partition_matches_java_client_vectors(partitions: int) -> None:
    packer = QueuePacker(partitions, max_bytes=1_000_000)
    for key, signed_hash in JAVA_MURMUR2.items():
        expected = (signed_hash & 0x7FFFFFFF) % partitions
        assert packer.partition(key) == expected, key


@pytest.mark.parametrize("partitions", [1, 3, 8, 12])
def test_partition_matches_aiokafka_default_partitioner(partitions: int) -> None:
    packer = QueuePacker(partitions, max_bytes=1_000_000)
    numbers = list(range(partitions))
    for key in [*COLLECTOR_KEYS, "ünïcode/äpp/cöllector"]:
        expected = DefaultPartitioner()(key.encode(), numbers, numbers)
        assert packer.partition(key) == expected, key
        # A second call returns the cached partition.
        assert packer.partition(key) == expected, key


# --- packing ------------------------------------------------------------------------


@pytest.mark.parametrize("max_bytes", [400, 2_000, 1_000_000])
def test_pack_round_trips_every_collector(max_bytes: int) -> None:
    packer = QueuePacker(4, max_bytes)
    batches = {key: queue_items(key, n % 7) for n, key in enumerate(COLLECTOR_KEYS)}

    messages = packer.pack(batches)

    non_empty = {key: items for key, items in batches.items() if items}
    assert unpacked_by_key(messages) == non_empty
    for message in messages:
        for key, _ in unpack_queue_message(message.value):
            assert message.partition == packer.partition(key), key
    # Keys sharing a partition share messages: fewer messages than collectors
    # when nothing has to be split.
    if max_bytes == 1_000_000:
        partitions_used = {packer.partition(key) for key in non_empty}
        assert len(messages) == len(partitions_used)


def test_pack_keys_single_collector_messages_only() -> None:
    packer = QueuePacker(4, max_bytes=1_000_000)
    by_partition: dict[int, list[str]] = {}
    for key in COLLECTOR_KEYS:
        by_partition.setdefault(packer.partition(key), []).append(key)
    shared = next(keys for keys in by_partition.values() if len(keys) >= 2)

    (alone,) = packer.pack({shared[0]: queue_items(shared[0], 3)})
    assert alone.key == shared[0].encode()
    assert orjson.loads(alone.value) == {
        "batches": [{"collector": shared[0], "items": queue_items(shared[0], 3)}]
    }

    (together,) = packer.pack({key: queue_items(key, 2) for key in shared[:2]})
    assert together.key is None
    assert [key for key, _ in unpack_queue_message(together.value)] == shared[:2]


def test_pack_keys_message_split_from_one_collector() -> None:
    key = COLLECTOR_KEYS[0]
    messages = QueuePacker(4, max_bytes=500).pack({key: queue_items(key, 30)})

    assert len(messages) > 1
    assert {message.key for message in messages} == {key.encode()}


def test_pack_skips_collectors_without_items() -> None:
    packer = QueuePacker(4, max_bytes=1_000_000)

    assert packer.pack({}) == []
    assert packer.pack({COLLECTOR_KEYS[0]: []}) == []


@pytest.mark.parametrize("max_bytes", [300, 400, 1_000, 5_000])
def test_pack_stays_within_max_bytes(max_bytes: int) -> None:
    packer = QueuePacker(2, max_bytes)
    batches = {
        key: queue_items(key, 1 + n % 9, padding=10 + 7 * n)
        for n, key in enumerate(COLLECTOR_KEYS)
    }
    messages = packer.pack(batches)

    assert unpacked_by_key(messages) == batches
    for message in messages:
        if len(message.value) > max_bytes:
            # Only an item that does not fit with its envelope may exceed the
            # limit, and then it travels alone.
            assert item_counts(message) == [1], len(message.value)


def test_pack_fills_messages_before_splitting() -> None:
    key = COLLECTOR_KEYS[0]
    max_bytes = 1_000
    items = queue_items(key, 40)

    messages = QueuePacker(4, max_bytes).pack({key: items})

    assert unpacked_by_key(messages) == {key: items}
    assert len(messages) > 2
    for message, following in pairwise(messages):
        assert len(message.value) <= max_bytes
        # The following message's first item, plus a comma, would not have fitted.
        (first_items,) = [items for _, items in unpack_queue_message(following.value)]
        next_item_bytes = len(orjson.dumps(first_items[0]))
        assert len(message.value) + next_item_bytes + 1 > max_bytes


def test_pack_gives_oversized_item_own_message() -> None:
    key = COLLECTOR_KEYS[0]
    items = queue_items(key, 5)
    items[2]["input"]["data"]["text"]["raw"] = "y" * 2_000

    messages = QueuePacker(4, max_bytes=500).pack({key: items})

    assert unpacked_by_key(messages) == {key: items}
    (oversized,) = [m for m in messages if len(m.value) > 500]
    assert unpack_queue_message(oversized.value) == [(key, [items[2]])]


# --- unpacking ----------------------------------------------------------------------


def test_unpack_reads_one_collector_form() -> None:
    key = COLLECTOR_KEYS[0]
    items = queue_items(key, 3)
    value = orjson.dumps({"collector": key, "items": items})

    assert unpack_queue_message(value) == [(key, items)]


def test_unpack_reads_packed_form_in_order() -> None:
    value = orjson.dumps(
        {
            "batches": [
                {"collector": "u/a/one", "items": [{"id": "1"}]},
                {"collector": "u/a/two", "items": []},
                {"collector": "u/a/one", "items": [{"id": "2"}]},
            ]
        }
    )

    assert unpack_queue_message(value) == [
        ("u/a/one", [{"id": "1"}]),
        ("u/a/two", []),
        ("u/a/one", [{"id": "2"}]),
    ]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, orjson.JSONDecodeError),
        (b"", orjson.JSONDecodeError),
        (b"not json", orjson.JSONDecodeError),
        (b'{"collector": "u/a/c", "items": [', orjson.JSONDecodeError),
        (b"[1, 2]", TypeError),
        (b'["batches"]', TypeError),
        (b'"batches"', TypeError),
        (b"42", TypeError),
        (b"null", TypeError),
        (b"{}", KeyError),
        (b'{"items": []}', KeyError),
        (b'{"collector": "u/a/c"}', KeyError),
        (b'{"collector": 5, "items": []}', TypeError),
        (b'{"collector": null, "items": []}', TypeError),
        (b'{"collector": "u/a/c", "items": {}}', TypeError),
        (b'{"collector": "u/a/c", "items": "abc"}', TypeError),
        (b'{"batches": {}}', TypeError),
        (b'{"batches": ""}', TypeError),
        (b'{"batches": "abc"}', TypeError),
        (b'{"batches": null}', TypeError),
        (b'{"batches": {"collector": "u/a/c", "items": []}}', TypeError),
        (b'{"batches": [["collector"]]}', TypeError),
        (b'{"batches": [{"collector": "u/a/c", "items": 3}]}', TypeError),
        (b'{"collector": "u/a/c", "items": [1]}', TypeError),
        (b'{"collector": "u/a/c", "items": [{"id": "1"}, null]}', TypeError),
        (b'{"batches": [{"collector": "u/a/c", "items": [[]]}]}', TypeError),
        # A broken part after a valid one fails the whole message.
        (b'{"batches": [{"collector": "u/a/c", "items": []}, {}]}', KeyError),
    ],
)
def test_unpack_rejects_malformed_message(
    value: bytes | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        unpack_queue_message(value)
