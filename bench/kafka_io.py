"""Kafka side of the benchmark: topics, the pre-filled data set, the raw consumer and
the consumer group's committed progress."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

PARTITIONS = 8
MAX_MESSAGE_BYTES = 24 * 1024 * 1024


def worker_fetch_bytes() -> int:
    """Return the worker's fetch size per partition, so that the raw consumer and
    the Faust floor read as the worker does."""
    try:
        from agents.app import PARTITION_FETCH_BYTES
    except ImportError:
        # Before agents/app.py had the constant, the worker fetched up to the
        # message limit.
        return MAX_MESSAGE_BYTES
    return int(PARTITION_FETCH_BYTES)


@dataclass
class PrefilledTopic:
    """A topic written once, with the number of predictions before each offset."""

    name: str
    # cumulative[p][o] is the number of predictions in offsets 0 to o - 1 of
    # partition p, so cumulative[p][-1] is the partition's total.
    cumulative: list[list[int]] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(len(offsets) - 1 for offsets in self.cumulative)

    @property
    def predictions(self) -> int:
        return sum(offsets[-1] for offsets in self.cumulative)

    def end_offsets(self) -> dict[int, int]:
        return {p: len(offsets) - 1 for p, offsets in enumerate(self.cumulative)}

    def predictions_before(self, committed: dict[int, int]) -> int:
        """Return the predictions in the messages below the committed offsets."""
        total = 0
        for partition, offsets in enumerate(self.cumulative):
            offset = min(committed.get(partition, 0), len(offsets) - 1)
            total += offsets[max(offset, 0)]
        return total

    def events_before(self, committed: dict[int, int]) -> int:
        ends = self.end_offsets()
        return sum(min(max(committed.get(p, 0), 0), ends[p]) for p in ends)


async def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with `prefix`; return their names."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


async def prefill(
    bootstrap: str, topic: str, values: Sequence[bytes], outputs: Sequence[int]
) -> PrefilledTopic:
    """Publish the events, keyed by their index, and record where each one landed."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=MAX_MESSAGE_BYTES,
        max_batch_size=1024 * 1024,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=value, key=str(index).encode())
            for index, value in enumerate(values)
        ]
        placed = [await future for future in futures]
    finally:
        await producer.stop()

    counts: dict[int, dict[int, int]] = {p: {} for p in range(PARTITIONS)}
    for metadata, count in zip(placed, outputs, strict=True):
        counts[metadata.partition][metadata.offset] = count
    cumulative = []
    for partition in range(PARTITIONS):
        running = [0]
        for offset in sorted(counts[partition]):
            if offset != len(running) - 1:
                raise RuntimeError(
                    f"topic {topic} partition {partition} has offset {offset} where "
                    f"{len(running) - 1} was expected; use a new topic"
                )
            running.append(running[-1] + counts[partition][offset])
        cumulative.append(running)
    return PrefilledTopic(topic, cumulative)


async def raw_rate(bootstrap: str, prefilled: PrefilledTopic) -> dict[str, float]:
    """Read the whole topic with `getmany` and decode each event with orjson.

    This is the baseline R: the rate of a plain aiokafka batch loop, with the
    consumer's fetch size set as the worker sets it.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=worker_fetch_bytes(),
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(prefilled.name, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        events = predictions = 0
        started = time.perf_counter()
        while events < prefilled.events:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    predictions += len(orjson.loads(record.value)["outputs"])
                    events += 1
        elapsed_s = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {
        "events": events,
        "predictions": predictions,
        "seconds": elapsed_s,
        "predictions_per_s": predictions / elapsed_s,
        "events_per_s": events / elapsed_s,
    }


class GroupProgress:
    """Polls a consumer group's committed offsets on one topic."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.group = group
        self.topic = topic
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> GroupProgress:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._admin.close()

    async def committed(self) -> dict[int, int]:
        offsets = await self._admin.list_consumer_group_offsets(self.group)
        return {
            tp.partition: metadata.offset
            for tp, metadata in offsets.items()
            if tp.topic == self.topic and metadata.offset >= 0
        }
