"""The API's routes for operators: liveness, readiness, /metrics and the dashboard.

`/healthz` returns 200 while the process serves requests. `/readyz` returns 503
with a JSON reason while Redis or Kafka cannot be reached. `/metrics` and the
dashboard share one `LagReader`, so a scrape and the page's polling cost one set of
Kafka requests per cache period. None of these routes asks for an API key.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from redis.exceptions import RedisError

from app.api.context import Services
from app.dashboard.routes import add_dashboard_routes
from app.lag import KafkaUnavailable, LagReader
from app.metrics import RequestMetrics, RequestMetricsMiddleware, api_metrics

REDIS_PING_TIMEOUT_S = 2.0


def mount_operator_routes(app: FastAPI, services: Services) -> None:
    settings = services.settings
    lag_reader = LagReader(
        settings.kafka_bootstrap_servers,
        settings.consumer_group,
        (settings.input_topic, settings.queue_topic, settings.retry_topic),
        cache_s=2.0,
        timeout_s=3.0,
    )
    request_metrics = RequestMetrics()
    app.add_middleware(RequestMetricsMiddleware, metrics=request_metrics)
    app.router.add_event_handler("shutdown", lag_reader.aclose)

    async def liveness() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readiness() -> JSONResponse:
        checks = {
            "redis": await _check_redis(services),
            "kafka": await _check_kafka(lag_reader),
        }
        failed = {name: reason for name, reason in checks.items() if reason != "ok"}
        body: dict[str, object] = {"ready": not failed, "checks": checks}
        if failed:
            body["reason"] = "; ".join(
                f"{name}: {reason}" for name, reason in failed.items()
            )
        return JSONResponse(body, status_code=503 if failed else 200)

    async def metrics() -> Response:
        text = await api_metrics(
            lag_reader, services.store.redis, settings.consumer_group, request_metrics
        )
        return Response(text, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    for path, endpoint in (
        ("/healthz", liveness),
        ("/readyz", readiness),
        ("/metrics", metrics),
    ):
        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)
    add_dashboard_routes(app, services, lag_reader)


async def _check_redis(services: Services) -> str:
    try:
        await asyncio.wait_for(services.store.redis.ping(), REDIS_PING_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError) as error:
        detail = str(error) or type(error).__name__
        return f"Redis is unreachable: {detail}"
    return "ok"


async def _check_kafka(lag_reader: LagReader) -> str:
    try:
        await lag_reader.ping()
    except KafkaUnavailable as error:
        return str(error)
    return "ok"
