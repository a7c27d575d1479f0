"""Consumer-group lag on real Kafka: empty partitions, fresh groups, committed
offsets, offsets below the log start, members and their assignments."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from app.lag import (
    KafkaUnavailable,
    LagReader,
    format_lag_table,
    partition_lag,
    read_lag_once,
)
from tests.conftest import KAFKA, free_port
from tests.harness import create_filled_topic

# Records per partition of the test topic; partition 1 stays empty.
RECORDS = {0: 6, 1: 0, 2: 3}


@pytest.mark.parametrize(
    ("end", "beginning", "committed", "expected"),
    [
        (0, 0, None, 0),  # a partition that never had a record
        (10, 0, None, 10),  # nothing committed: everything from the log start
        (10, 4, None, 6),  # nothing committed, log start moved
        (10, 0, 10, 0),  # caught up
        (10, 0, 7, 3),
        (10, 8, 3, 2),  # committed offset below the log start
        (10, 10, 3, 0),  # every record deleted
        (10, 0, -1, 10),  # OffsetFetch returns -1 for "no committed offset"
        (5, 0, 9, 0),  # committed beyond the end (a recreated topic)
    ],
)
def test_partition_lag_cases(
    end: int, beginning: int, committed: int | None, expected: int
) -> None:
    assert partition_lag(end, beginning, committed) == expected


@pytest.fixture
async def topic(services: None, unique_name: str) -> AsyncIterator[str]:
    """A topic with RECORDS[p] records in partition p."""
    await create_filled_topic(KAFKA, unique_name, RECORDS)
    yield unique_name
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.delete_topics([unique_name])
    finally:
        await admin.close()


async def commit(group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit offsets for a group without joining it (a manual assignment)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def rows(reading: object) -> dict[int, tuple[int, int, int | None, int]]:
    return {
        p.partition: (p.beginning_offset, p.end_offset, p.committed, p.lag)
        for p in reading.partitions  # type: ignore[attr-defined]
    }


async def test_lag_fresh_group_counts_from_log_start(topic: str) -> None:
    reading = await read_lag_once(KAFKA, f"{topic}-fresh", [topic])
    assert rows(reading) == {0: (0, 6, None, 6), 1: (0, 0, None, 0), 2: (0, 3, None, 3)}
    assert reading.total == 9
    assert reading.topic_totals() == {topic: 9}
    assert reading.members == []
    assert reading.missing_topics == []


async def test_lag_committed_and_empty_partition(topic: str) -> None:
    group = f"{topic}-committed"
    await commit(group, {TopicPartition(topic, 0): 4, TopicPartition(topic, 2): 3})
    reading = await read_lag_once(KAFKA, group, [topic])
    assert rows(reading) == {0: (0, 6, 4, 2), 1: (0, 0, None, 0), 2: (0, 3, 3, 0)}
    assert reading.total == 2


async def test_lag_committed_below_log_start(topic: str) -> None:
    group = f"{topic}-behind"
    await commit(group, {TopicPartition(topic, 0): 1, TopicPartition(topic, 2): 1})
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        low_watermarks = await admin.delete_records(
            {
                TopicPartition(topic, 0): RecordsToDelete(4),
                TopicPartition(topic, 2): RecordsToDelete(3),
            }
        )
    finally:
        await admin.close()
    assert low_watermarks == {TopicPartition(topic, 0): 4, TopicPartition(topic, 2): 3}

    reading = await read_lag_once(KAFKA, group, [topic])
    assert rows(reading) == {0: (4, 6, 1, 2), 1: (0, 0, None, 0), 2: (3, 3, 1, 0)}
    fresh = await read_lag_once(KAFKA, f"{topic}-fresh-after-delete", [topic])
    assert rows(fresh)[0] == (4, 6, None, 2)


async def test_lag_members_and_assignment(topic: str) -> None:
    group = f"{topic}-members"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA,
        group_id=group,
        client_id="lag-test-client",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "the consumer was never assigned"
            await consumer.getmany(timeout_ms=200)
        reading = await read_lag_once(KAFKA, group, [topic, f"{topic}-absent"])
    finally:
        await consumer.stop()
    assert reading.state == "Stable"
    assert len(reading.members) == 1
    member = reading.members[0]
    assert member.client_id == "lag-test-client"
    assert member.client_host == "127.0.0.1"
    assert member.assignment == {topic: [0, 1, 2]}
    assert reading.missing_topics == [f"{topic}-absent"]


async def test_lag_table_text(topic: str) -> None:
    group = f"{topic}-table"
    await commit(group, {TopicPartition(topic, 0): 5})
    text = format_lag_table(await read_lag_once(KAFKA, group, [topic, "absent-topic"]))
    lines = text.splitlines()
    assert lines[0] == f"group {group}: Empty, 0 members"
    assert lines[2].split() == [
        "topic",
        "partition",
        "end",
        "offset",
        "committed",
        "lag",
    ]
    assert [line.split() for line in lines[3:]] == [
        [topic, "0", "6", "5", "1"],
        [topic, "1", "0", "-", "0"],
        [topic, "2", "3", "-", "3"],
        [topic, "total", "4"],
        ["all", "topics", "total", "4"],
        ["topic", "absent-topic", "does", "not", "exist"],
    ]


async def test_lag_reader_caches_and_reports_outage(topic: str) -> None:
    reader = LagReader(KAFKA, f"{topic}-cache", [topic], cache_s=60.0)
    try:
        first = await reader.read()
        second = await reader.read()
        assert second is first
        await reader.ping()
    finally:
        await reader.aclose()

    closed = LagReader(f"127.0.0.1:{free_port()}", "group", [topic], timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match="is unavailable"):
        await closed.read()
    with pytest.raises(KafkaUnavailable):
        await closed.ping()
    assert time.monotonic() - started < 10
    await asyncio.wait_for(closed.aclose(), 5)
