"""take_batches and RawSchema (agents/lean_streams.py) on an app that is never
started: batch sizes and windows, acks only after the body ends normally, and
the events that a rebalance makes stale."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
import pytest
from faust.types import TP, EventT
from faust.types.tuples import ConsumerMessage

from agents.consumer import use_lean_consumer
from agents.lean_streams import RawSchema, take_batches

TOPIC = "lean-streams"


def _app(name: str) -> faust.App:
    app = faust.App(name, broker="kafka://127.0.0.1:1", web_enabled=False)
    use_lean_consumer(app)
    app.flow_control.resume()
    app.topics._acking_topics.add(TOPIC)
    return app


def _message(app: faust.App, offset: int, generation: int | None = None) -> Any:
    tp = TP(TOPIC, 0)
    return ConsumerMessage(
        TOPIC,
        0,
        offset,
        time.time(),
        0,
        [],
        b"key-%d" % offset,
        b"value-%d" % offset,
        None,
        5,
        7,
        tp,
        generation_id=(
            app.consumer_generation_id if generation is None else generation
        ),
    )


async def _started(
    app: faust.App, max_events: int, within_s: float | Callable[[], float]
) -> tuple[AsyncIterator[list[EventT]], asyncio.Task, Any]:
    """Start take_batches on a stream of the topic, and return the generator,
    the task waiting for its first batch, and the channel it reads."""
    topic = app.topic(TOPIC, schema=RawSchema())
    stream = app.stream(topic)
    batches = take_batches(stream, max_events, within_s)
    first = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.01)
    (channel,) = list(app.topics)
    return batches, first, channel


async def _put(app: faust.App, channel: Any, offsets: range, **kwargs: Any) -> None:
    for offset in offsets:
        message = _message(app, offset, **kwargs)
        message.incref()
        channel.queue.put_nowait(await channel.decode(message))


async def test_raw_schema_keeps_message_bytes() -> None:
    app = _app("lean-streams-schema")
    channel = aiter(app.topic(TOPIC, schema=RawSchema()))
    message = _message(app, 3)
    event = await channel.decode(message)
    assert event.key == b"key-3"
    assert event.value == b"value-3"
    assert event.message is message


async def test_take_batches_window_ends_partial_batch() -> None:
    app = _app("lean-streams-sizes")
    batches, first, channel = await _started(app, max_events=2, within_s=0.2)
    await _put(app, channel, range(5))
    assert [e.message.offset for e in await first] == [0, 1]
    assert [e.message.offset for e in await anext(batches)] == [2, 3]
    started = time.monotonic()
    assert [e.message.offset for e in await anext(batches)] == [4]
    # The last event waited for the window, for a second one that never came.
    assert time.monotonic() - started >= 0.15
    await batches.aclose()


async def test_take_batches_calls_window_function() -> None:
    app = _app("lean-streams-window-function")
    windows = iter([0.3, 0.01, 0.01])
    calls = []

    def window() -> float:
        calls.append(True)
        return next(windows)

    batches, first, channel = await _started(app, max_events=10, within_s=window)
    started = time.monotonic()
    await _put(app, channel, range(2))
    # The first window is 0.3 s: the batch waits for more events until it ends.
    assert [e.message.offset for e in await first] == [0, 1]
    assert time.monotonic() - started >= 0.2
    assert len(calls) == 1
    await _put(app, channel, range(2, 3))
    assert [e.message.offset for e in await anext(batches)] == [2]
    assert len(calls) == 2
    await batches.aclose()


async def test_take_batches_acks_after_body() -> None:
    app = _app("lean-streams-acks")
    batches, first, channel = await _started(app, max_events=3, within_s=0.05)
    await _put(app, channel, range(3))
    events = await first
    consumer = app.consumer
    assert all(e.message.tracked and not e.message.acked for e in events)
    assert all(e.message in consumer._unacked_messages for e in events)

    # Asking for the next batch ends the body of the first one.
    await _put(app, channel, range(3, 4))
    following = await anext(batches)
    assert all(e.message.acked for e in events)
    assert consumer._acked[TP(TOPIC, 0)] == [0, 1, 2]
    assert not any(e.message in consumer._unacked_messages for e in events)

    # A generator closed while a body runs, as when the agent is cancelled,
    # leaves that batch unacked.
    await batches.aclose()
    assert not following[0].message.acked
    assert consumer._acked[TP(TOPIC, 0)] == [0, 1, 2]


async def test_take_batches_raising_body_no_ack() -> None:
    app = _app("lean-streams-raises")
    topic = app.topic(TOPIC, schema=RawSchema())
    batches = take_batches(app.stream(topic), 5, 0.05)
    received: list[EventT] = []

    async def put_soon() -> None:
        await asyncio.sleep(0.01)
        (channel,) = list(app.topics)
        await _put(app, channel, range(2))

    putting = asyncio.ensure_future(put_soon())
    with pytest.raises(RuntimeError):
        async for events in batches:
            received.extend(events)
            raise RuntimeError("the batch failed")
    await putting
    await batches.aclose()
    assert [e.message.offset for e in received] == [0, 1]
    assert not any(e.message.acked for e in received)
    assert not app.consumer._acked[TP(TOPIC, 0)]


async def test_take_batches_drops_stale_events() -> None:
    app = _app("lean-streams-stale")
    batches, first, channel = await _started(app, max_events=10, within_s=0.05)
    current = app.consumer_generation_id
    await _put(app, channel, range(2), generation=current - 1)
    await _put(app, channel, range(2, 4))
    # The events of the older generation are left for the next owner of the
    # partition, which reads them again from the committed offset.
    assert [e.message.offset for e in await first] == [2, 3]

    # While flow control is suspended, a whole batch is stale, and the
    # generator waits for the next one.
    app.flow_control.suspend()
    await _put(app, channel, range(4, 6))
    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.15)
    assert not waiting.done()
    app.flow_control.resume()
    await _put(app, channel, range(6, 7))
    assert [e.message.offset for e in await waiting] == [6]
    assert app.consumer._acked[TP(TOPIC, 0)] == [2, 3]
    await batches.aclose()


async def test_take_batches_ends_on_app_stop() -> None:
    app = _app("lean-streams-stop")
    _batches, first, channel = await _started(app, max_events=5, within_s=0.05)
    # Faust throws StopAsyncIteration into the channels of a stopping app.
    await channel.throw(StopAsyncIteration())
    with pytest.raises(StopAsyncIteration):
        await first
