"""The JSON document behind the dashboard: lag, members, workers, funnels,
throughput and destination latency, read from Kafka and Redis in one go.

A source that cannot be read is reported in `sources` with its error, and the
parts it feeds are empty, so the page still shows what the other source has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from agents.stats import FUNNEL_STEPS
from agents.stats_flush import RATE_BUCKET_S
from app.dashboard.stats import (
    complete_buckets,
    histogram_quantile,
    read_funnels,
    read_latency_total,
    read_latency_window,
    read_throughput,
    read_workers,
)
from app.lag import GroupLag, KafkaUnavailable, LagReader
from app.models import CollectorRecord
from app.settings import Settings
from app.store import Store

logger = logging.getLogger(__name__)

THROUGHPUT_WINDOW_S = 15 * 60
REDIS_READ_TIMEOUT_S = 5.0
RECENT_WINDOW_S = 60


async def build_state(
    settings: Settings, store: Store, lag_reader: LagReader
) -> dict[str, Any]:
    now = time.time()
    state: dict[str, Any] = {
        "generated_at": now,
        "group": settings.consumer_group,
        "topics": {
            "input": settings.input_topic,
            "queue": settings.queue_topic,
            "retry": settings.retry_topic,
        },
        "sources": {},
    }
    reading = await _read_lag(lag_reader, state)
    state["lag"] = reading.to_dict() if reading else None
    try:
        async with asyncio.timeout(REDIS_READ_TIMEOUT_S):
            await _add_redis_parts(state, store, settings.consumer_group, now)
        state["sources"]["redis"] = {"ok": True}
    except (RedisError, OSError, TimeoutError) as error:
        logger.warning("dashboard: Redis read failed: %r", error)
        state["sources"]["redis"] = {"ok": False, "error": _describe(error)}
        state.update(collectors=[], workers=[], throughput=None, latency=None)
    _match_members_to_workers(state)
    return state


async def _read_lag(lag_reader: LagReader, state: dict[str, Any]) -> GroupLag | None:
    try:
        reading = await lag_reader.read()
    except KafkaUnavailable as error:
        state["sources"]["kafka"] = {"ok": False, "error": str(error)}
        return None
    state["sources"]["kafka"] = {"ok": True}
    return reading


async def _add_redis_parts(
    state: dict[str, Any], store: Store, group: str, now: float
) -> None:
    client = store.redis
    configured = await store.all_collector_keys()
    funnels = await read_funnels(client)
    records = await store.get_collectors_by_key(configured)
    by_key = {record.key: record for record in records if record is not None}
    keys = sorted(set(by_key) | set(funnels))
    state["collectors"] = [
        _collector_entry(key, by_key.get(key), funnels.get(key, {})) for key in keys
    ]
    state["workers"] = await read_workers(client, group, now)

    buckets = complete_buckets(now, THROUGHPUT_WINDOW_S)
    state["throughput"] = {
        "bucket_s": RATE_BUCKET_S,
        "starts": buckets,
        "series": await read_throughput(client, buckets),
    }
    recent = await read_latency_window(
        client, buckets[-RECENT_WINDOW_S // RATE_BUCKET_S :]
    )
    window = await read_latency_window(client, buckets)
    total = await read_latency_total(client)
    state["latency"] = {
        name: {
            "count": histogram.count,
            "p50_s": histogram_quantile(0.5, histogram),
            "p99_s": histogram_quantile(0.99, histogram),
            "mean_s": histogram.sum_s / histogram.count if histogram.count else None,
        }
        for name, histogram in (
            ("recent", recent),
            ("window", window),
            ("total", total),
        )
    }


def _collector_entry(
    key: str, record: CollectorRecord | None, counts: dict[str, int]
) -> dict[str, Any]:
    funnel = {step: counts.get(step, 0) for step in FUNNEL_STEPS}
    rules = {
        name.removeprefix("rule:"): value
        for name, value in counts.items()
        if name.startswith("rule:")
    }
    entry: dict[str, Any] = {"key": key, "funnel": funnel, "rule_drops": rules}
    if record is None:
        entry.update(configured=False, active=False, config=None)
        return entry
    entry.update(
        configured=True,
        active=record.active,
        config={
            "description": record.description,
            "model": f"{record.model_user_id}/{record.model_app_id}/{record.model_id}",
            "model_version_id": record.model_version_id,
            "caller_user_id": record.caller_user_id,
            "pre_queue_random_sample": record.pre_queue_random_sample,
            "pre_queue_workflow_id": record.pre_queue_workflow_id,
            "post_queue_workflow_id": record.post_queue_workflow_id,
            "collect_outputs": record.collect_outputs,
            "sample_key": record.sample_key,
            "collect_failed_predictions": record.collect_failed_predictions,
        },
    )
    return entry


def _match_members_to_workers(state: dict[str, Any]) -> None:
    """Name the worker behind each group member when exactly one live worker
    reports the member's partitions, because Kafka reports only client ids."""
    lag = state.get("lag")
    workers = state.get("workers") or []
    if not lag:
        return
    topics = set(state["topics"].values())
    for member in lag["members"]:
        expected = {
            topic: sorted(partitions)
            for topic, partitions in member["assignment"].items()
            if topic in topics and partitions
        }
        matches = [
            worker
            for worker in workers
            if {t: sorted(p) for t, p in worker.get("partitions", {}).items() if p}
            == expected
        ]
        member["worker"] = matches[0]["id"] if expected and len(matches) == 1 else None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
