"""Liveness and readiness: the API with Kafka or Redis unreachable, a worker without
Redis, and a worker whose deliveries stall."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agents.topics import ensure_topics
from app.api.server import serving
from app.produce import EventPublisher
from tests.conftest import KAFKA, free_port
from tests.harness import (
    JsonHandler,
    WorkerProcess,
    event,
    output,
    put_collector,
    serve_http,
    settings_for,
    wait_for,
    worker_environment,
)

MODEL = ("owner", "models", "classifier")


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(url)


# --- API ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kafka_up", "redis_up"),
    [(False, False), (False, True), (True, False)],
    ids=["both-down", "kafka-down", "redis-down"],
)
async def test_api_readiness_with_unreachable_dependency(
    redis_url: str, unique_name: str, kafka_up: bool, redis_up: bool
) -> None:
    environment = worker_environment(
        unique_name,
        redis_url if redis_up else f"redis://127.0.0.1:{free_port()}/0",
        "http://127.0.0.1:9",
        free_port(),
        KAFKA_BOOTSTRAP_SERVERS=KAFKA if kafka_up else f"127.0.0.1:{free_port()}",
        COLLECTORS_HTTP_PORT="0",
        COLLECTORS_GRPC_PORT="0",
    )
    async with serving(settings_for(environment)) as api:
        live = await get(f"{api.base_url}/healthz")
        ready = await get(f"{api.base_url}/readyz")
        state = await get(f"{api.base_url}/dashboard/api/state")
        metrics = await get(f"{api.base_url}/metrics")

    assert live.status_code == 200
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False
    checks = body["checks"]
    assert (checks["kafka"] == "ok") is kafka_up, checks
    assert (checks["redis"] == "ok") is redis_up, checks
    if not kafka_up:
        assert "Kafka at 127.0.0.1:" in checks["kafka"]
        assert "kafka: Kafka at" in body["reason"]
    if not redis_up:
        assert checks["redis"].startswith("Redis is unreachable")
        assert "redis: Redis is unreachable" in body["reason"]

    # The dashboard and /metrics still answer, and say what they cannot read.
    assert state.status_code == 200
    sources = state.json()["sources"]
    assert sources["kafka"]["ok"] is kafka_up
    assert sources["redis"]["ok"] is redis_up
    assert metrics.status_code == 200
    assert f"collectors_kafka_up {float(kafka_up)}" in metrics.text
    assert f"collectors_redis_up {float(redis_up)}" in metrics.text


# --- worker readiness -----------------------------------------------------------------


async def test_worker_not_ready_without_redis(tmp_path: Path, unique_name: str) -> None:
    environment = worker_environment(
        unique_name,
        f"redis://127.0.0.1:{free_port()}/0",
        "http://127.0.0.1:9",
        free_port(),
        COLLECTORS_STATS_FLUSH_INTERVAL_S="0.5",
    )
    await ensure_topics(settings_for(environment))
    worker = WorkerProcess(environment, tmp_path / "worker.log").start()
    web_url = f"http://127.0.0.1:{environment['COLLECTORS_WORKER_WEB_PORT']}"
    responses: dict[str, httpx.Response] = {}

    async def answered() -> bool:
        assert worker.process is not None and worker.process.poll() is None, (
            worker.log_text()[-3000:]
        )
        try:
            responses["ready"] = await get(f"{web_url}/readyz")
            responses["live"] = await get(f"{web_url}/healthz")
        except httpx.TransportError:
            return False
        return "redis" in responses["ready"].json().get("reason", "")

    try:
        await wait_for(answered, "the worker's web server to report Redis", 60)
    finally:
        worker.stop()
    ready = responses["ready"]
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False
    assert body["checks"]["config"] == "the configuration is not loaded yet"
    assert body["checks"]["redis"].startswith("Redis is unreachable")
    assert body["checks"]["kafka"] == "ok"
    assert responses["live"].status_code == 200
    # Failed flushes are logged at most once a minute, not once per flush.
    assert worker.log_text().count("cannot flush statistics to Redis") == 1


# --- stall detection ------------------------------------------------------------------


@dataclass
class GatedDestination:
    """A POST /inputs endpoint that holds every request until `gate` is set."""

    gate: threading.Event = field(default_factory=threading.Event)
    received: int = 0
    url: str = ""


@contextmanager
def serve_gated_destination() -> Iterator[GatedDestination]:
    destination = GatedDestination()

    class Handler(JsonHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            destination.received += 1
            destination.gate.wait(60)
            self.send_json(200, {"status": {"code": 10000}, "inputs": body["inputs"]})

    with serve_http(Handler) as url:
        destination.url = url
        try:
            yield destination
        finally:
            # Held POSTs return at once, so that the server can shut down.
            destination.gate.set()


async def test_worker_stall_fails_liveness(
    tmp_path: Path, redis_url: str, unique_name: str
) -> None:
    with serve_gated_destination() as destination:
        environment = worker_environment(
            unique_name,
            redis_url,
            destination.url,
            free_port(),
            COLLECTORS_STALL_AFTER_S="2",
            COLLECTORS_STATS_FLUSH_INTERVAL_S="0.5",
            COLLECTORS_DESTINATION_TIMEOUT_S="60",
            COLLECTORS_DESTINATION_INLINE_RETRY_S="60",
        )
        settings = settings_for(environment)
        await ensure_topics(settings)
        await put_collector(
            redis_url,
            user_id="owner",
            app_id="dataset",
            id="all",
            model_user_id=MODEL[0],
            model_app_id=MODEL[1],
            model_id=MODEL[2],
            pre_queue_random_sample=1.0,
        )
        worker = WorkerProcess(environment, tmp_path / "worker.log").start()
        web_url = f"http://127.0.0.1:{environment['COLLECTORS_WORKER_WEB_PORT']}"
        live: dict[str, httpx.Response] = {}
        published = 0

        async def publish_one() -> None:
            nonlocal published
            published += 1
            value = event(f"ev-{published}", [output(f"in-{published}", model=MODEL)])
            async with EventPublisher(settings) as publisher:
                await publisher.publish_raw(f"ev-{published}".encode(), value)

        async def liveness_is(status: int) -> bool:
            assert worker.process is not None and worker.process.poll() is None, (
                worker.log_text()[-3000:]
            )
            try:
                live["response"] = await get(f"{web_url}/healthz")
            except httpx.TransportError:
                return False
            return live["response"].status_code == status

        try:
            await wait_for(
                lambda: liveness_is(200), "the worker to answer /healthz", 60
            )
            await publish_one()

            async def stalled() -> bool:
                # Keep the queue's lag growing while the delivery hangs.
                if destination.received:
                    await publish_one()
                return await liveness_is(503)

            await wait_for(stalled, "/healthz to report the stall", 60)
            body = live["response"].json()
            assert body["status"] == "stalled"
            assert "have not moved for 2 s" in body["reason"]
            stalled_topics = {item["topic"] for item in body["stalled"]}
            assert stalled_topics == {settings.queue_topic}
            assert all(item["lag"] >= 1 for item in body["stalled"])

            destination.gate.set()
            await wait_for(lambda: liveness_is(200), "/healthz to recover", 60)
            assert live["response"].json() == {"status": "ok"}
        finally:
            destination.gate.set()
            worker.stop()
