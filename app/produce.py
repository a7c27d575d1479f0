"""Publishing prediction events: from a PostModelOutputs response or a JSON-lines file.

A model server calls `event_from_response` after each predict call and publishes the
result with `EventPublisher.publish`; `collectors produce FILE.jsonl` publishes a
file of ready events. Events are keyed by their id, so the partition is stable.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaProducer

from app.settings import Settings

logger = logging.getLogger(__name__)

# `collectors produce` shows a progress bar by default from this file size on.
PROGRESS_MIN_BYTES = 1024 * 1024


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
    settings: Settings,
    path: Path,
    topic: str,
    chunk: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Publish each non-empty line of a JSON-lines file as one event; return the count.

    Lines are sent as they are (not re-encoded), so invalid events reach the worker
    and its dead-letter topic exactly as written. `progress` is called with the
    bytes read and the events published after each acknowledged chunk.
    """
    count = 0
    bytes_read = 0
    async with EventPublisher(settings, topic) as publisher:
        batch: list[tuple[bytes | None, bytes | None]] = []
        with path.open("rb") as file:
            for line in file:
                bytes_read += len(line)
                line = line.strip()
                if not line:
                    continue
                batch.append((_event_key(line), line))
                if len(batch) >= chunk:
                    await publisher.publish_many_raw(batch)
                    count += len(batch)
                    batch = []
                    if progress:
                        progress(bytes_read, count)
        if batch:
            await publisher.publish_many_raw(batch)
            count += len(batch)
        if progress:
            progress(bytes_read, count)
    logger.info("published %d events from %s to %s", count, path, topic)
    return count


def _event_key(line: bytes) -> bytes | None:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    event_id = document.get("id") if isinstance(document, dict) else None
    return event_id.encode() if isinstance(event_id, str) else None


class ProgressBar:
    """A one-line progress bar for `collectors produce`, drawn on a text stream.

    On a terminal the line is redrawn in place, at most every 0.2 s. On other
    streams, such as a log file, a new line is written at most every 2 s.
    """

    WIDTH = 30

    def __init__(self, total_bytes: int, stream: TextIO) -> None:
        self.total_bytes = max(total_bytes, 1)
        self.stream = stream
        self.in_place = stream.isatty()
        self.redraw_s = 0.2 if self.in_place else 2.0
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._last: tuple[int, int] = (0, 0)
        self._finished = False

    def update(self, bytes_done: int, events: int) -> None:
        """Record the progress and redraw when due. At 100 % the line ends, so that
        log lines that follow start on a line of their own."""
        self._last = (bytes_done, events)
        if bytes_done >= self.total_bytes:
            self.finish()
            return
        now = time.monotonic()
        if now - self._drawn_at >= self.redraw_s:
            self._draw(now)

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._draw(time.monotonic())
        if self.in_place:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, now: float) -> None:
        self._drawn_at = now
        self.stream.write(("\r" if self.in_place else "") + self.render(now))
        if not self.in_place:
            self.stream.write("\n")
        self.stream.flush()

    def render(self, now: float) -> str:
        bytes_done, events = self._last
        share = min(1.0, bytes_done / self.total_bytes)
        filled = int(share * self.WIDTH)
        elapsed_s = max(now - self.started, 1e-6)
        mib = 1024 * 1024
        done_mib, total_mib = bytes_done / mib, self.total_bytes / mib
        return (
            f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {share * 100:3.0f}%  "
            f"{events:,} events  {done_mib:.1f}/{total_mib:.1f} MiB  "
            f"{events / elapsed_s:,.0f} events/s"
        )
