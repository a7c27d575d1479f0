"""Writes dead letters: the original bytes plus headers that describe the failure.

Headers (all UTF-8 text): `error` (the reason, naming the field when validation
failed), `error_code` (INVALID_JSON, INVALID_EVENT, INVALID_OUTPUT, EMPTY_EVENT,
EVENT_TOO_LARGE, INVALID_QUEUE_MESSAGE, INVALID_RETRY_MESSAGE, PROCESSING_FAILED,
COLLECTOR_MODEL_FAILED or
COLLECTOR_POST_INPUT_FAILED),
`source_topic`, `source_partition`, `source_offset`, `attempts`,
`first_failure_at` (RFC 3339), and when known `event_id`, `output_index` and
`collector`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from faust.types import Message, TopicT

from agents.delivery import FailedDelivery
from agents.routing import DeadLetter

MAX_REASON_CHARS = 4000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _headers(
    message: Message, reason: str, code: str, **extra: Any
) -> list[tuple[str, bytes]]:
    headers = {
        "error": reason[:MAX_REASON_CHARS],
        "error_code": code,
        "source_topic": message.topic,
        "source_partition": str(message.partition),
        "source_offset": str(message.offset),
        "attempts": "1",
        "first_failure_at": _now(),
    }
    headers.update(
        {name: str(value) for name, value in extra.items() if value not in (None, "")}
    )
    return [(name, value.encode()) for name, value in headers.items()]


class DeadLetterWriter:
    def __init__(self, topic: TopicT) -> None:
        self.topic = topic

    async def send_event(
        self, message: Message, dead_letter: DeadLetter
    ) -> Awaitable[Any]:
        """Dead-letter a source event (or one output of it) with its original bytes."""
        headers = _headers(
            message,
            dead_letter.reason,
            dead_letter.code,
            event_id=dead_letter.event_id,
            output_index=dead_letter.output_index,
        )
        return await self.topic.send(
            key=message.key, value=message.value or b"", headers=headers, force=True
        )

    async def send_raw(
        self, message: Message, reason: str, code: str
    ) -> Awaitable[Any]:
        headers = _headers(message, reason, code)
        return await self.topic.send(
            key=message.key, value=message.value or b"", headers=headers, force=True
        )

    async def send_failed_delivery(
        self,
        failure: FailedDelivery,
        payload: bytes,
        source_topic: str,
        first_failure_at: float,
    ) -> Awaitable[Any]:
        """Dead-letter inputs that failed for good, as a message that `collectors dlq
        replay` can put back on `source_topic`."""
        first = datetime.fromtimestamp(first_failure_at, UTC)
        headers = {
            "error": failure.reason[:MAX_REASON_CHARS],
            "error_code": failure.code,
            "collector": failure.collector_key,
            "source_topic": source_topic,
            "attempts": str(max(failure.attempts, 1)),
            "first_failure_at": first.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
        }
        return await self.topic.send(
            key=failure.collector_key.encode(),
            value=payload,
            headers=[(name, value.encode()) for name, value in headers.items()],
            force=True,
        )
