"""The hand-over from a fetched message to an agent's batch, with less work per
event than Faust's stream iterator.

`RawSchema` turns a message of a topic whose keys and values stay bytes into an
event directly, where Faust's schema passes both through its serializer
registry and looks up the event class in the settings, for every message.

`take_batches` replaces `Stream.take_events`. That one moves every event through
Faust's stream iterator in a second task: a `sleep(0)`, the buffer processor
awaited as a coroutine, the stream sensors and the current-event bookkeeping.
`take_batches` reads the channel's queue in the agent's own task and keeps the
iterator's checks that the delivery guarantees rely on. It drops the events of an
older consumer generation and those read while flow control is suspended, because
a rebalance is under way and the partition is read again from its committed
offset. It tracks each message as unacked, and acks a batch's events only when the
body of the `async for` that received them ends normally.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from time import monotonic
from typing import Any

import faust
from faust.types import AppT, EventT, Message, StreamT


class RawSchema(faust.Schema):
    """Schema of a topic whose keys and values stay the broker's bytes, with a
    decode that makes the event directly."""

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def compile(self, app: AppT, **_options: Any) -> Callable[..., Any]:
        event_type = app.conf.Event

        async def decode(message: Message, *, propagate: bool = False) -> EventT:
            return event_type(app, message.key, message.value, message.headers, message)

        return decode


async def take_batches(
    stream: StreamT, max_events: int, within_s: float | Callable[[], float]
) -> AsyncIterator[list[EventT]]:
    """Yield lists of at most `max_events` events of `stream`, each once it is full
    or at the end of the `within_s` window in which its first event arrived.
    `within_s` may be a function, called for each batch when its first event
    arrives.

    A list's events are acked when the body that received it ends normally. After
    an exception or a cancellation they stay unacked, so their offsets are not
    committed and the events are read again after a restart."""
    app = stream.app
    channel: Any = aiter(stream.channel)  # subscribes the topic at the conductor
    queue = channel.queue
    get, get_nowait, empty = queue.get, queue.get_nowait, queue.empty
    loop = asyncio.get_running_loop()
    flow_control = app.flow_control
    acking_topics = app.topics.acking_topics
    add_unacked = app.consumer._unacked_messages.add
    on_message_in = stream._on_message_in
    on_message_out = stream._on_message_out
    # Faust's consumer reads this to warn about partitions whose stream stalls.
    monitor = app.monitor
    inbound_at: dict[Any, float] = (
        monitor.stream_inbound_time if monitor is not None else {}
    )

    while not stream.should_stop:
        try:
            started = loop.time()
            received: list[EventT] = [await get()]
            window_s = within_s() if callable(within_s) else within_s
            # Windows follow each other from when the wait began, as in
            # take_events, so an event that finds the agent idle waits half a
            # window on average instead of a whole one.
            now = loop.time()
            deadline = now + window_s - (now - started) % window_s
            while len(received) < max_events:
                if not empty():
                    received.append(get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        received.append(await get())
                except TimeoutError:
                    break
        except StopAsyncIteration:
            # Faust throws this into the channel's queue when the app stops. The
            # events received so far stay unacked, so they are read again after
            # a restart.
            return

        generation = app.consumer_generation_id
        active = flow_control.is_active()
        now = monotonic()
        events: list[EventT] = []
        for event in received:
            message = event.message
            if not active or message.generation_id != generation:
                continue
            if message.topic in acking_topics and not message.tracked:
                message.tracked = True
                add_unacked(message)
                on_message_in(message.tp, message.offset, message)
            inbound_at[message.tp] = now
            events.append(event)
        if not events:
            continue
        yield events
        for event in events:
            if event.ack():
                message = event.message
                on_message_out(message.tp, message.offset, message)
        # Releases the batch's messages while the next batch is awaited.
        del received, events, event, message
