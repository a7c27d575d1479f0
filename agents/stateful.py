"""Quotas and dedupe, applied right before posting with Redis as the shared state.

Both are decided atomically by Lua scripts, so every worker of the group sees the
same counts, and both are keyed by the destination input id, so an input that is
replayed after a crash is neither counted twice nor taken for its own duplicate.

- Quota: a sorted set per collector, node (and top concept for per-concept quotas)
  holds the input ids admitted in the sliding window, scored by admission time.
- Dedupe: a key per collector, node and fingerprint holds the first input id that
  had the fingerprint, and expires after the window.

NOTE: an input admitted by a quota counts against it even when its POST later
fails for good and it is dead-lettered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from agents.stats import WorkerStats
from app.config_cache import CollectorView
from rules.stateful import DedupeRule, QuotaRule

logger = logging.getLogger(__name__)

_QUOTA_SCRIPT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return 1
end
return 0
"""

_DEDUPE_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 1
end
return 0
"""

REDIS_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)


def fingerprint(item: dict[str, Any], by: str) -> str:
    """Return the dedupe fingerprint of a queue item's input.

    `url` uses the image, text, video or audio URL; `content` hashes the decoded
    image bytes or the raw text. An input without the kind that `by` names falls
    back to the other kind, and to its input id when it has neither.
    """
    data = item["input"].get("data") or {}
    url = _first_url(data)
    content = _content_hash(data)
    candidates = [f"url:{url}" if url else "", f"content:{content}" if content else ""]
    if by != "url":
        candidates.reverse()
    for candidate in candidates:
        if candidate:
            return candidate
    return f"id:{item['input'].get('id', '')}"


def _first_url(data: dict[str, Any]) -> str | None:
    for kind in ("image", "text", "video", "audio"):
        url = (data.get(kind) or {}).get("url")
        if url:
            return str(url)
    return None


def _content_hash(data: dict[str, Any]) -> str | None:
    encoded = (data.get("image") or {}).get("base64")
    if encoded:
        try:
            raw = base64.b64decode(encoded)
        except (binascii.Error, ValueError):
            raw = encoded.encode()
        return hashlib.sha256(raw).hexdigest()
    text = (data.get("text") or {}).get("raw")
    if text:
        return hashlib.sha256(text.encode()).hexdigest()
    return None


class StatefulGate:
    """Admits or drops items by the collector's quota and dedupe rules."""

    def __init__(self, client: redis.Redis, stats: WorkerStats) -> None:
        self.redis = client
        self.stats = stats
        self._quota = client.register_script(_QUOTA_SCRIPT)
        self._dedupe = client.register_script(_DEDUPE_SCRIPT)

    async def admit(
        self, view: CollectorView, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Return the items that pass every rule, in order; Redis errors are retried
        until Redis replies, because skipping a quota could exceed it."""
        if not view.stateful_rules:
            return list(items)
        for delay_s in (*REDIS_RETRY_DELAYS_S, None):
            try:
                return await self._admit_once(view, items)
            except RedisError as error:
                if delay_s is None:
                    raise
                logger.warning(
                    "quota or dedupe check for collector %s failed, retrying: %s",
                    view.key,
                    error,
                )
                await asyncio.sleep(delay_s)
        raise AssertionError("unreachable")

    async def _admit_once(
        self, view: CollectorView, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        admitted = []
        funnel = self.stats.funnel[view.key]
        for item in items:
            passed = True
            for rule in view.stateful_rules:
                if isinstance(rule, DedupeRule):
                    passed = await self._check_dedupe(view.key, rule, item)
                    step = "dropped_duplicate"
                else:
                    passed = await self._check_quota(view.key, rule, item)
                    step = "dropped_quota"
                if not passed:
                    funnel[step] += 1
                    break
            if passed:
                admitted.append(item)
        return admitted

    async def _check_quota(
        self, collector_key: str, rule: QuotaRule, item: dict[str, Any]
    ) -> bool:
        key = f"col:quota:{collector_key}:{rule.node_id}"
        if rule.per_concept:
            key += f":{item.get('top_concept', '')}"
        now_ms = int(time.time() * 1000)
        window_ms = rule.window_s * 1000
        result = await self._quota(
            keys=[key], args=[now_ms, window_ms, rule.max_inputs, item["id"]]
        )
        return bool(result)

    async def _check_dedupe(
        self, collector_key: str, rule: DedupeRule, item: dict[str, Any]
    ) -> bool:
        key = f"col:dedupe:{collector_key}:{rule.node_id}:{fingerprint(item, rule.by)}"
        result = await self._dedupe(keys=[key], args=[item["id"], rule.window_s * 1000])
        return bool(result)
