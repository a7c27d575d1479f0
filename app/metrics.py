"""Prometheus metrics built at scrape time from the worker's plain counters."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agents.stats import WorkerStats
from app.config_cache import ConfigCache


class WorkerMetrics(Collector):
    def __init__(self, stats: WorkerStats, cache: ConfigCache) -> None:
        self.stats = stats
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        totals = CounterMetricFamily(
            "collectors_worker_events",
            "Events and outputs seen by stage one",
            labels=["result"],
        )
        for name, value in sorted(self.stats.totals.items()):
            totals.add_metric([name], value)
        yield totals

        funnel = CounterMetricFamily(
            "collectors_funnel",
            "Inputs at each step of a collector's funnel",
            labels=["collector", "step"],
        )
        for key, steps in sorted(self.stats.funnel.items()):
            for step, value in sorted(steps.items()):
                funnel.add_metric([key, step], value)
        yield funnel

        yield GaugeMetricFamily(
            "collectors_config_stale",
            "1 while the worker runs on configuration it cannot refresh",
            value=1 if self.cache.stale_since is not None else 0,
        )
        yield GaugeMetricFamily(
            "collectors_config_collectors",
            "Collectors in the worker's configuration",
            value=len(self.cache.snapshot.by_key),
        )


def worker_registry(stats: WorkerStats, cache: ConfigCache) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(WorkerMetrics(stats, cache))
    return registry
