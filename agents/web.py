"""Health and metrics views on the worker's web port.

`/healthz` (liveness) returns 503 when a partition of this worker has stalled:
records waited for COLLECTORS_STALL_AFTER_S while its committed offset did not
move. A stall while Kafka itself is unreachable does not count, so that an
outage does not make every worker restart. `/readyz` returns 503 until the
configuration is loaded and while Redis or Kafka cannot be reached. A 503 has a
JSON body with the reason.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from agents.stats import WorkerStats
from agents.stats_flush import WorkerObservability, kafka_reachable
from app.config_cache import ConfigCache
from app.metrics import worker_registry

# aiohttp rejects a charset inside content_type (prometheus_client's
# CONTENT_TYPE_LATEST has one), and the text format is UTF-8 by definition.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"


def add_web_views(app: faust.App, cache: ConfigCache, stats: WorkerStats) -> None:
    observability: WorkerObservability = app.conf.collectors_observability
    registry = worker_registry(stats, cache, observability)

    @app.page("/healthz")
    class Liveness(View):
        async def get(self, request: Request) -> Response:
            return await liveness(self, observability)

    @app.page("/readyz")
    class Readiness(View):
        async def get(self, request: Request) -> Response:
            return await readiness(self, cache, observability)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(
                generate_latest(registry), content_type=METRICS_CONTENT_TYPE
            )


async def liveness(view: View, observability: WorkerObservability) -> Response:
    stalled = observability.stall.stalled
    body: dict[str, Any] = {"status": "ok"}
    if stalled and await kafka_reachable(observability) is None:
        partitions = [f"{p.topic}/{p.partition}" for p in stalled]
        body = {
            "status": "stalled",
            "reason": (
                f"committed offsets of {', '.join(partitions)} have not moved for "
                f"{observability.settings.stall_after_s:.0f} s or more while "
                "records were waiting"
            ),
            "stalled": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "committed": p.committed,
                    "highwater": p.highwater,
                    "lag": p.lag,
                }
                for p in stalled
            ],
        }
        return view.json(body, status=503)
    return view.json(body)


async def readiness(
    view: View, cache: ConfigCache, observability: WorkerObservability
) -> Response:
    flusher = observability.flusher
    if cache.stale_since is not None:
        redis_check = "Redis is unreachable: the configuration cannot be refreshed"
    elif flusher.last_error is not None:
        redis_check = f"Redis is unreachable: {flusher.last_error}"
    else:
        redis_check = "ok"
    checks = {
        "config": "ok" if cache.ready else "the configuration is not loaded yet",
        "redis": redis_check,
        "kafka": await kafka_reachable(observability) or "ok",
    }
    failed = {name: reason for name, reason in checks.items() if reason != "ok"}
    body: dict[str, Any] = {
        "ready": not failed,
        "checks": checks,
        "config_stale": cache.stale_since is not None,
    }
    if failed:
        body["reason"] = "; ".join(
            f"{name}: {reason}" for name, reason in failed.items()
        )
    return view.json(body, status=503 if failed else 200)
