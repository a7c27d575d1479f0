"""The measured runs: stage one of real workers on the pre-filled topic, the Faust
floor, and the end-to-end latency at a fixed offered load."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import redis.asyncio as redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from app.store import Store, connect
from bench import collectors
from bench.destination import CREATED_AT_KEY
from bench.kafka_io import MAX_MESSAGE_BYTES, GroupProgress, create_topic
from bench.processes import ChildProcess
from bench.workers import (
    Context,
    WorkerGroup,
    cores_used,
    cpu_snapshot,
    service_pids,
)

POLL_INTERVAL_S = 0.1
RUN_TIMEOUT_S = 300.0
# A measurement needs at least this many commits (one a second) in its window.
MIN_COMMIT_SAMPLES = 3
# A worker keeps up with a latency run's rate when the p90 latency of the inputs
# created in the run's last TAIL_S is below KEEP_UP_TAIL_P90_MS.
TAIL_S = 5.0
KEEP_UP_TAIL_P90_MS = 500.0
# The search range of the live capacity, in multiples of the backlog rate.
LIVE_SEARCH_LOW = 0.3
LIVE_SEARCH_HIGH = 0.9
# The load generator's largest record batch. aiokafka's default of 16 KiB fits
# one event of the benchmark, so every event would cost a batch of its own.
LOAD_BATCH_BYTES = 512 * 1024


@dataclass
class ResourceSample:
    """Cumulative counters at one commit of a run."""

    at_s: float
    predictions: int
    events: int
    cpu_s: dict[str, float]
    redis_calls: int
    # Inputs the destination has received since it started.
    posted_inputs: int = 0


@dataclass
class StageOneResult:
    collectors: int
    survival_target: float
    workers: int
    # Each worker's COLLECTORS_WORKER_STAGES; "route,deliver" runs both stages.
    stages: list[str] = field(default_factory=list)
    predictions_per_s: float = 0.0
    events_per_s: float = 0.0
    window_s: float = 0.0
    start_up_s: float = 0.0
    commit_samples: int = 0
    # Queue items per prediction that a collector matched, and per prediction.
    survival: float = 0.0
    items_per_prediction: float = 0.0
    rss_peak_bytes: int = 0
    redis_commands: int = 0
    redis_commands_per_event: float = 0.0
    redis_commands_per_s: float = 0.0
    # Inputs the destination received per second in the window. Both stages keep
    # up with stage one's rate, capped by the rate at which stage two posts.
    posted_inputs_per_s: float = 0.0
    end_to_end_predictions_per_s: float = 0.0
    cores_used: dict[str, float] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def redis_calls(client: redis.Redis) -> int:
    """Return the commands the server has run, without the INFO calls that read it."""
    stats = await client.info("commandstats")
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if name != "cmdstat_info" and isinstance(value, dict)
    )


async def configure_collectors(
    ctx: Context,
    collector_count: int,
    survival: float,
    quantiles: dict[str, collectors.ModelQuantiles],
) -> None:
    """Replace the bench database's content with one configuration."""
    store = Store(connect(ctx.redis_url))
    try:
        await store.redis.flushdb()
        records, workflows = collectors.build(collector_count, survival, quantiles)
        await collectors.write(store, records, workflows)
    finally:
        await store.close()


# --- stage one -----------------------------------------------------------------------


async def measure_stage_one(
    ctx: Context,
    collector_count: int,
    survival: float,
    workers: int,
    matched: float,
    stages: list[str] | None = None,
) -> StageOneResult:
    """Run workers on the pre-filled topic and measure the rate of their commits.

    The rate is taken between commits, from the first one after the group is stable
    (every worker has its partitions) to the last one before the end of the topic
    or of the window. Start-up and the final commit interval are left out.
    `matched` is the fraction of the topic's predictions that some collector of
    this configuration matches. `stages` gives each worker's stages (by default
    both). The collectors must already be in Redis.
    """
    stages = stages or ["route,deliver"] * workers
    name = f"{ctx.prefix}-c{collector_count}-s{round(survival * 100)}-w{workers}"
    if any(stage != "route,deliver" for stage in stages):
        name += "-split"
    group = WorkerGroup(ctx, name, workers, ctx.topic.name, stages)
    result = StageOneResult(collector_count, survival, workers, stages)
    redis_client = redis.Redis.from_url(ctx.redis_url, protocol=2)
    admin = AIOKafkaAdminClient(bootstrap_servers=ctx.bootstrap)
    await admin.start()
    started_at = time.monotonic()
    try:
        group.start()
        samples = await _follow_commits(ctx, group, admin, redis_client)
        result.totals = await group.totals()
        result.rss_peak_bytes = group.peak_rss_bytes()
    finally:
        group.stop()
        await admin.close()
        await redis_client.aclose()

    _fill_rates(result, samples, started_at, ctx.topic.predictions)
    enqueued = result.totals.get("enqueued", 0)
    outputs = result.totals.get("outputs_in", 0)
    if outputs:
        result.items_per_prediction = enqueued / outputs
        result.survival = enqueued / (outputs * matched) if matched else 0.0
    result.end_to_end_predictions_per_s = result.predictions_per_s
    if result.items_per_prediction > 0 and "deliver" in ",".join(stages):
        result.end_to_end_predictions_per_s = min(
            result.predictions_per_s,
            result.posted_inputs_per_s / result.items_per_prediction,
        )
    return result


async def _follow_commits(
    ctx: Context,
    group: WorkerGroup,
    admin: AIOKafkaAdminClient,
    redis_client: redis.Redis,
) -> list[ResourceSample]:
    """Poll the committed offsets, and sample the counters at each new commit,
    until the end of the topic or of the measurement window."""
    total = ctx.topic.predictions
    pids = service_pids(ctx)
    destination = httpx.AsyncClient(base_url=ctx.destination_url)
    samples: list[ResourceSample] = []
    stable = False
    last = -1
    deadline = time.monotonic() + RUN_TIMEOUT_S
    async with (
        GroupProgress(ctx.bootstrap, group.group, ctx.topic.name) as progress,
        destination,
    ):
        while True:
            group.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"group {group.group} committed too little in {RUN_TIMEOUT_S:.0f} s"
                )
            if not stable:
                stable = await _group_stable(admin, group.group, len(group.workers))
            committed = await progress.committed()
            done = ctx.topic.predictions_before(committed)
            if done != last and (stable or done >= total):
                samples.append(
                    ResourceSample(
                        at_s=time.monotonic(),
                        predictions=done,
                        events=ctx.topic.events_before(committed),
                        cpu_s=cpu_snapshot(group, pids),
                        redis_calls=await redis_calls(redis_client),
                        posted_inputs=await _posted_inputs(destination),
                    )
                )
                last = done
            window_done = (
                len(samples) > MIN_COMMIT_SAMPLES
                and samples[-1].at_s - samples[0].at_s >= ctx.window_s
            )
            if done >= total or window_done:
                return samples
            await asyncio.sleep(POLL_INTERVAL_S)


async def _posted_inputs(destination: httpx.AsyncClient) -> int:
    stats = orjson.loads((await destination.get("/stats")).content)
    return int(stats["inputs"])


async def _group_stable(admin: AIOKafkaAdminClient, group: str, members: int) -> bool:
    """Return whether the group is Stable with at least `members` members."""
    (response,) = await admin.describe_consumer_groups([group])
    (description,) = response.to_object()["groups"]
    return bool(
        description["state"] == "Stable" and len(description["members"]) >= members
    )


def _fill_rates(
    result: StageOneResult,
    samples: list[ResourceSample],
    started_at: float,
    total: int,
) -> None:
    first, last = samples[0], samples[-1]
    # A commit that reaches the end of the topic lands up to one commit interval
    # after the work ended, so the commit before it ends the window instead.
    if last.predictions >= total and len(samples) > 2:
        last = samples[-2]
    window_s = last.at_s - first.at_s
    result.window_s = round(window_s, 3)
    result.commit_samples = len(samples)
    result.start_up_s = round(first.at_s - started_at, 3)
    if window_s <= 0:
        return
    events = last.events - first.events
    result.predictions_per_s = (last.predictions - first.predictions) / window_s
    result.events_per_s = events / window_s
    result.redis_commands = last.redis_calls - first.redis_calls
    result.redis_commands_per_event = result.redis_commands / events if events else 0.0
    result.redis_commands_per_s = result.redis_commands / window_s
    result.posted_inputs_per_s = (last.posted_inputs - first.posted_inputs) / window_s
    result.cores_used = cores_used(first.cpu_s, last.cpu_s, window_s)


# --- the Faust floor -----------------------------------------------------------------


async def measure_faust_floor(ctx: Context, consumer: str) -> dict[str, float]:
    """Run bench/faust_floor.py on the pre-filled topic with the "lean" or the
    "faust" consumer and return its rate."""
    group = f"{ctx.prefix}-faust-floor-{consumer}"
    environment = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": ctx.bootstrap,
        "BENCH_TOPIC": ctx.topic.name,
        "BENCH_GROUP": group,
        "BENCH_EVENTS": str(ctx.topic.events),
        "BENCH_DATA_DIR": str(ctx.log_dir / f"{group}-data"),
        "BENCH_CONSUMER": consumer,
    }
    process = ChildProcess(
        [sys.executable, "-m", "bench.faust_floor", "worker", "-l", "warn"],
        environment,
        ctx.log_dir / f"{group}.log",
    ).start()
    assert process.process is not None
    try:
        await asyncio.wait_for(asyncio.to_thread(process.process.wait), RUN_TIMEOUT_S)
    finally:
        process.stop()
    match = re.search(
        r"RESULT events=(\d+) predictions=(\d+) seconds=([0-9.]+)", process.log_tail()
    )
    if match is None:
        raise RuntimeError(f"the Faust floor run failed:\n{process.log_tail()}")
    events, predictions, seconds = int(match[1]), int(match[2]), float(match[3])
    return {
        "events": events,
        "predictions": predictions,
        "seconds": seconds,
        "predictions_per_s": predictions / seconds,
        "events_per_s": events / seconds,
    }


# --- latency -------------------------------------------------------------------------


@dataclass
class LatencyResult:
    offered_predictions_per_s: float
    duration_s: float
    warm_up_s: float
    sent_events: int = 0
    sent_predictions: int = 0
    measured_inputs: int = 0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    # p90 of the inputs created in the last TAIL_S of the run: it grows with the
    # backlog when the worker falls behind.
    tail_p90_ms: float = 0.0
    rss_peak_bytes: int = 0
    cores_used: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def measure_latency(
    ctx: Context,
    templates: list[dict[str, Any]],
    rate_predictions_s: float,
    duration_s: float,
    warm_up_s: float,
    topic_suffix: str = "live",
) -> LatencyResult:
    """Publish fresh events at a fixed rate of predictions per second to a new,
    empty topic that one worker reads, and collect latencies at the destination.

    Latency runs from the event's creation (just before it is handed to the
    producer) to the destination's response to the POST that carried the input.
    Inputs created during the warm-up are left out. The collectors must already
    be in Redis.
    """
    topic = f"{ctx.prefix}-{topic_suffix}"
    await create_topic(ctx.bootstrap, topic)
    group = WorkerGroup(ctx, f"{ctx.prefix}-latency-{topic_suffix}", 1, topic)
    result = LatencyResult(rate_predictions_s, duration_s, warm_up_s)
    admin = AIOKafkaAdminClient(bootstrap_servers=ctx.bootstrap)
    await admin.start()
    try:
        group.start()
        while not await _group_stable(admin, group.group, 1):
            group.check_alive()
            await asyncio.sleep(0.2)
        pids = service_pids(ctx)
        before = cpu_snapshot(group, pids)
        stats = await _offer_and_drain(
            ctx, group, topic, templates, rate_predictions_s, duration_s, result
        )
        result.cores_used = cores_used(before, cpu_snapshot(group, pids), duration_s)
        result.rss_peak_bytes = group.peak_rss_bytes()
    finally:
        group.stop()
        await admin.close()

    measured_from_s = stats["started_s"] + warm_up_s
    latencies = sorted(
        latency
        for created_s, latency in stats["latencies_s"]
        if created_s >= measured_from_s
    )
    result.measured_inputs = len(latencies)
    if latencies:
        result.p50_ms = round(1000 * _nearest_rank(latencies, 0.50), 1)
        result.p90_ms = round(1000 * _nearest_rank(latencies, 0.90), 1)
        result.p99_ms = round(1000 * _nearest_rank(latencies, 0.99), 1)
        result.max_ms = round(1000 * latencies[-1], 1)
    tail_from_s = stats["started_s"] + duration_s - TAIL_S
    tail = sorted(
        latency
        for created_s, latency in stats["latencies_s"]
        if created_s >= tail_from_s
    )
    if tail:
        result.tail_p90_ms = round(1000 * _nearest_rank(tail, 0.90), 1)
    return result


async def measure_live_capacity(
    ctx: Context,
    templates: list[dict[str, Any]],
    backlog_rate: float,
    probes: int,
    duration_s: float,
    warm_up_s: float,
) -> dict[str, Any]:
    """Bisect for the highest rate of live predictions that one worker keeps up
    with, between LIVE_SEARCH_LOW and LIVE_SEARCH_HIGH times `backlog_rate`.

    Each probe is a latency run. The worker keeps up when the p90 latency of the
    inputs created in the probe's last TAIL_S stays under KEEP_UP_TAIL_P90_MS. A
    worker that falls behind builds a backlog that grows for the whole probe, so
    its last inputs wait longest. Returns the probes, the highest rate kept up
    with, the lowest one not kept up with, and the middle of the two as the
    capacity. A bound that no probe reached is the end of the search range.
    """
    low = LIVE_SEARCH_LOW * backlog_rate
    high = LIVE_SEARCH_HIGH * backlog_rate
    runs = []
    for index in range(probes):
        rate = (low + high) / 2
        probe = await measure_latency(
            ctx, templates, rate, duration_s, warm_up_s, topic_suffix=f"probe-{index}"
        )
        kept_up = 0 < probe.tail_p90_ms < KEEP_UP_TAIL_P90_MS
        runs.append({**probe.as_dict(), "kept_up": kept_up})
        if kept_up:
            low = rate
        else:
            high = rate
    return {
        "probes": runs,
        "kept_up_with": low,
        "fell_behind_at": high,
        "capacity_predictions_per_s": (low + high) / 2,
    }


async def _offer_and_drain(
    ctx: Context,
    group: WorkerGroup,
    topic: str,
    templates: list[dict[str, Any]],
    rate_predictions_s: float,
    duration_s: float,
    result: LatencyResult,
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=ctx.destination_url, timeout=30) as client:
        (await client.post("/reset")).raise_for_status()
        producer = AIOKafkaProducer(
            bootstrap_servers=ctx.bootstrap,
            acks="all",
            linger_ms=5,
            max_batch_size=LOAD_BATCH_BYTES,
            max_request_size=MAX_MESSAGE_BYTES,
        )
        await producer.start()
        try:
            started_s = time.time()
            await _offer_load(
                ctx, producer, topic, templates, rate_predictions_s, duration_s, result
            )
        finally:
            await producer.stop()
        stats: dict[str, Any] = await _drain(client, group)
    stats["started_s"] = started_s
    return stats


def _stamp(event: dict[str, Any], event_id: str, now_s: float) -> bytes:
    event["id"] = event_id
    moment = datetime.fromtimestamp(now_s, UTC)
    event["created_at"] = moment.isoformat().replace("+00:00", "Z")
    for output in event["outputs"]:
        output["input"]["data"]["metadata"][CREATED_AT_KEY] = now_s
    return orjson.dumps(event)


async def _offer_load(
    ctx: Context,
    producer: AIOKafkaProducer,
    topic: str,
    templates: list[dict[str, Any]],
    rate_predictions_s: float,
    duration_s: float,
    result: LatencyResult,
) -> None:
    """Send events, each stamped with its creation time, so that the predictions
    sent by every moment follow `rate_predictions_s`.

    The events due at one moment go out as one record batch to one partition,
    and the next moment's to the next partition, the way Kafka's sticky
    partitioner spreads events without a key. Here the event's key does not pick
    its partition.
    """
    partitions = sorted(await producer.partitions_for(topic))
    futures = []

    async def send(batch: Any) -> None:
        partition = partitions[len(futures) % len(partitions)]
        futures.append(await producer.send_batch(batch, topic, partition=partition))

    started = time.monotonic()
    while (elapsed_s := time.monotonic() - started) < duration_s:
        batch = producer.create_batch()
        while result.sent_predictions < rate_predictions_s * elapsed_s:
            event = templates[result.sent_events % len(templates)]
            event_id = f"{ctx.prefix}-live-{result.sent_events}"
            key = event_id.encode()
            value = _stamp(event, event_id, time.time())
            if batch.append(key=key, value=value, timestamp=None) is None:
                await send(batch)
                batch = producer.create_batch()
                # aiokafka accepts one record of any size in an empty batch.
                batch.append(key=key, value=value, timestamp=None)
            result.sent_events += 1
            result.sent_predictions += len(event["outputs"])
        if batch.record_count():
            await send(batch)
        await asyncio.sleep(0.002)
    for future in futures:
        await future


async def _drain(client: httpx.AsyncClient, group: WorkerGroup) -> dict[str, Any]:
    """Wait until the destination has received nothing new for two seconds."""
    previous = -1
    quiet_since = time.monotonic()
    deadline = time.monotonic() + 60
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        group.check_alive()
        stats = orjson.loads((await client.get("/stats")).content)
        if stats["inputs"] != previous:
            previous = stats["inputs"]
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 2.0:
            break
        await asyncio.sleep(0.25)
    return stats


def _nearest_rank(sorted_values: list[float], fraction: float) -> float:
    index = round(fraction * (len(sorted_values) - 1))
    return sorted_values[min(len(sorted_values) - 1, index)]
