"""PreviewCollector: what a collector would collect from recent prediction events.

The handler reads events from the input topic (the last N, or a time range) and
runs them through the collector's stored configuration with app.preview, which
posts nothing and commits no offset. Remote model nodes are called as the worker
calls them, within COLLECTORS_MODEL_URL_ALLOWLIST. When Kafka cannot be reached,
the RPC fails with 10020 FAILURE and HTTP 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from agents.delivery import RemoteModelCall
from app.api.collectors import reject_unknown_fields
from app.api.context import RpcContext, Services, check_id, parse_count
from app.api.errors import COLLECTOR_MISSING, FAILURE, ApiError, invalid_request
from app.config_cache import load_view
from app.preview import MAX_PREVIEW_EVENTS, preview, read_events
from app.remote_models import predict_remote
from app.settings import Settings
from rules.context import Data

logger = logging.getLogger(__name__)

DEFAULT_LAST_N = 1000
DEFAULT_EXAMPLES = 5
MAX_EXAMPLES = 50
# Bounds the whole Kafka read: app.preview.read_events stops fetching after 20 s,
# and connecting and looking up offsets take the rest.
KAFKA_TIMEOUT_S = 45.0
_REQUEST_FIELDS = frozenset(
    {"collector_id", "last_n", "start_time", "end_time", "examples"}
)
_TIME_EXAMPLE = "2026-01-31T12:00:00Z"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class EventWindow:
    """The events to replay: the last `last_n`, or those from `start_ms` to
    `end_ms` in milliseconds since the epoch. Without `end_ms` the range ends at the
    newest event."""

    last_n: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None


async def preview_collector(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    """Replay events through a collector and return the counts of each step and
    up to `examples` inputs it would post.

    A paused collector is previewed as if it were active. The response's
    `preview.broken_reason` is set when the collector names a workflow that does
    not exist or does not compile, because such a collector collects nothing.
    """
    reject_unknown_fields(request, _REQUEST_FIELDS)
    collector_id = check_id(request.get("collector_id"), "collector_id")
    window = parse_window(request)
    examples = _parse_examples(request.get("examples"))

    services = ctx.services
    view = await load_view(
        ctx.store, services.secret_box, ctx.user_id, ctx.app_id, collector_id
    )
    if view is None:
        raise ApiError(
            COLLECTOR_MISSING, f"collectors not found in this app: {collector_id}"
        )
    events = await _read_input_events(services.settings, window, ctx.req_id)
    report = await preview(
        view,
        events,
        _remote_model_caller(services),
        services.settings.max_event_bytes,
        examples=examples,
    )
    if view.broken_reason:
        report["broken_reason"] = view.broken_reason
    return {"preview": report}


def parse_window(request: dict[str, Any]) -> EventWindow:
    """Return the events that a preview request selects, by default the last 1000.

    Raises 11102 when `last_n` is combined with a time range, when `end_time` comes
    without `start_time` or is not after it, or when a value is invalid.
    """
    has_range = request.get("start_time") is not None or (
        request.get("end_time") is not None
    )
    if not has_range:
        last_n = parse_count(
            request, "last_n", default=DEFAULT_LAST_N, maximum=MAX_PREVIEW_EVENTS
        )
        return EventWindow(last_n=last_n)
    if request.get("last_n") is not None:
        raise invalid_request(
            "last_n: set either last_n or start_time (and optionally end_time),"
            " not both"
        )
    if request.get("start_time") is None:
        raise invalid_request("start_time: missing; end_time needs a start_time")
    start_ms = _parse_time(request["start_time"], "start_time")
    end_ms = None
    if request.get("end_time") is not None:
        end_ms = _parse_time(request["end_time"], "end_time")
        if end_ms <= start_ms:
            raise invalid_request(
                f"end_time: {request['end_time']!r} is not after start_time"
                f" {request['start_time']!r}"
            )
    return EventWindow(start_ms=start_ms, end_ms=end_ms)


def _parse_time(value: Any, name: str) -> int:
    """Return an RFC 3339 time as milliseconds since the epoch (0 for earlier
    times), or raise 11102 naming the field."""
    if not isinstance(value, str):
        raise invalid_request(
            f"{name}: expected an RFC 3339 time such as {_TIME_EXAMPLE}, got {value!r}"
        )
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise invalid_request(
            f"{name}: invalid time {value!r}; use RFC 3339, such as {_TIME_EXAMPLE}"
        ) from error
    if moment.tzinfo is None:
        raise invalid_request(
            f"{name}: {value!r} has no time zone; end it with Z or an offset such"
            " as +01:00"
        )
    try:
        # Integer arithmetic, because a float timestamp can round 123 ms down to 122.
        milliseconds = (moment - _EPOCH) // timedelta(milliseconds=1)
    except OverflowError as error:
        raise invalid_request(f"{name}: time {value!r} is out of range") from error
    return max(0, milliseconds)


def _parse_examples(value: Any) -> int:
    if value is None:
        return DEFAULT_EXAMPLES
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_request(
            f"examples: expected an integer from 0 to {MAX_EXAMPLES}, got {value!r}"
        )
    if not 0 <= value <= MAX_EXAMPLES:
        raise invalid_request(
            f"examples: expected an integer from 0 to {MAX_EXAMPLES}, got {value}"
        )
    return value


async def _read_input_events(
    settings: Settings, window: EventWindow, req_id: str
) -> list[tuple[int, bytes | None]]:
    """Read the window's events from the input topic, or raise 10020 (HTTP 503)
    when Kafka cannot be reached or times out.

    NOTE: read_events returns what it has read after 20 s or 100,000 events without
    saying so, so the preview of a long time range counts only part of it.
    """
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            if not await _input_topic_has_partitions(settings):
                return []
            return await read_events(
                settings,
                last_n=window.last_n,
                start_ms=window.start_ms,
                end_ms=window.end_ms,
            )
    except TimeoutError as error:
        # Caught before OSError, which TimeoutError subclasses.
        reason = f"no answer within {KAFKA_TIMEOUT_S:g} s"
        raise _kafka_unavailable(settings, reason, req_id) from error
    except (KafkaError, OSError) as error:
        reason = str(error) or type(error).__name__
        raise _kafka_unavailable(settings, reason, req_id) from error


async def _input_topic_has_partitions(settings: Settings) -> bool:
    """Return whether the input topic exists.

    A topic that does not exist has no events to preview. It is checked first also
    because read_events on a topic without partitions raises CancelledError from
    aiokafka's consumer.stop() (aiokafka 0.14.0).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        descriptions = await admin.describe_topics([settings.input_topic])
    finally:
        await admin.close()
    return any(description.get("partitions") for description in descriptions)


def _kafka_unavailable(settings: Settings, reason: str, req_id: str) -> ApiError:
    logger.warning(
        "preview failed: Kafka at %s is unreachable (req_id %s): %s",
        settings.kafka_bootstrap_servers,
        req_id,
        reason,
    )
    return ApiError(
        FAILURE,
        f"Kafka is unreachable at {settings.kafka_bootstrap_servers}: {reason};"
        " retry later",
        http_status=503,
    )


def _remote_model_caller(services: Services) -> RemoteModelCall:
    """Return the caller for remote model nodes, limited to the allow-listed URLs."""
    settings = services.settings

    async def call(model: Mapping[str, Any], input_document: Mapping[str, Any]) -> Data:
        return await predict_remote(
            services.http_client(),
            model,
            input_document,
            settings.model_timeout_s,
            allowed_urls=settings.allowed_model_urls,
        )

    return call
