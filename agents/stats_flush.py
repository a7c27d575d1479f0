"""The worker's statistics in Redis, its own lag and its stall detection.

Every COLLECTORS_STATS_FLUSH_INTERVAL_S a Faust timer refreshes the lag of the
partitions this worker consumes, feeds the stall detector and adds the counter
deltas since the last successful flush to Redis, in one MULTI/EXEC pipeline:

- `col:stats:funnel:{u}/{a}/{id}` (hash): funnel step -> inputs, and
  `rule:{node}` -> pre-queue drops by that workflow node.
- `col:stats:collectors` (set): collector keys that have a funnel hash.
- `col:stats:rate:{t}` (hash): RATE_FIELDS -> count in the RATE_BUCKET_S bucket
  that starts at epoch second `t`; expires after STATS_TTL_S.
- `col:stats:latency` (hash): histogram of the destination POST latency since
  the start: bucket upper bound -> count, plus `sum_s` and `count`.
- `col:stats:latency:{t}` (hash): the same for one time bucket; expires after
  STATS_TTL_S.
- `col:stats:worker:{id}` (hash): heartbeat of one worker (host, pid, web port,
  partitions, lag, totals); expires when the worker stops flushing.
- `col:stats:workers` (zset): worker ids scored by their last heartbeat, in
  epoch seconds.

A failed flush is logged (at most once a minute) and its deltas are kept for the
next flush. Deltas therefore land in the time bucket of the flush that succeeds.
The hot path only adds to the plain counters of agents/stats.py.

This module imports no Faust code at import time, so the API and the CLI can read
the key layout from it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as redis
from redis.exceptions import RedisError

from agents.stats import FUNNEL_STEPS, WorkerStats
from app.lag import KafkaUnavailable, LagReader, partition_lag

if TYPE_CHECKING:
    import faust

    from app.config_cache import ConfigCache
    from app.settings import Settings

logger = logging.getLogger(__name__)

RATE_BUCKET_S = 10
STATS_TTL_S = 3600
WORKERS_KEY = "col:stats:workers"
COLLECTORS_KEY = "col:stats:collectors"
LATENCY_KEY = "col:stats:latency"
# Counted per time bucket for the throughput chart.
RATE_FIELDS = (
    "events_in",
    "outputs_in",
    "matched",
    "enqueued",
    "posted",
    "already_present",
    "failed",
    "dead_lettered",
)
# Upper bounds of the destination latency histogram, in seconds (+Inf is implied).
LATENCY_BOUNDS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
ERROR_LOG_INTERVAL_S = 60.0
FLUSH_TIMEOUT_S = 5.0


def funnel_key(collector_key: str) -> str:
    return f"col:stats:funnel:{collector_key}"


def rate_key(bucket_start: int) -> str:
    return f"col:stats:rate:{bucket_start}"


def latency_key(bucket_start: int) -> str:
    return f"{LATENCY_KEY}:{bucket_start}"


def worker_key(worker_id: str) -> str:
    return f"col:stats:worker:{worker_id}"


def bucket_start(epoch_s: float) -> int:
    return int(epoch_s) // RATE_BUCKET_S * RATE_BUCKET_S


def latency_field(index: int) -> str:
    """Return the Redis hash field of histogram bucket `index` (its upper bound)."""
    return "+Inf" if index == len(LATENCY_BOUNDS_S) else repr(LATENCY_BOUNDS_S[index])


# --- destination latency --------------------------------------------------------------


@dataclass
class LatencyHistogram:
    """Counts per bucket (not cumulative; the last bucket is +Inf) and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_S) + 1))
    sum_s: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value_s: float) -> None:
        index = next(
            (i for i, bound in enumerate(LATENCY_BOUNDS_S) if value_s <= bound),
            len(LATENCY_BOUNDS_S),
        )
        self.counts[index] += 1
        self.sum_s += value_s

    def add(self, other: LatencyHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.sum_s += other.sum_s


class LatencyRecorder:
    """Histograms of the latencies that the deliverer appends to `WorkerStats`:
    one since the start (for /metrics) and one since the last flush (for Redis).
    `absorb` empties that list, which also keeps it from growing."""

    def __init__(self, stats: WorkerStats) -> None:
        self._stats = stats
        self.total = LatencyHistogram()
        self.pending = LatencyHistogram()

    def absorb(self) -> None:
        samples = self._stats.destination_latency_s
        drained = samples[:]
        del samples[: len(drained)]
        for value_s in drained:
            self.total.observe(value_s)
            self.pending.observe(value_s)

    def take_pending(self) -> LatencyHistogram:
        taken, self.pending = self.pending, LatencyHistogram()
        return taken

    def restore_pending(self, histogram: LatencyHistogram) -> None:
        self.pending.add(histogram)


# --- the worker's own lag and stall detection -----------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionPosition:
    topic: str
    partition: int
    # None until the consumer has fetched the partition's high watermark.
    highwater: int | None
    committed: int | None
    lag: int


class WorkerLagTracker:
    """Lag of the partitions assigned to this worker, from the Faust consumer's
    high watermarks and committed offsets (no broker request per reading, except
    the log start offset of partitions without a committed offset)."""

    BEGINNING_CACHE_S = 60.0

    def __init__(self, app: faust.App, topics: Iterable[str]) -> None:
        self._app = app
        self.topics = frozenset(topics)
        self.positions: list[PartitionPosition] = []
        self._beginnings: dict[Any, tuple[int, float]] = {}

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.positions)

    def by_topic(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for item in self.positions:
            totals[item.topic] = totals.get(item.topic, 0) + item.lag
        return totals

    async def refresh(self) -> int:
        """Read the positions again; return the total lag."""
        readings = self._read_consumer()
        without_commit = [
            tp
            for tp, highwater, committed in readings
            if committed is None and highwater
        ]
        beginnings = await self._beginnings_for(without_commit)

        positions = []
        for tp, highwater, committed in readings:
            lag = 0
            if highwater is not None:
                lag = partition_lag(highwater, beginnings.get(tp, 0), committed)
            positions.append(
                PartitionPosition(tp.topic, tp.partition, highwater, committed, lag)
            )
        self.positions = positions
        return self.total

    def _read_consumer(self) -> list[tuple[Any, int | None, int | None]]:
        """Return (tp, high watermark, committed offset) of each assigned partition
        of this worker's topics."""
        consumer = self._app.consumer
        try:
            assigned = sorted(
                (tp for tp in consumer.assignment() if tp.topic in self.topics),
                key=lambda tp: (tp.topic, tp.partition),
            )
        except Exception:  # the consumer is not started yet, or rebalancing
            return []

        # NOTE: Faust has no public accessor for the offsets it committed, so this
        # reads `_committed_offset` (faust-streaming 0.15). Faust stores the next
        # offset to read there, and None for 0 or when nothing was committed.
        committed_offsets = consumer._committed_offset  # type: ignore[attr-defined]  # see the NOTE
        readings = []
        for tp in assigned:
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # revoked between assignment() and now
                continue
            readings.append((tp, highwater, committed_offsets.get(tp)))
        return readings

    async def _beginnings_for(self, partitions: list[Any]) -> dict[Any, int]:
        now = time.monotonic()
        expired = [
            tp
            for tp in partitions
            if now - self._beginnings.get(tp, (0, -self.BEGINNING_CACHE_S))[1]
            >= self.BEGINNING_CACHE_S
        ]
        if expired:
            try:
                offsets = await self._app.consumer.earliest_offsets(*expired)
            except Exception as error:  # Kafka down: assume the log starts at 0
                logger.debug("cannot read log start offsets: %r", error)
                offsets = {}
            for tp, offset in offsets.items():
                self._beginnings[tp] = (int(offset or 0), now)
        return {
            tp: self._beginnings[tp][0] for tp in partitions if tp in self._beginnings
        }


class StallDetector:
    """Detector of partitions whose committed offset has not moved for a while
    although records were waiting (lag above 0) the whole time."""

    def __init__(
        self,
        stall_after_s: float,
        extra_s_by_topic: Mapping[str, float] | None = None,
    ) -> None:
        self.stall_after_s = stall_after_s
        self.extra_s_by_topic = dict(extra_s_by_topic or {})
        # (topic, partition) -> (committed offset, monotonic time it was last seen
        # moving or caught up).
        self._since: dict[tuple[str, int], tuple[int | None, float]] = {}
        self.stalled: list[PartitionPosition] = []

    def observe(
        self, positions: Iterable[PartitionPosition], now: float | None = None
    ) -> None:
        now = time.monotonic() if now is None else now
        seen: dict[tuple[str, int], tuple[int | None, float]] = {}
        stalled = []
        for item in positions:
            key = (item.topic, item.partition)
            committed, since = self._since.get(key, (item.committed, now))
            if item.lag <= 0 or item.committed != committed:
                since = now
            seen[key] = (item.committed, since)
            limit_s = self.stall_after_s + self.extra_s_by_topic.get(item.topic, 0.0)
            if item.lag > 0 and now - since >= limit_s:
                stalled.append(item)
        self._since = seen
        self.stalled = stalled


# --- flushing to Redis ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    totals: Counter[str]
    funnel: dict[str, Counter[str]]
    rule_drops: Counter[tuple[str, str]]

    @classmethod
    def of(cls, stats: WorkerStats) -> CounterSnapshot:
        return cls(
            Counter(stats.totals),
            {key: Counter(steps) for key, steps in stats.funnel.items()},
            Counter(stats.rule_drops),
        )

    def minus(self, earlier: CounterSnapshot) -> CounterSnapshot:
        funnel = {}
        for key, steps in self.funnel.items():
            delta = steps - earlier.funnel.get(key, Counter())
            if delta:
                funnel[key] = delta
        return CounterSnapshot(
            self.totals - earlier.totals, funnel, self.rule_drops - earlier.rule_drops
        )

    def rate_counts(self) -> dict[str, int]:
        """Return the RATE_FIELDS counts of a delta."""
        steps: Counter[str] = Counter()
        for collector_steps in self.funnel.values():
            steps.update(collector_steps)
        dead_lettered = (
            self.totals["events_dead_lettered"]
            + self.totals["outputs_dead_lettered"]
            + steps["dead_lettered"]
        )
        counts: dict[str, int] = {
            "events_in": self.totals["events_in"],
            "outputs_in": self.totals["outputs_in"],
            "dead_lettered": dead_lettered,
        }
        for name in ("matched", "enqueued", "posted", "already_present", "failed"):
            counts[name] = steps[name]
        return {name: counts[name] for name in RATE_FIELDS if counts[name]}


EMPTY_SNAPSHOT = CounterSnapshot(Counter(), {}, Counter())

# HINCRBY for each [hash key, field, count] triple of the JSON array in ARGV[1].
# The counts are strings, which HINCRBY takes as they are: Lua would format a
# number of 10^14 or more as "1e+14".
ADD_COUNTS_SCRIPT = """
local increments = cjson.decode(ARGV[1])
for _, item in ipairs(increments) do
  redis.call('HINCRBY', item[1], item[2], item[3])
end
return #increments
"""


class StatsFlusher:
    """Writer of one worker's counter deltas and heartbeat to Redis."""

    def __init__(
        self,
        client: redis.Redis,
        stats: WorkerStats,
        latency: LatencyRecorder,
        worker_id: str,
        heartbeat_ttl_s: float,
    ) -> None:
        self.client = client
        self._add_counts = client.register_script(ADD_COUNTS_SCRIPT)
        self._stats = stats
        self._latency = latency
        self.worker_id = worker_id
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self._flushed = EMPTY_SNAPSHOT
        self.failures = 0
        self.last_error: str | None = None
        self.last_success_at: float | None = None
        self._suppressed = 0
        self._logged_at = -ERROR_LOG_INTERVAL_S

    async def flush(self, heartbeat: Mapping[str, Any]) -> bool:
        """Write the deltas and the heartbeat; return whether Redis took them.

        A Redis error or timeout is logged (rate-limited) and not raised, and the
        deltas wait for the next flush.
        """
        self._latency.absorb()
        current = CounterSnapshot.of(self._stats)
        delta = current.minus(self._flushed)
        latency = self._latency.take_pending()
        try:
            await asyncio.wait_for(
                self._write(delta, latency, heartbeat, time.time()), FLUSH_TIMEOUT_S
            )
        except (RedisError, OSError, TimeoutError) as error:
            self._latency.restore_pending(latency)
            self._record_failure(error)
            return False
        self._flushed = current
        self.last_success_at = time.monotonic()
        if self.last_error is not None:
            logger.info("statistics flushed to Redis again")
        self.last_error = None
        return True

    async def _write(
        self,
        delta: CounterSnapshot,
        latency: LatencyHistogram,
        heartbeat: Mapping[str, Any],
        now: float,
    ) -> None:
        # NOTE: when the connection drops after EXEC was sent, the outcome is
        # unknown and the deltas are written again, so a count can be doubled.
        async with self.client.pipeline(transaction=True) as pipe:
            await self._queue_funnel(pipe, delta)
            bucket = bucket_start(now)
            rate_counts = delta.rate_counts()
            if rate_counts:
                for name, count in rate_counts.items():
                    pipe.hincrby(rate_key(bucket), name, count)
                pipe.expire(rate_key(bucket), STATS_TTL_S)
            if latency.count:
                for key in (LATENCY_KEY, latency_key(bucket)):
                    self._queue_latency(pipe, key, latency)
                pipe.expire(latency_key(bucket), STATS_TTL_S)
            self._queue_heartbeat(pipe, heartbeat, now)
            await pipe.execute()

    async def _queue_funnel(self, pipe: Any, delta: CounterSnapshot) -> None:
        # One script call adds every changed counter, because with thousands of
        # active collectors one HINCRBY each cost the worker more CPU to send and
        # parse than the rest of the flush. Its argument is one JSON array:
        # redis-py took about 30 ms to pack the separate arguments of
        # 1,000 collectors.
        increments: list[tuple[str, str, str]] = []
        for collector_key, steps in delta.funnel.items():
            key = funnel_key(collector_key)
            for step, count in steps.items():
                increments.append((key, step, str(count)))
        for (collector_key, node_id), count in delta.rule_drops.items():
            increments.append(
                (funnel_key(collector_key), f"rule:{node_id}", str(count))
            )
        if increments:
            await self._add_counts(
                keys=[], args=[orjson.dumps(increments)], client=pipe
            )
        collectors = delta.funnel.keys() | {
            collector_key for collector_key, _ in delta.rule_drops
        }
        if collectors:
            pipe.sadd(COLLECTORS_KEY, *collectors)

    @staticmethod
    def _queue_latency(pipe: Any, key: str, latency: LatencyHistogram) -> None:
        for index, count in enumerate(latency.counts):
            if count:
                pipe.hincrby(key, latency_field(index), count)
        pipe.hincrby(key, "count", latency.count)
        pipe.hincrbyfloat(key, "sum_s", latency.sum_s)

    def _queue_heartbeat(
        self, pipe: Any, heartbeat: Mapping[str, Any], now: float
    ) -> None:
        key = worker_key(self.worker_id)
        mapping = {
            name: value if isinstance(value, str | int | float) else orjson.dumps(value)
            for name, value in heartbeat.items()
        }
        mapping["updated_at"] = now
        pipe.delete(key)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, max(1, int(self.heartbeat_ttl_s)))
        pipe.zadd(WORKERS_KEY, {self.worker_id: now})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - STATS_TTL_S)

    async def remove_heartbeat(self) -> None:
        """Delete this worker's heartbeat, for a worker that stops."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(worker_key(self.worker_id))
                pipe.zrem(WORKERS_KEY, self.worker_id)
                await asyncio.wait_for(pipe.execute(), FLUSH_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as error:
            self._record_failure(error)

    def _record_failure(self, error: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(error).__name__}: {error}"
        now = time.monotonic()
        if now - self._logged_at < ERROR_LOG_INTERVAL_S:
            self._suppressed += 1
            return
        logger.warning(
            "cannot flush statistics to Redis, keeping them for the next flush "
            "(%d similar errors not logged since the last message): %s",
            self._suppressed,
            self.last_error,
        )
        self._logged_at = now
        self._suppressed = 0


# --- wiring ---------------------------------------------------------------------------


@dataclass
class WorkerObservability:
    """What the worker's timers, web views and summary line share."""

    settings: Settings
    stats: WorkerStats
    cache: ConfigCache
    lag: WorkerLagTracker
    stall: StallDetector
    latency: LatencyRecorder
    flusher: StatsFlusher
    kafka: LagReader
    redis: redis.Redis
    started_at: float = field(default_factory=time.time)

    async def tick(self) -> None:
        """Refresh the lag, look for stalls and flush to Redis; never raises, so
        the Faust timer that calls it keeps running."""
        try:
            await self.lag.refresh()
            self.stall.observe(self.lag.positions)
        except Exception:
            logger.exception("reading this worker's lag failed")
        await self.flusher.flush(self.heartbeat())

    def heartbeat(self) -> dict[str, Any]:
        assignment: dict[str, list[int]] = {}
        for item in self.lag.positions:
            assignment.setdefault(item.topic, []).append(item.partition)
        totals = self.stats.totals
        funnel = self.stats.funnel_totals()
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "web_port": self.settings.worker_web_port,
            "group": self.settings.consumer_group,
            "started_at": self.started_at,
            "partitions": assignment,
            "lag": self.lag.total,
            "lag_by_topic": self.lag.by_topic(),
            "config_stale": int(self.cache.stale_since is not None),
            "config_collectors": len(self.cache.snapshot.by_key),
            "stalled": len(self.stall.stalled),
            "totals": {
                "events_in": totals["events_in"],
                "outputs_in": totals["outputs_in"],
                "events_dead_lettered": totals["events_dead_lettered"],
                "outputs_dead_lettered": totals["outputs_dead_lettered"],
                **{step: funnel[step] for step in FUNNEL_STEPS},
            },
        }

    async def aclose(self) -> None:
        await self.kafka.aclose()
        await self.redis.aclose()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def install_worker_observability(
    app: faust.App, settings: Settings, cache: ConfigCache, stats: WorkerStats
) -> WorkerObservability:
    """Create the worker's observability state and register its flush timer and
    a last flush at shutdown."""
    client = redis.Redis.from_url(
        settings.redis_url,
        protocol=2,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=2.0,
    )
    topics = (settings.input_topic, settings.queue_topic, settings.retry_topic)
    latency = LatencyRecorder(stats)
    observability = WorkerObservability(
        settings=settings,
        stats=stats,
        cache=cache,
        lag=WorkerLagTracker(app, topics),
        stall=StallDetector(
            settings.stall_after_s,
            {settings.retry_topic: settings.retry_backoff_max_s},
        ),
        latency=latency,
        flusher=StatsFlusher(
            client,
            stats,
            latency,
            worker_id(),
            heartbeat_ttl_s=max(10.0, 5 * settings.stats_flush_interval_s),
        ),
        kafka=LagReader(
            settings.kafka_bootstrap_servers, settings.consumer_group, topics
        ),
        redis=client,
    )

    @app.timer(interval=settings.stats_flush_interval_s)  # type: ignore[untyped-decorator]  # faust's timer is untyped
    async def flush_statistics() -> None:
        await observability.tick()

    # mode-streaming 0.7's SignalHandlerT rejects this async handler under mypy,
    # although Signal.send awaits it.
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def flush_at_shutdown(
        sender: Any, *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        if await observability.flusher.flush(observability.heartbeat()):
            await observability.flusher.remove_heartbeat()
        await observability.aclose()

    return observability


async def kafka_reachable(observability: WorkerObservability) -> str | None:
    """Return None when Kafka answers a metadata request, else the reason."""
    try:
        await observability.kafka.ping()
    except KafkaUnavailable as error:
        return str(error)
    return None
