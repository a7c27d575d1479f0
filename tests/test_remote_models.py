"""Workflows whose nodes are models served over HTTP, run by a real worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.topics import ensure_topics
from app.models import Workflow
from app.security import SecretBox
from app.store import Store, connect
from tests.conftest import KAFKA, free_port
from tests.harness import (
    TEST_SECRET,
    WorkerProcess,
    event,
    expected_input_id,
    group_caught_up,
    model_score,
    output,
    put_collector,
    read_topic,
    serve_destination,
    serve_model,
    settings_for,
    wait_for,
    worker_environment,
)
from tests.test_pipeline import publish

OWNER, APP = "owner", "dataset"
MODEL = ("owner", "models", "classifier")


def remote_then_threshold(workflow_id: str, base_url: str) -> Workflow:
    """A remote model followed by a thresholder keeping concept `keep` above 0.5."""
    box = SecretBox(TEST_SECRET)
    return Workflow.model_validate(
        {
            "id": workflow_id,
            "nodes": [
                {
                    "id": "remote",
                    "model": {
                        "id": "scorer",
                        "user_id": "models-owner",
                        "app_id": "served",
                        "model_type_id": "visual-classifier",
                        "output_info": {
                            "params": {
                                "base_url": base_url,
                                "api_key_encrypted": box.encrypt("model-key"),
                            }
                        },
                    },
                },
                {
                    "id": "keep",
                    "model": {
                        "id": "keep-above",
                        "model_type_id": "concept-thresholder",
                        "output_info": {
                            "params": {"concept_threshold_type": 1},
                            "data": {"concepts": [{"id": "keep", "value": 0.5}]},
                        },
                    },
                    "node_inputs": [{"node_id": "remote"}],
                },
            ],
        }
    )


@pytest.fixture
def model_and_destination() -> Iterator[tuple[Any, Any]]:
    with serve_model() as model, serve_destination() as destination:
        yield model, destination


async def run_worker_until_done(
    tmp_path: Path,
    redis_url: str,
    name: str,
    destination: Any,
    allowlist: str,
    events: list[Any],
) -> WorkerProcess:
    environment = worker_environment(
        name,
        redis_url,
        destination.url,
        free_port(),
        COLLECTORS_MODEL_URL_ALLOWLIST=allowlist,
    )
    await ensure_topics(settings_for(environment))
    worker = WorkerProcess(environment, tmp_path / "worker.log").start()
    await publish(environment, events)

    async def done() -> bool:
        assert worker.process is not None and worker.process.poll() is None, (
            worker.log_text()
        )
        return await group_caught_up(
            KAFKA, name, [f"{name}-predictions", f"{name}-queue"]
        )

    await wait_for(done, "the worker to process every event")
    return worker


@pytest.mark.parametrize("stage", ["post_queue", "pre_queue"])
async def test_remote_model_node_decides_collection(
    tmp_path: Path,
    redis_url: str,
    unique_name: str,
    model_and_destination: Any,
    stage: str,
) -> None:
    model, destination = model_and_destination
    store = Store(connect(redis_url))
    await store.create_workflows(
        OWNER, APP, [remote_then_threshold("scored", model.url)]
    )
    await store.close()
    collector = await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="scored",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        **{f"{stage}_workflow_id": "scored"},
    )
    input_ids = [f"in-{n}" for n in range(10)]
    events = [(b"e1", event("e1", [output(i) for i in input_ids]))]

    worker = await run_worker_until_done(
        tmp_path, redis_url, unique_name, destination, model.url, events
    )
    worker.stop()

    expected = {
        expected_input_id(collector.key, "e1", i)
        for i in input_ids
        if model_score(i) > 0.5
    }
    assert set(destination.snapshot()) == expected
    assert len(model.authorizations) == len(input_ids)
    assert set(model.authorizations) == {"Key model-key"}
    assert set(model.paths) == {
        "/v2/users/models-owner/apps/served/models/scorer/outputs"
    }


async def test_remote_model_outside_allowlist_is_dead_lettered(
    tmp_path: Path, redis_url: str, unique_name: str, model_and_destination: Any
) -> None:
    model, destination = model_and_destination
    store = Store(connect(redis_url))
    await store.create_workflows(
        OWNER, APP, [remote_then_threshold("scored", model.url)]
    )
    await store.close()
    await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="scored",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        post_queue_workflow_id="scored",
    )
    events = [(b"e1", event("e1", [output("in-2")]))]

    worker = await run_worker_until_done(
        tmp_path, redis_url, unique_name, destination, "http://127.0.0.1:1", events
    )
    worker.stop()

    assert destination.snapshot() == {}
    assert model.authorizations == []
    dead = await read_topic(KAFKA, f"{unique_name}-predictions.dlq")
    assert len(dead) == 1
    headers = {name: value.decode() for name, value in dead[0].headers}
    assert headers["error_code"] == "COLLECTOR_MODEL_FAILED"
    assert "COLLECTORS_MODEL_URL_ALLOWLIST" in headers["error"]
    assert headers["collector"] == f"{OWNER}/{APP}/scored"
