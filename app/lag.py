"""Consumer-group lag per topic and partition, and the group's members.

The lag of a partition is its end offset (the high watermark) minus the group's
position in it. The position is the committed offset, or the log start offset when
the group has committed nothing there or when its committed offset points below
the log start (retention or delete_records removed those records). A partition
that never had a record has end offset 0 and lag 0.

`LagReader` keeps one admin client and one group-less consumer open for the API
(dashboard, /metrics, readiness) and caches a reading for a moment, so frequent
scrapes cost one set of Kafka requests per `cache_s`. `collectors lag` uses it
once. Kafka errors are translated into `KafkaUnavailable` here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

logger = logging.getLogger(__name__)

NO_OFFSET = -1
T = TypeVar("T")


class KafkaUnavailable(Exception):
    """Kafka could not be reached or did not respond in time."""

    retriable = True


def partition_lag(end_offset: int, beginning_offset: int, committed: int | None) -> int:
    """Return how many records of a partition the group has not consumed yet."""
    if committed is None or committed < 0:
        position = beginning_offset
    else:
        position = max(committed, beginning_offset)
    return max(0, end_offset - position)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    beginning_offset: int
    end_offset: int
    # None when the group has committed no offset for the partition.
    committed: int | None
    lag: int


@dataclass(frozen=True, slots=True)
class GroupMember:
    member_id: str
    client_id: str
    client_host: str
    # Topic -> assigned partitions, decoded from the consumer protocol assignment.
    assignment: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    # The coordinator's group state: Stable, Empty, PreparingRebalance, Dead, ...
    state: str
    partitions: list[PartitionLag]
    members: list[GroupMember]
    missing_topics: list[str] = field(default_factory=list)
    read_at: float = 0.0

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    def topic_totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for item in self.partitions:
            totals[item.topic] = totals.get(item.topic, 0) + item.lag
        return totals

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["total"] = self.total
        document["topic_totals"] = self.topic_totals()
        return document


def decode_assignment(data: bytes) -> dict[str, list[int]]:
    """Decode a member's consumer-protocol assignment into topic -> partitions.

    An empty value (a member that joins while the group rebalances) decodes to no
    partitions.
    """
    if not data:
        return {}
    assignment = ConsumerProtocolMemberAssignment.decode(data)
    return {topic: sorted(partitions) for topic, partitions in assignment.assignment}


async def read_group_lag(
    admin: AIOKafkaAdminClient,
    consumer: AIOKafkaConsumer,
    group: str,
    topics: Sequence[str],
) -> GroupLag:
    """Read end, beginning and committed offsets and the members of `group`.

    Topics that do not exist are listed in `missing_topics` and have no rows.
    """
    partitions, missing = await _topic_partitions(admin, topics)
    ends: dict[TopicPartition, int] = {}
    beginnings: dict[TopicPartition, int] = {}
    committed: dict[TopicPartition, Any] = {}
    if partitions:
        ends = await consumer.end_offsets(partitions)
        beginnings = await consumer.beginning_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(
            group, partitions=partitions
        )
    rows = []
    for tp in partitions:
        metadata = committed.get(tp)
        offset = metadata.offset if metadata is not None else NO_OFFSET
        position = None if offset < 0 else offset
        end, beginning = ends[tp], beginnings[tp]
        rows.append(
            PartitionLag(
                tp.topic,
                tp.partition,
                beginning,
                end,
                position,
                partition_lag(end, beginning, position),
            )
        )
    state, members = await _describe_group(admin, group)
    return GroupLag(group, state, rows, members, missing, time.time())


async def _topic_partitions(
    admin: AIOKafkaAdminClient, topics: Sequence[str]
) -> tuple[list[TopicPartition], list[str]]:
    descriptions = await admin.describe_topics(list(topics))
    by_name = {d["topic"]: d for d in descriptions}
    partitions: list[TopicPartition] = []
    missing: list[str] = []
    for topic in topics:
        description = by_name.get(topic)
        if (
            not description
            or description["error_code"]
            or not description["partitions"]
        ):
            missing.append(topic)
            continue
        numbers = sorted(p["partition"] for p in description["partitions"])
        partitions.extend(TopicPartition(topic, number) for number in numbers)
    return partitions, missing


async def _describe_group(
    admin: AIOKafkaAdminClient, group: str
) -> tuple[str, list[GroupMember]]:
    responses = await admin.describe_consumer_groups([group])
    for response in responses:
        for description in response.to_object()["groups"]:
            if description["group"] != group:
                continue
            if description["error_code"]:
                return "Unknown", []
            return description["state"], _members(description)
    return "Unknown", []


def _members(description: dict[str, Any]) -> list[GroupMember]:
    members = []
    for member in description["members"]:
        assignment: dict[str, list[int]] = {}
        if description["protocol_type"] == "consumer":
            try:
                assignment = decode_assignment(member["member_assignment"])
            except Exception as error:  # any malformed bytes; the member still shows
                logger.warning(
                    "cannot decode the assignment of member %s: %r",
                    member["member_id"],
                    error,
                )
        members.append(
            GroupMember(
                member["member_id"],
                member["client_id"],
                member["client_host"].lstrip("/"),
                assignment,
            )
        )
    return sorted(members, key=lambda m: m.member_id)


class LagReader:
    """Reads a group's lag over long-lived Kafka clients, with a short cache.

    Clients are created on first use and recreated after any error, so a Kafka
    outage costs one failed request per read rather than a stuck client.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group: str,
        topics: Iterable[str],
        cache_s: float = 2.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group = group
        self.topics = list(topics)
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._cached: GroupLag | None = None
        self._cached_at = 0.0
        self._pinged_at = 0.0
        self._lock = asyncio.Lock()

    async def read(self) -> GroupLag:
        """Return the group's lag, at most `cache_s` old; raise KafkaUnavailable."""
        async with self._lock:
            if self._cached and time.monotonic() - self._cached_at < self.cache_s:
                return self._cached
            admin = await self._admin_client()
            consumer = await self._consumer_client()
            reading = await self._guarded(
                read_group_lag(admin, consumer, self.group, self.topics)
            )
            self._cached, self._cached_at = reading, time.monotonic()
            return reading

    async def ping(self) -> None:
        """Send one metadata request (at most one per `cache_s` after a success);
        raise KafkaUnavailable when it fails."""
        async with self._lock:
            if time.monotonic() - self._pinged_at < self.cache_s:
                return
            admin = await self._admin_client()
            await self._guarded(admin.describe_cluster())
            self._pinged_at = time.monotonic()

    async def aclose(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        self._cached = None
        self._pinged_at = 0.0
        for closing in (
            admin.close() if admin else None,
            consumer.stop() if consumer else None,
        ):
            if closing is None:
                continue
            try:
                await asyncio.wait_for(closing, self.timeout_s)
            except (KafkaError, OSError, TimeoutError) as error:
                logger.debug("closing a Kafka client failed: %r", error)

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                request_timeout_ms=int(self.timeout_s * 1000),
            )
            await self._guarded(self._admin.start())
        return self._admin

    async def _consumer_client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                enable_auto_commit=False,
                request_timeout_ms=int(self.timeout_s * 1000),
            )
            await self._guarded(self._consumer.start())
        return self._consumer

    async def _guarded(self, operation: Awaitable[T]) -> T:
        """Await a Kafka call with the timeout; translate its errors and drop the
        clients after a failure."""
        try:
            return await asyncio.wait_for(operation, self.timeout_s)
        except (KafkaError, OSError, TimeoutError) as error:
            await self.aclose()
            message = str(error) or type(error).__name__
            raise KafkaUnavailable(
                f"Kafka at {self.bootstrap_servers} is unavailable: {message}"
            ) from error


async def read_lag_once(
    bootstrap_servers: str, group: str, topics: Iterable[str], timeout_s: float = 10.0
) -> GroupLag:
    """Read a group's lag with fresh clients and close them again."""
    reader = LagReader(bootstrap_servers, group, topics, timeout_s=timeout_s)
    try:
        return await reader.read()
    finally:
        await reader.aclose()


def format_lag_table(reading: GroupLag) -> str:
    """Render a reading as the text table of `collectors lag`."""
    members = len(reading.members)
    lines = [
        f"group {reading.group}: {reading.state}, "
        f"{members} member{'' if members == 1 else 's'}",
        "",
    ]
    header = ("topic", "partition", "end offset", "committed", "lag")
    rows: list[tuple[str, ...]] = []
    totals = reading.topic_totals()
    for topic in dict.fromkeys(p.topic for p in reading.partitions):
        for item in (p for p in reading.partitions if p.topic == topic):
            committed = "-" if item.committed is None else str(item.committed)
            rows.append(
                (
                    topic,
                    str(item.partition),
                    str(item.end_offset),
                    committed,
                    str(item.lag),
                )
            )
        rows.append((topic, "total", "", "", str(totals[topic])))
    rows.append(("all topics", "total", "", "", str(reading.total)))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines.append(_table_row(header, widths))
    lines.extend(_table_row(row, widths) for row in rows)
    lines.extend(f"topic {topic} does not exist" for topic in reading.missing_topics)
    return "\n".join(lines)


def _table_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    first = cells[0].ljust(widths[0])
    rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
    return "  ".join((first, *rest)).rstrip()
