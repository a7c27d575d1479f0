"""`collectors dlq list` and `collectors dlq replay`: read the dead-letter topic and
publish dead letters again to the topic they came from.

Both read COLLECTORS_DLQ_TOPIC up to the end offsets of the moment they start, one
partition after the other. Neither joins a consumer group (replay only commits
offsets to one), so running workers are not disturbed. `list` commits nothing.

`replay` publishes each dead letter to its `source_topic` header with the key,
value and headers it has, plus `replayed_from` (`partition:offset` in the
dead-letter topic) and `attempts` increased by one. Source events go back to the
input topic, and undelivered inputs to the queue or retry topic, whose agents accept
the JSON payloads that the worker dead-letters. Only this service's own topics are
accepted as targets. A dead letter naming another topic is reported and skipped,
and later runs skip it too.

Replay positions are committed in the consumer group `<group>-dlq-replay`, only
after the broker has acknowledged every publish up to that position, so running
replay again does not publish the same dead letter twice. The committed offset of a
partition means that every dead letter below it was replayed. The commit's metadata
contains one more offset per error code (`{"CODE": offset}`): a run with
`--error-code CODE` replays only that code and advances only that code's offset, so
a later run skips those dead letters, while dead letters of other codes stay
pending. A run that stops half-way (a crash, a broker error) may publish up to one
chunk again when it is run once more; the worker's processing is idempotent, so
that adds repeated POSTs, not duplicate inputs.

NOTE: nothing stops two replays from running at the same time, and both would
publish the same dead letters.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from app.settings import Settings

logger = logging.getLogger(__name__)

ERROR_DISPLAY_CHARS = 160
# Dead letters published before their position is committed.
REPLAY_CHUNK = 500
# How long a read may receive nothing before it fails.
READ_STALL_TIMEOUT_S = 30.0


class DeadLetterToolError(Exception):
    """A failure to read the dead-letter topic or to go on with a replay."""


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One message of the dead-letter topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str:
        for header_name, value in self.headers:
            if header_name == name:
                return value.decode(errors="replace")
        return ""

    @property
    def error_code(self) -> str:
        return self.header("error_code")

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    def describe(self) -> str:
        """Return the one-line summary that `collectors dlq list` prints."""
        fields = [self.position, self.error_code or "-"]
        for name in ("collector", "event_id", "output_index"):
            if self.header(name):
                fields.append(f"{name}={self.header(name)}")
        source = ":".join(
            part
            for part in (
                self.header("source_topic"),
                self.header("source_partition"),
                self.header("source_offset"),
            )
            if part
        )
        fields.append(f"source={source or '-'}")
        fields.append(f"attempts={self.header('attempts') or '-'}")
        fields.append(f"first_failure_at={self.header('first_failure_at') or '-'}")
        fields.append(f"error={json.dumps(_shorten(self.header('error')))}")
        fields.append(f"size={len(self.value or b'')}")
        return " ".join(fields)

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """Return the headers for the republished message."""
        try:
            attempts = int(self.header("attempts") or 0)
        except ValueError:
            attempts = 0
        replaced = {"attempts", "replayed_from"}
        headers = [(n, v) for n, v in self.headers if n not in replaced]
        headers.append(("attempts", str(attempts + 1).encode()))
        headers.append(("replayed_from", self.position.encode()))
        return headers


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= ERROR_DISPLAY_CHARS:
        return text
    return text[: ERROR_DISPLAY_CHARS - 1] + "…"


# --- reading -------------------------------------------------------------------


def _consumer(settings: Settings, group_id: str | None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=settings.max_message_bytes,
        fetch_max_bytes=settings.max_message_bytes,
    )


async def _start(
    client: AIOKafkaConsumer | AIOKafkaProducer, settings: Settings
) -> None:
    try:
        await client.start()
    except KafkaError as error:
        raise DeadLetterToolError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {error!r}"
        ) from error


async def _partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        await admin.start()
        descriptions = await admin.describe_topics([topic])
    except KafkaError as error:
        raise DeadLetterToolError(
            f"failed to describe topic {topic} at "
            f"{settings.kafka_bootstrap_servers}: {error!r}"
        ) from error
    finally:
        await admin.close()
    numbers = sorted(
        p["partition"]
        for d in descriptions
        if d["topic"] == topic
        for p in d["partitions"]
    )
    if not numbers:
        raise DeadLetterToolError(
            f"topic {topic} does not exist: no worker has run with "
            "COLLECTORS_DLQ_TOPIC set to it"
        )
    return [TopicPartition(topic, number) for number in numbers]


async def _read_partition(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int
) -> AsyncIterator[DeadLetterRecord]:
    """Yield the records of one partition from `start` up to `end` (exclusive).

    The consumer is assigned every partition of the topic once, because assigning
    again disturbs the group coordinator of a consumer that has a group id. All
    partitions but `tp` are paused, so only `tp` is fetched.
    """
    consumer.pause(*consumer.assignment())
    consumer.resume(tp)
    consumer.seek(tp, start)
    stalled_s = 0.0
    while await consumer.position(tp) < end:
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=REPLAY_CHUNK)
        records = batch.get(tp, [])
        if not records:
            stalled_s += 1.0
            if stalled_s >= READ_STALL_TIMEOUT_S:
                raise DeadLetterToolError(
                    f"timed out reading {tp.topic} partition {tp.partition}: no "
                    f"record for {READ_STALL_TIMEOUT_S:.0f} s at offset "
                    f"{await consumer.position(tp)} (end {end}). Check that Kafka "
                    "is reachable."
                )
            continue
        stalled_s = 0.0
        for record in records:
            if record.offset >= end:
                return
            yield DeadLetterRecord(
                record.partition,
                record.offset,
                record.key,
                record.value,
                tuple(record.headers or ()),
            )


async def list_dead_letters(
    settings: Settings,
    limit: int | None,
    error_code: str | None,
    emit: Callable[[str], None],
) -> int:
    """Emit one line per dead letter, at most `limit` of them, and return the
    count."""
    consumer = _consumer(settings, group_id=None)
    await _start(consumer, settings)
    try:
        partitions = await _partitions(settings, settings.dlq_topic)
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        count = 0
        for tp in partitions:
            async for letter in _read_partition(consumer, tp, starts[tp], ends[tp]):
                if error_code and letter.error_code != error_code:
                    continue
                emit(letter.describe())
                count += 1
                if limit is not None and count >= limit:
                    return count
        return count
    finally:
        await consumer.stop()


# --- replaying -----------------------------------------------------------------


@dataclass
class ReplayPosition:
    """The part of one partition that replay has covered: every dead letter below
    `offset`, and the dead letters of error code `code` below `by_code[code]`."""

    offset: int = 0
    by_code: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, offset: int, metadata: str) -> ReplayPosition:
        try:
            by_code = {str(k): int(v) for k, v in json.loads(metadata or "{}").items()}
        except (ValueError, AttributeError, TypeError):
            logger.warning("ignoring invalid replay metadata %r", metadata)
            by_code = {}
        return cls(max(offset, 0), by_code)

    def replayed(self, letter: DeadLetterRecord) -> bool:
        return letter.offset < max(self.offset, self.by_code.get(letter.error_code, 0))

    def start(self, error_code: str | None) -> int:
        if error_code is None:
            return self.offset
        return max(self.offset, self.by_code.get(error_code, 0))

    def advance(self, error_code: str | None, next_offset: int) -> None:
        if error_code is None:
            self.offset = max(self.offset, next_offset)
        else:
            self.by_code[error_code] = max(self.by_code.get(error_code, 0), next_offset)
        self.by_code = {c: o for c, o in self.by_code.items() if o > self.offset}

    def metadata(self) -> str:
        return json.dumps(self.by_code, separators=(",", ":"), sort_keys=True)


@dataclass
class ReplaySummary:
    replayed: int = 0
    already_replayed: int = 0
    other_codes: int = 0
    unknown_target: int = 0

    def line(self, dry_run: bool) -> str:
        verb = "would replay" if dry_run else "replayed"
        return (
            f"{verb} {self.replayed} dead letters; skipped "
            f"{self.already_replayed} already replayed, {self.other_codes} with "
            f"other error codes, {self.unknown_target} with an unknown source topic"
        )


def replay_group(settings: Settings) -> str:
    return f"{settings.consumer_group}-dlq-replay"


def replay_targets(settings: Settings) -> set[str]:
    """Return the topics that dead letters may be published to again."""
    return {settings.input_topic, settings.queue_topic, settings.retry_topic}


async def _committed_positions(
    settings: Settings, partitions: list[TopicPartition]
) -> dict[TopicPartition, ReplayPosition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        await admin.start()
        committed = await admin.list_consumer_group_offsets(replay_group(settings))
    except KafkaError as error:
        raise DeadLetterToolError(
            f"failed to read the offsets of group {replay_group(settings)}: {error!r}"
        ) from error
    finally:
        await admin.close()
    positions = {}
    for tp in partitions:
        found = committed.get(tp)
        positions[tp] = (
            ReplayPosition.parse(found.offset, found.metadata)
            if found is not None
            else ReplayPosition()
        )
    return positions


async def replay_dead_letters(
    settings: Settings,
    error_code: str | None,
    dry_run: bool,
    emit: Callable[[str], None],
) -> ReplaySummary:
    """Publish dead letters again to their source topics, as the module docstring
    describes, and return the counts."""
    consumer = _consumer(settings, group_id=replay_group(settings))
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        max_request_size=settings.max_message_bytes,
    )
    await _start(consumer, settings)
    try:
        if not dry_run:
            await _start(producer, settings)
        partitions = await _partitions(settings, settings.dlq_topic)
        consumer.assign(partitions)
        positions = await _committed_positions(settings, partitions)
        beginnings = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        replay = _Replay(settings, consumer, producer, error_code, dry_run, emit)
        for tp in partitions:
            start = max(positions[tp].start(error_code), beginnings[tp])
            await replay.partition(tp, positions[tp], start, ends[tp])
        return replay.summary
    finally:
        await consumer.stop()
        if not dry_run:
            await producer.stop()


class _Replay:
    """The replay of one run, one partition after the other."""

    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        error_code: str | None,
        dry_run: bool,
        emit: Callable[[str], None],
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.error_code = error_code
        self.dry_run = dry_run
        self.emit = emit
        self.targets = replay_targets(settings)
        self.summary = ReplaySummary()

    async def partition(
        self, tp: TopicPartition, position: ReplayPosition, start: int, end: int
    ) -> None:
        pending: list[Awaitable[Any]] = []
        uncommitted = 0
        async for letter in _read_partition(self.consumer, tp, start, end):
            pending.extend(await self._replay_one(letter, position))
            uncommitted += 1
            if uncommitted >= REPLAY_CHUNK:
                await self._commit(tp, position, pending, letter.offset + 1)
                pending, uncommitted = [], 0
        if uncommitted:
            await self._commit(tp, position, pending, end)

    async def _replay_one(
        self, letter: DeadLetterRecord, position: ReplayPosition
    ) -> list[Awaitable[Any]]:
        if self.error_code is not None and letter.error_code != self.error_code:
            self.summary.other_codes += 1
            return []
        if position.replayed(letter):
            self.summary.already_replayed += 1
            return []
        target = letter.header("source_topic")
        if target not in self.targets:
            self.summary.unknown_target += 1
            self.emit(
                f"skipped {letter.position} {letter.error_code or '-'}: source topic "
                f"{target or '(none)'} is not one of {', '.join(sorted(self.targets))}"
            )
            return []
        self.summary.replayed += 1
        verb = "would replay" if self.dry_run else "replayed"
        self.emit(f"{verb} {letter.position} {letter.error_code or '-'} -> {target}")
        if self.dry_run:
            return []
        future = await self.producer.send(
            target, value=letter.value, key=letter.key, headers=letter.replay_headers()
        )
        return [future]

    async def _commit(
        self,
        tp: TopicPartition,
        position: ReplayPosition,
        pending: list[Awaitable[Any]],
        next_offset: int,
    ) -> None:
        """Wait for every publish of the chunk, then commit the new position."""
        if self.dry_run:
            return
        for future in pending:
            await future
        position.advance(self.error_code, next_offset)
        try:
            await self.consumer.commit({tp: (position.offset, position.metadata())})
        except KafkaError as error:
            raise DeadLetterToolError(
                f"published dead letters up to {tp.partition}:{next_offset - 1} but "
                f"failed to commit the replay position: {error!r}. Running replay "
                "again publishes them again."
            ) from error
