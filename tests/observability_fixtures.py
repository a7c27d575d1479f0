"""A small observed deployment for the dashboard and observability tests: a worker
subprocess that has processed known events, the API in a background thread, and
the numbers those events must produce (computed here from the documented rules).

Test modules load it with `pytest_plugins = ("tests.observability_fixtures",)`.
The deployment is module-scoped. Its Redis database comes from the same rotation
as the `redis_url` fixture, and modules run one after another, so no other test
flushes it while it runs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from agents.topics import ensure_topics
from app.api.server import RunningApi, serving_in_thread
from app.models import Workflow
from app.produce import EventPublisher
from app.settings import Settings
from app.store import Store, connect
from tests.conftest import (
    KAFKA,
    REDIS_BASE_URL,
    WORKER_DATABASES,
    _next_database,
    free_port,
)
from tests.harness import (
    WorkerProcess,
    event,
    expected_sample,
    group_caught_up,
    output,
    put_collector,
    serve_destination,
    settings_for,
    wait_for,
    worker_environment,
)

OWNER = "owner"
APP = "dataset"
MODEL = ("owner", "models", "classifier")
EVENT_COUNT = 20
COLLECTOR_IDS = ("everything", "half", "uncertain")


@dataclass
class Deployment:
    name: str
    environment: dict[str, str]
    settings: Settings
    redis_url: str
    worker: WorkerProcess
    api: RunningApi
    # Collector key -> funnel step -> expected count.
    funnels: dict[str, dict[str, int]]
    events_in: int
    outputs_in: int
    dead_lettered: int

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.environment['COLLECTORS_WORKER_WEB_PORT']}"

    def total(self, step: str) -> int:
        return sum(steps.get(step, 0) for steps in self.funnels.values())


def _uncertain_workflow() -> Workflow:
    return Workflow.model_validate(
        {
            "id": "uncertain",
            "nodes": [
                {
                    "id": "below-0-6",
                    "model": {
                        "id": "below-0-6",
                        "model_type_id": "max-probability-below",
                        "output_info": {"params": {"threshold": 0.6}},
                    },
                }
            ],
        }
    )


def _input_ids() -> list[str]:
    return [f"in-{index:02d}" for index in range(EVENT_COUNT)]


def _score(index: int) -> float:
    return 0.3 if index % 2 else 0.9


def expected_funnels() -> dict[str, dict[str, int]]:
    half_key = f"{OWNER}/{APP}/half"
    kept = sum(expected_sample(half_key, i, 0.5) for i in _input_ids())
    uncertain = sum(1 for index in range(EVENT_COUNT) if _score(index) < 0.6)
    return {
        f"{OWNER}/{APP}/everything": {
            "matched": EVENT_COUNT,
            "enqueued": EVENT_COUNT,
            "posted": EVENT_COUNT,
        },
        half_key: {
            "matched": EVENT_COUNT,
            "dropped_random_sample": EVENT_COUNT - kept,
            "enqueued": kept,
            "posted": kept,
        },
        f"{OWNER}/{APP}/uncertain": {
            "matched": EVENT_COUNT,
            "dropped_pre_queue": EVENT_COUNT - uncertain,
            "enqueued": uncertain,
            "posted": uncertain,
        },
    }


async def _configure(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, protocol=2)
    await client.flushdb()
    await client.aclose()
    store = Store(connect(redis_url))
    await store.create_workflows(OWNER, APP, [_uncertain_workflow()])
    await store.close()
    source = {
        "model_user_id": MODEL[0],
        "model_app_id": MODEL[1],
        "model_id": MODEL[2],
    }
    await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="everything",
        pre_queue_random_sample=1.0,
        **source,
    )
    await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="half",
        pre_queue_random_sample=0.5,
        **source,
    )
    await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="uncertain",
        pre_queue_workflow_id="uncertain",
        **source,
    )


async def _publish(settings: Settings) -> None:
    messages: list[tuple[bytes | None, bytes | None]] = [
        (
            f"ev-{index}".encode(),
            event(
                f"ev-{index}",
                [output(input_id, model=MODEL, concepts=[("cat", _score(index))])],
            ),
        )
        for index, input_id in enumerate(_input_ids())
    ]
    messages.append((b"broken", b"this is not JSON"))
    async with EventPublisher(settings) as publisher:
        await publisher.publish_many_raw(messages)


async def _wait_processed(deployment: Deployment) -> None:
    group = deployment.name
    topics = [deployment.settings.input_topic, deployment.settings.queue_topic]
    client = redis.Redis.from_url(
        deployment.redis_url, protocol=2, decode_responses=True
    )

    async def done() -> bool:
        process = deployment.worker.process
        assert process is not None and process.poll() is None, (
            deployment.worker.log_text()[-3000:]
        )
        if not await group_caught_up(KAFKA, group, topics):
            return False
        for key, steps in deployment.funnels.items():
            stored = await client.hgetall(f"col:stats:funnel:{key}")
            if int(stored.get("posted", 0)) != steps["posted"]:
                return False
        return True

    try:
        await wait_for(done, "the worker to process and flush every event")
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
async def deployment(
    services: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    name = f"obs{os.urandom(5).hex()}"
    database = WORKER_DATABASES[next(_next_database) % len(WORKER_DATABASES)]
    redis_url = f"{REDIS_BASE_URL}/{database}"
    log_path = Path(tmp_path_factory.mktemp(name)) / "worker.log"
    with serve_destination() as destination:
        environment = worker_environment(
            name,
            redis_url,
            destination.url,
            free_port(),
            COLLECTORS_SUMMARY_INTERVAL_S="1",
            COLLECTORS_STATS_FLUSH_INTERVAL_S="1",
        )
        settings = settings_for(environment)
        await ensure_topics(settings)
        await _configure(redis_url)
        worker = WorkerProcess(environment, log_path).start()
        api_settings = settings.model_copy(update={"http_port": 0, "grpc_port": 0})
        try:
            with serving_in_thread(api_settings) as api:
                await _publish(settings)
                deployed = Deployment(
                    name=name,
                    environment=environment,
                    settings=settings,
                    redis_url=redis_url,
                    worker=worker,
                    api=api,
                    funnels=expected_funnels(),
                    events_in=EVENT_COUNT + 1,
                    outputs_in=EVENT_COUNT,
                    dead_lettered=1,
                )
                await _wait_processed(deployed)
                yield deployed
        finally:
            await asyncio.to_thread(worker.stop)


def funnel_subset(stored: dict[str, Any], expected: dict[str, int]) -> dict[str, int]:
    """Return the stored counts of the steps in `expected`, as integers."""
    return {step: int(stored.get(step, 0)) for step in expected}
