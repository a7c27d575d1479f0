"""Prometheus metrics of the worker and of the API, built at scrape time.

Worker (`/metrics` on its web port): this process's counters from
agents/stats.py, its destination latency histogram, configuration staleness, the
partitions assigned to it and their lag.

API (`/metrics` on the REST port): the consumer group as a whole. Kafka gives the
lag per topic and partition (cached for a moment by `LagReader`). The statistics
that workers flush to Redis give each collector's funnel, the destination latency
and the live workers. The API adds its own request counters and latencies.
Group metrics are named `collectors_group_*`, so that summing a worker metric
over the workers never mixes with them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from agents.stats import WorkerStats
from agents.stats_flush import (
    LATENCY_BOUNDS_S,
    LatencyHistogram,
    WorkerObservability,
)
from app.config_cache import ConfigCache
from app.dashboard.stats import read_funnels, read_latency_total, read_workers
from app.lag import KafkaUnavailable, LagReader

FUNNEL_LABELS = ["user_id", "app_id", "collector_id", "step"]
# How long a scrape waits for the statistics in Redis before it reports Redis down.
REDIS_READ_TIMEOUT_S = 5.0
# Buckets of the API request duration histogram, in seconds.
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _collector_labels(collector_key: str) -> list[str]:
    parts = collector_key.split("/", 2)
    return parts + [""] * (3 - len(parts))


def _latency_family(
    name: str, documentation: str, histogram: LatencyHistogram
) -> Metric:
    family = HistogramMetricFamily(name, documentation)
    cumulative = 0
    buckets = []
    for index, count in enumerate(histogram.counts):
        cumulative += count
        bound = (
            "+Inf" if index == len(LATENCY_BOUNDS_S) else repr(LATENCY_BOUNDS_S[index])
        )
        buckets.append((bound, cumulative))
    family.add_metric([], buckets, sum_value=histogram.sum_s)
    return family


def _funnel_family(
    name: str, documentation: str, funnels: Iterable[tuple[str, dict[str, int]]]
) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=FUNNEL_LABELS)
    for collector_key, steps in funnels:
        for step, value in sorted(steps.items()):
            if not step.startswith("rule:"):
                family.add_metric([*_collector_labels(collector_key), step], value)
    return family


# --- worker ------------------------------------------------------------------------


class WorkerMetrics(Collector):
    def __init__(
        self,
        stats: WorkerStats,
        cache: ConfigCache,
        observability: WorkerObservability | None = None,
    ) -> None:
        self.stats = stats
        self.cache = cache
        self.observability = observability

    def collect(self) -> Iterator[Metric]:
        totals = CounterMetricFamily(
            "collectors_worker_events",
            "Events, outputs and queue messages seen by this worker, by result",
            labels=["result"],
        )
        for name, value in sorted(self.stats.totals.items()):
            totals.add_metric([name], value)
        yield totals
        yield _funnel_family(
            "collectors_funnel",
            "Inputs at each step of a collector's funnel in this worker",
            sorted(self.stats.funnel.items()),
        )
        yield from self._config()
        if self.observability is not None:
            yield from self._observability(self.observability)

    def _config(self) -> Iterator[Metric]:
        stale_since = self.cache.stale_since
        yield GaugeMetricFamily(
            "collectors_config_stale",
            "1 while the worker runs on configuration it cannot refresh",
            value=1 if stale_since is not None else 0,
        )
        yield GaugeMetricFamily(
            "collectors_config_stale_seconds",
            "How long the configuration has not been refreshable (0 when current)",
            value=0.0 if stale_since is None else time.monotonic() - stale_since,
        )
        yield GaugeMetricFamily(
            "collectors_config_collectors",
            "Collectors in the worker's configuration",
            value=len(self.cache.snapshot.by_key),
        )

    def _observability(self, observability: WorkerObservability) -> Iterator[Metric]:
        observability.latency.absorb()
        yield _latency_family(
            "collectors_worker_destination_latency_seconds",
            "Duration of this worker's POST /inputs calls to the destination, "
            "retries included",
            observability.latency.total,
        )
        assigned = GaugeMetricFamily(
            "collectors_worker_assigned_partitions",
            "Partitions assigned to this worker, by topic",
            labels=["topic"],
        )
        lag = GaugeMetricFamily(
            "collectors_worker_lag",
            "Records not yet consumed in a partition assigned to this worker",
            labels=["topic", "partition"],
        )
        counts: dict[str, int] = {}
        for item in observability.lag.positions:
            counts[item.topic] = counts.get(item.topic, 0) + 1
            lag.add_metric([item.topic, str(item.partition)], item.lag)
        for topic in sorted(observability.lag.topics):
            assigned.add_metric([topic], counts.get(topic, 0))
        yield assigned
        yield lag
        yield GaugeMetricFamily(
            "collectors_worker_stalled_partitions",
            "Assigned partitions whose committed offset has not moved for "
            "COLLECTORS_STALL_AFTER_S while records were waiting",
            value=len(observability.stall.stalled),
        )
        yield CounterMetricFamily(
            "collectors_worker_stats_flush_failures",
            "Failed flushes of this worker's statistics to Redis",
            value=observability.flusher.failures,
        )


def worker_registry(
    stats: WorkerStats,
    cache: ConfigCache,
    observability: WorkerObservability | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(WorkerMetrics(stats, cache, observability))
    return registry


# --- API ---------------------------------------------------------------------------


class _Families(Collector):
    """Metric families read before the scrape (the reads are async)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class RequestMetrics:
    """Counters and durations of the API's HTTP requests. Route labels are path
    templates, so ids in paths do not multiply the series."""

    def __init__(self) -> None:
        self.requests = Counter(
            "collectors_api_requests",
            "HTTP requests served by the API",
            ["method", "route", "status"],
            registry=None,
        )
        self.duration = Histogram(
            "collectors_api_request_duration_seconds",
            "Time to serve an HTTP request of the API",
            ["method", "route"],
            buckets=REQUEST_BUCKETS_S,
            registry=None,
        )

    def observe(self, method: str, route: str, status: int, duration_s: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(duration_s)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class RequestMetricsMiddleware:
    """ASGI middleware that records every HTTP request in `RequestMetrics`."""

    def __init__(self, app: Any, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe(
                scope["method"],
                _route_label(scope),
                status,
                time.perf_counter() - started,
            )


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    if str(scope.get("path", "")).startswith("/dashboard/static/"):
        return "/dashboard/static"
    return "unmatched"


async def api_metrics(
    lag_reader: LagReader, redis: Any, group: str, request_metrics: RequestMetrics
) -> bytes:
    """Read the group's state and return the exposition text of the API's /metrics."""
    families = [
        *await _kafka_families(lag_reader),
        *await _redis_families(redis, group),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(request_metrics.requests)
    registry.register(request_metrics.duration)
    registry.register(_Families(families))
    return generate_latest(registry)


async def _kafka_families(lag_reader: LagReader) -> list[Metric]:
    try:
        reading = await lag_reader.read()
    except KafkaUnavailable:
        return [
            GaugeMetricFamily(
                "collectors_kafka_up",
                "1 when the lag reading from Kafka succeeded",
                value=0,
            )
        ]
    lag = GaugeMetricFamily(
        "collectors_group_lag",
        "Records of a partition not yet consumed by the consumer group",
        labels=["topic", "partition"],
    )
    for item in reading.partitions:
        lag.add_metric([item.topic, str(item.partition)], item.lag)
    return [
        GaugeMetricFamily(
            "collectors_kafka_up",
            "1 when the lag reading from Kafka succeeded",
            value=1,
        ),
        lag,
        GaugeMetricFamily(
            "collectors_group_members",
            "Members of the consumer group",
            value=len(reading.members),
        ),
    ]


async def _redis_families(redis: Any, group: str) -> list[Metric]:
    try:
        async with asyncio.timeout(REDIS_READ_TIMEOUT_S):
            funnels = await read_funnels(redis)
            latency = await read_latency_total(redis)
            workers = await read_workers(redis, group)
    except (RedisError, OSError, TimeoutError):
        return [
            GaugeMetricFamily(
                "collectors_redis_up",
                "1 when the statistics reads from Redis succeeded",
                value=0,
            )
        ]
    return [
        GaugeMetricFamily(
            "collectors_redis_up",
            "1 when the statistics reads from Redis succeeded",
            value=1,
        ),
        _funnel_family(
            "collectors_group_funnel",
            "Inputs at each step of a collector's funnel, over all workers",
            sorted(funnels.items()),
        ),
        _latency_family(
            "collectors_group_destination_latency_seconds",
            "Duration of the workers' POST /inputs calls to the destination, "
            "retries included",
            latency,
        ),
        GaugeMetricFamily(
            "collectors_group_workers",
            "Workers of the group that flushed statistics recently",
            value=len(workers),
        ),
    ]
