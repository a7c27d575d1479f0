"""Preview of a collector over recent events of the predictions topic."""

from __future__ import annotations

import asyncio
import time

from agents.topics import ensure_topics
from app.config_cache import load_view
from app.models import COLLECTOR_INACTIVE, Workflow
from app.preview import preview, read_events
from app.security import SecretBox
from app.store import Store, connect
from tests.harness import (
    TEST_SECRET,
    event,
    expected_sample,
    output,
    put_collector,
    settings_for,
    worker_environment,
)
from tests.test_pipeline import publish

OWNER, APP = "owner", "dataset"
MODEL = ("owner", "models", "classifier")


async def test_preview_counts_each_step(redis_url: str, unique_name: str) -> None:
    environment = worker_environment(unique_name, redis_url, "http://127.0.0.1:1", 0)
    settings = settings_for(environment)
    await ensure_topics(settings)
    store = Store(connect(redis_url))
    workflow = {
        "id": "unsure",
        "nodes": [
            {
                "id": "below",
                "model": {
                    "id": "below",
                    "model_type_id": "max-probability-below",
                    "output_info": {"params": {"threshold": 0.5}},
                },
            }
        ],
    }
    await store.create_workflows(OWNER, APP, [Workflow.model_validate(workflow)])
    record = await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="preview",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=0.5,
        pre_queue_workflow_id="unsure",
        status_code=COLLECTOR_INACTIVE,
    )
    old = [
        (
            f"old{n}".encode(),
            event(f"old{n}", [output(f"old-{n}", concepts=[("a", 0.1)])]),
        )
        for n in range(10)
    ]
    await publish(environment, old)
    await asyncio.sleep(1.1)
    boundary_ms = int(time.time() * 1000)
    events = []
    expected_sampled = expected_kept = 0
    for n in range(40):
        top = (n % 10) / 10
        events.append(
            (
                f"e{n}".encode(),
                event(f"e{n}", [output(f"in-{n}", concepts=[("a", top)])]),
            )
        )
        if expected_sample(record.key, f"in-{n}", 0.5):
            expected_sampled += 1
            expected_kept += top < 0.5
    events.append((b"other", event("other", [output("x", ("someone", "else", "m"))])))
    events.append((b"bad", b"not json"))
    await publish(environment, events)

    view = await load_view(store, SecretBox(TEST_SECRET), OWNER, APP, "preview")
    await store.close()
    assert view is not None

    recent = await read_events(settings, start_ms=boundary_ms)
    assert len(recent) == 42
    report = await preview(view, recent, None, settings.max_event_bytes, examples=3)
    assert report["events"] == 42
    assert report["matched"] == 40
    assert report["invalid"] == 1
    assert report["dropped_random_sample"] == 40 - expected_sampled
    assert report["enqueued"] == expected_kept
    assert report["would_post"] == expected_kept
    assert len(report["examples"]) == min(3, expected_kept)

    last_five = await read_events(settings, last_n=5)
    assert len(last_five) == 5
    assert all(not (value or b"").startswith(b'{"id":"old') for _, value in last_five)
