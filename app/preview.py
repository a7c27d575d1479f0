"""Preview: replay recent prediction events through one collector without posting.

The events come from the `predictions` topic (the last N, or a time range) and go
through the same stage-one code as in the worker, then through the post-queue
workflow. Nothing is posted, no offset is committed, and quota and dedupe nodes are
reported but not applied, because applying them would use up the real quota.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from agents.delivery import Deliverer, RemoteModelCall
from agents.routing import Router, RouteResult
from agents.stats import WorkerStats
from app.config_cache import CollectorView, ConfigSnapshot
from app.destination import Destination
from app.models import COLLECTOR_ACTIVE
from app.remote_models import RemoteModelError
from app.settings import Settings

logger = logging.getLogger(__name__)

MAX_PREVIEW_EVENTS = 100_000
READ_TIMEOUT_S = 20.0


async def read_events(
    settings: Settings,
    last_n: int | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> list[tuple[int, bytes | None]]:
    """Return (timestamp_ms, value) of the last `last_n` events of the input topic,
    or of those between `start_ms` and `end_ms`, oldest first."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([settings.input_topic])
    finally:
        await admin.close()
    partitions = [
        TopicPartition(settings.input_topic, p["partition"])
        for p in description["partitions"]
    ]
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        max_partition_fetch_bytes=settings.max_message_bytes,
        fetch_max_bytes=settings.max_message_bytes,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        begin = await _start_offsets(
            consumer, partitions, starts, ends, last_n, start_ms
        )
        stop = dict(ends)
        if end_ms is not None:
            found = await consumer.offsets_for_times({tp: end_ms for tp in partitions})
            stop = {
                tp: (found[tp].offset if found[tp] else ends[tp]) for tp in partitions
            }
        for tp in partitions:
            consumer.seek(tp, begin[tp])
        events = await _read_until(consumer, begin, stop)
    finally:
        await consumer.stop()
    # Timestamp, then partition and offset, so that equal timestamps keep one order.
    events.sort(key=lambda item: item[:3])
    selected = events[-last_n:] if last_n is not None else events
    return [(timestamp, value) for timestamp, _, _, value in selected]


async def _start_offsets(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
    last_n: int | None,
    start_ms: int | None,
) -> dict[TopicPartition, int]:
    if start_ms is not None:
        found = await consumer.offsets_for_times({tp: start_ms for tp in partitions})
        return {tp: (found[tp].offset if found[tp] else ends[tp]) for tp in partitions}
    # The newest N events lie within the last N offsets of every partition.
    count = last_n or 0
    return {tp: max(starts[tp], ends[tp] - count) for tp in partitions}


async def _read_until(
    consumer: AIOKafkaConsumer,
    begin: Mapping[TopicPartition, int],
    stop: Mapping[TopicPartition, int],
) -> list[tuple[int, int, int, bytes | None]]:
    """Read each partition from `begin` up to `stop`; return (timestamp, partition,
    offset, value) items. Stops early after READ_TIMEOUT_S or MAX_PREVIEW_EVENTS."""
    remaining = {tp for tp in begin if begin[tp] < stop[tp]}
    events: list[tuple[int, int, int, bytes | None]] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    while remaining and time.monotonic() < deadline:
        batch = await consumer.getmany(*remaining, timeout_ms=500)
        for tp, records in batch.items():
            for record in records:
                if record.offset < stop[tp]:
                    events.append(
                        (record.timestamp, tp.partition, record.offset, record.value)
                    )
            if records and records[-1].offset >= stop[tp] - 1:
                remaining.discard(tp)
        if len(events) > MAX_PREVIEW_EVENTS:
            break
    return events


async def preview(
    view: CollectorView,
    events: list[tuple[int, bytes | None]],
    call_remote_model: RemoteModelCall | None,
    max_event_bytes: int,
    examples: int = 5,
) -> dict[str, Any]:
    """Run events through a collector's sampling and return the counts of each step
    and up to `examples` inputs that would be posted."""
    stats = WorkerStats()
    # Preview a paused collector as if it were active.
    record = view.record.model_copy(update={"status_code": COLLECTOR_ACTIVE})
    active_view = replace(view, record=record)
    snapshot = ConfigSnapshot(
        by_key=MappingProxyType({view.key: active_view}),
        by_source=MappingProxyType({record.source_key: (active_view,)}),
    )
    router = Router(max_event_bytes, stats)
    result = RouteResult()
    for _, value in events:
        router.route(value, snapshot, result)

    deliverer = Deliverer(
        Destination("http://127.0.0.1:1"), stats, call_remote_model=call_remote_model
    )
    survivors = []
    failed = 0
    for item in result.batches.get(view.key, []):
        try:
            passed = await deliverer.passes_workflows(active_view, item)
        except RemoteModelError:
            failed += 1
            continue
        if passed:
            survivors.append(item)
        else:
            stats.add_funnel(view.key, "dropped_post_queue")
    await deliverer.destination.aclose()

    funnel = stats.funnel[view.key]
    return {
        "events": len(events),
        "outputs": stats.totals["outputs_in"],
        "invalid": stats.totals["events_dead_lettered"]
        + stats.totals["outputs_dead_lettered"],
        "matched": funnel["matched"],
        "dropped_random_sample": funnel["dropped_random_sample"],
        "dropped_pre_queue": funnel["dropped_pre_queue"],
        "enqueued": funnel["enqueued"],
        "dropped_post_queue": funnel["dropped_post_queue"],
        "model_failed": failed,
        "would_post": len(survivors),
        "quota_and_dedupe_not_applied": [rule.node_id for rule in view.stateful_rules],
        "examples": [
            {"id": item["id"], "event_id": item["event_id"], "input": item["input"]}
            for item in survivors[:examples]
        ],
    }
