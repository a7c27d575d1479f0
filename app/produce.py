"""Publishing prediction events: from a PostModelOutputs response or a JSON-lines file.

A model server calls `event_from_response` after each predict call and publishes the
result with `EventPublisher.publish`; `collectors produce FILE.jsonl` publishes a
file of ready events. Events are keyed by their id, so the partition is stable.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from app.settings import Settings

logger = logging.getLogger(__name__)


def event_from_response(
    response: Mapping[str, Any],
    caller_user_id: str,
    caller_app_id: str = "",
    event_id: str | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """Turn a PostModelOutputs response (as JSON) into a prediction event."""
    moment = created_at or datetime.now(UTC)
    return {
        "id": event_id or uuid.uuid4().hex,
        "created_at": moment.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "caller": {"user_id": caller_user_id, "app_id": caller_app_id},
        "outputs": list(response.get("outputs", [])),
    }


class EventPublisher:
    """A Kafka producer configured for events of up to the broker's message size."""

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        self.topic = topic or settings.input_topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            acks="all",
            linger_ms=5,
            max_request_size=settings.max_message_bytes,
            compression_type=None,
        )

    async def __aenter__(self) -> EventPublisher:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._producer.stop()

    async def publish(self, event: Mapping[str, Any]) -> None:
        """Publish one event and wait for the broker's acknowledgement."""
        await self.publish_raw(str(event.get("id", "")).encode(), orjson.dumps(event))

    async def publish_raw(self, key: bytes | None, value: bytes | None) -> None:
        await self._producer.send_and_wait(self.topic, value=value, key=key)

    async def publish_many_raw(
        self, items: list[tuple[bytes | None, bytes | None]]
    ) -> None:
        """Publish many events with pipelined sends, then wait for every ack."""
        futures = [
            await self._producer.send(self.topic, value=v, key=k) for k, v in items
        ]
        for future in futures:
            await future


async def produce_file(
    settings: Settings, path: Path, topic: str, chunk: int = 1000
) -> int:
    """Publish each non-empty line of a JSON-lines file as one event; return the count.

    Lines are sent as they are (not re-encoded), so invalid events reach the worker
    and its dead-letter topic exactly as written.
    """
    count = 0
    async with EventPublisher(settings, topic) as publisher:
        batch: list[tuple[bytes | None, bytes | None]] = []
        with path.open("rb") as file:
            for line in file:
                line = line.strip()
                if not line:
                    continue
                batch.append((_event_key(line), line))
                if len(batch) >= chunk:
                    await publisher.publish_many_raw(batch)
                    count += len(batch)
                    batch = []
        if batch:
            await publisher.publish_many_raw(batch)
            count += len(batch)
    logger.info("published %d events from %s to %s", count, path, topic)
    return count


def _event_key(line: bytes) -> bytes | None:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    event_id = document.get("id") if isinstance(document, dict) else None
    return event_id.encode() if isinstance(event_id, str) else None
