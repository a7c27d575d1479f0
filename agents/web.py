"""Health and metrics views on the worker's web port."""

from __future__ import annotations

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.stats import WorkerStats
from app.config_cache import ConfigCache
from app.metrics import worker_registry


def add_web_views(app: faust.App, cache: ConfigCache, stats: WorkerStats) -> None:
    registry = worker_registry(stats, cache)

    @app.page("/healthz")
    class Liveness(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Readiness(View):
        async def get(self, request: Request) -> Response:
            ready = cache.ready
            body = {
                "ready": ready,
                "config_stale": cache.stale_since is not None,
            }
            return self.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(
                generate_latest(registry), content_type=CONTENT_TYPE_LATEST
            )
