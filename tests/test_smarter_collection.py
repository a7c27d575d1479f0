"""Sticky sampling, quotas, dedupe and failed predictions, on a real worker."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.topics import ensure_topics
from app.models import Workflow
from app.store import Store, connect
from tests.conftest import KAFKA, free_port
from tests.harness import (
    WorkerProcess,
    event,
    expected_input_id,
    group_caught_up,
    output,
    put_collector,
    serve_destination,
    settings_for,
    wait_for,
    worker_environment,
)
from tests.test_pipeline import publish

OWNER, APP = "owner", "dataset"
MODEL = ("owner", "models", "classifier")


@pytest.fixture
def setup(
    tmp_path: Path, redis_url: str, unique_name: str
) -> Iterator[tuple[Any, Any, Any]]:
    with serve_destination() as destination:
        environment = worker_environment(
            unique_name, redis_url, destination.url, free_port()
        )
        asyncio.run(ensure_topics(settings_for(environment)))
        workers: list[WorkerProcess] = []

        def start_worker() -> WorkerProcess:
            env = {**environment, "COLLECTORS_WORKER_WEB_PORT": str(free_port())}
            worker = WorkerProcess(env, tmp_path / f"worker-{len(workers)}.log").start()
            workers.append(worker)
            return worker

        yield environment, destination, start_worker
        for worker in workers:
            worker.stop()


async def put_workflow(
    redis_url: str, workflow_id: str, nodes: list[dict[str, Any]]
) -> None:
    store = Store(connect(redis_url))
    await store.create_workflows(
        OWNER, APP, [Workflow.model_validate({"id": workflow_id, "nodes": nodes})]
    )
    await store.close()


def node(node_id: str, model_type_id: str, **params: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "model": {
            "id": node_id,
            "model_type_id": model_type_id,
            "output_info": {"params": params},
        },
    }


async def collector(redis_url: str, collector_id: str, **fields: Any) -> str:
    record = await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id=collector_id,
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        **fields,
    )
    return record.key


async def wait_done(environment: dict[str, str]) -> None:
    group = environment["COLLECTORS_GROUP"]
    topics = [environment["COLLECTORS_INPUT_TOPIC"], f"{group}-queue"]

    async def done() -> bool:
        return await group_caught_up(KAFKA, group, topics)

    await wait_for(done, "every offset committed")


async def test_quota_never_exceeded_across_two_workers(setup, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, start_worker = setup
    await put_workflow(
        redis_url, "five", [node("quota", "quota", max_inputs=5, window="hour")]
    )
    await collector(
        redis_url, "limited", pre_queue_random_sample=1.0, post_queue_workflow_id="five"
    )
    start_worker()
    start_worker()
    await publish(
        environment,
        [(f"e{n}".encode(), event(f"e{n}", [output(f"in-{n}")])) for n in range(40)],
    )
    await wait_done(environment)
    assert len(destination.snapshot()) == 5


async def test_quota_per_concept_balances_classes(setup, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, start_worker = setup
    await put_workflow(
        redis_url,
        "two-each",
        [node("quota", "quota", max_inputs=2, window="day", per_concept=True)],
    )
    await collector(
        redis_url,
        "balanced",
        pre_queue_random_sample=1.0,
        post_queue_workflow_id="two-each",
    )
    start_worker()
    labels = ["cat"] * 6 + ["dog"] * 5 + ["bird"] * 1
    events = [
        (
            f"e{n}".encode(),
            event(
                f"e{n}", [output(f"in-{n}", concepts=[(label, 0.9), ("other", 0.1)])]
            ),
        )
        for n, label in enumerate(labels)
    ]
    await publish(environment, events)
    await wait_done(environment)
    collected = destination.snapshot()
    assert len(collected) == 5  # 2 cats, 2 dogs, 1 bird


async def test_dedupe_by_url_collects_each_image_once(setup, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, start_worker = setup
    await put_workflow(
        redis_url, "unique", [node("dd", "dedupe", by="url", window_s=3600)]
    )
    key = await collector(
        redis_url,
        "unique",
        pre_queue_random_sample=1.0,
        post_queue_workflow_id="unique",
    )
    start_worker()
    events = []
    for n in range(12):
        item = output(f"in-{n}")
        item["input"]["data"]["image"]["url"] = f"https://images.example/{n % 4}.jpg"
        events.append((f"e{n}".encode(), event(f"e{n}", [item])))
    await publish(environment, events)
    await wait_done(environment)
    collected = destination.snapshot()
    assert len(collected) == 4
    assert {item["data"]["image"]["url"] for item in collected.values()} == {
        f"https://images.example/{n}.jpg" for n in range(4)
    }
    assert all(
        i in {expected_input_id(key, f"e{n}", f"in-{n}") for n in range(12)}
        for i in collected
    )


async def test_sample_key_keeps_camera_together(setup, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, start_worker = setup
    key = await collector(
        redis_url, "sticky", pre_queue_random_sample=0.5, sample_key="camera"
    )
    start_worker()
    cameras = [f"cam-{c}" for c in range(10)]
    events = []
    expected = set()
    for n in range(60):
        camera = cameras[n % len(cameras)]
        events.append(
            (
                f"e{n}".encode(),
                event(f"e{n}", [output(f"in-{n}", metadata={"camera": camera})]),
            )
        )
        digest = hashlib.sha256(f"{key}/{camera}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < 0.5:
            expected.add(expected_input_id(key, f"e{n}", f"in-{n}"))
    await publish(environment, events)
    await wait_done(environment)
    assert set(destination.snapshot()) == expected


async def test_failed_predictions_collected_when_asked(setup, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, start_worker = setup
    failed_key = await collector(
        redis_url,
        "failures",
        pre_queue_random_sample=1.0,
        collect_failed_predictions=True,
    )
    normal_key = await collector(redis_url, "normal", pre_queue_random_sample=1.0)
    start_worker()
    events = [
        (b"e1", event("e1", [output("ok-1"), output("bad-1", status_code=21303)])),
    ]
    await publish(environment, events)
    await wait_done(environment)
    assert set(destination.snapshot()) == {
        expected_input_id(failed_key, "e1", "ok-1"),
        expected_input_id(failed_key, "e1", "bad-1"),
        expected_input_id(normal_key, "e1", "ok-1"),
    }
