"""Reads the statistics that workers flush to Redis (layout in agents/stats_flush.py).

Used by the dashboard, the API's /metrics and `collectors status`. Redis errors
propagate; callers decide how to show them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as redis

from agents.stats_flush import (
    COLLECTORS_KEY,
    LATENCY_BOUNDS_S,
    LATENCY_KEY,
    RATE_BUCKET_S,
    RATE_FIELDS,
    WORKERS_KEY,
    LatencyHistogram,
    bucket_start,
    funnel_key,
    latency_field,
    latency_key,
    rate_key,
    worker_key,
)

# A heartbeat older than this no longer counts as a live worker (the key also
# expires on its own).
WORKER_STALE_S = 30.0


async def read_funnels(
    client: redis.Redis, collector_keys: Iterable[str] | None = None
) -> dict[str, dict[str, int]]:
    """Return collector key -> funnel step (and `rule:{node}`) -> count, for the
    given collectors or for every collector with statistics."""
    keys = (
        sorted(_text(key) for key in await client.smembers(COLLECTORS_KEY))
        if collector_keys is None
        else list(collector_keys)
    )
    if not keys:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(funnel_key(key))
        hashes = await pipe.execute()
    return {
        key: {field: int(value) for field, value in _text_hash(counts).items()}
        for key, counts in zip(keys, hashes)
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text_hash(raw: dict[Any, Any]) -> dict[str, str]:
    """Return a hash reply as text, from a client with or without decoding."""
    return {_text(field): _text(value) for field, value in raw.items()}


def _histogram(counts: dict[str, str]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for index in range(len(LATENCY_BOUNDS_S) + 1):
        histogram.counts[index] = int(counts.get(latency_field(index), 0))
    histogram.sum_s = float(counts.get("sum_s", 0.0))
    return histogram


async def read_latency_total(client: redis.Redis) -> LatencyHistogram:
    return _histogram(_text_hash(await client.hgetall(LATENCY_KEY)))


def complete_buckets(now: float, window_s: int) -> list[int]:
    """Return the starts of the time buckets that ended within the last `window_s`
    seconds, oldest first (the bucket still filling is left out)."""
    current = bucket_start(now)
    count = window_s // RATE_BUCKET_S
    return [current - RATE_BUCKET_S * i for i in range(count, 0, -1)]


async def read_latency_window(
    client: redis.Redis, buckets: list[int]
) -> LatencyHistogram:
    async with client.pipeline(transaction=False) as pipe:
        for start in buckets:
            pipe.hgetall(latency_key(start))
        hashes = await pipe.execute()
    total = LatencyHistogram()
    for counts in hashes:
        total.add(_histogram(_text_hash(counts)))
    return total


async def read_throughput(
    client: redis.Redis, buckets: list[int]
) -> dict[str, list[int]]:
    """Return RATE_FIELDS -> counts per bucket, in the order of `buckets`."""
    async with client.pipeline(transaction=False) as pipe:
        for start in buckets:
            pipe.hgetall(rate_key(start))
        hashes = await pipe.execute()
    texts = [_text_hash(counts) for counts in hashes]
    return {
        name: [int(counts.get(name, 0)) for counts in texts] for name in RATE_FIELDS
    }


def histogram_quantile(quantile: float, histogram: LatencyHistogram) -> float | None:
    """Estimate a quantile the way Prometheus' histogram_quantile does: linear
    interpolation inside the bucket, and the highest finite bound for the +Inf
    bucket. None when the histogram is empty."""
    total = histogram.count
    if total == 0:
        return None
    rank = quantile * total
    cumulative = 0
    for index, count in enumerate(histogram.counts):
        if cumulative + count >= rank and count > 0:
            if index == len(LATENCY_BOUNDS_S):
                return LATENCY_BOUNDS_S[-1]
            lower = LATENCY_BOUNDS_S[index - 1] if index > 0 else 0.0
            upper = LATENCY_BOUNDS_S[index]
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return LATENCY_BOUNDS_S[-1]


async def read_workers(
    client: redis.Redis, group: str, now: float | None = None
) -> list[dict[str, Any]]:
    """Return the heartbeats of the group's workers seen in the last
    WORKER_STALE_S seconds, JSON fields decoded."""
    now = time.time() if now is None else now
    ids = [
        _text(worker_id)
        for worker_id in await client.zrangebyscore(
            WORKERS_KEY, now - WORKER_STALE_S, "+inf"
        )
    ]
    if not ids:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.hgetall(worker_key(worker_id))
        hashes = await pipe.execute()
    workers = []
    for worker_id, raw in zip(ids, hashes):
        fields = _text_hash(raw)
        if not fields or fields.get("group") != group:
            continue
        workers.append({"id": worker_id, **_decode_heartbeat(fields)})
    return sorted(workers, key=lambda w: (w.get("host", ""), w.get("pid", 0)))


_INTEGER_FIELDS = frozenset(
    ("pid", "web_port", "lag", "config_stale", "config_collectors", "stalled")
)


def _decode_heartbeat(fields: dict[str, str]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for name, value in fields.items():
        if name in ("partitions", "lag_by_topic", "totals"):
            decoded[name] = orjson.loads(value)
        elif name in ("started_at", "updated_at"):
            decoded[name] = float(value)
        elif name in _INTEGER_FIELDS:
            decoded[name] = int(value)
        else:
            decoded[name] = value
    return decoded
