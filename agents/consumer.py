"""A Kafka consumer for Faust that hands most messages to the streams without
creating tasks.

faust-streaming's consumer passes every fetched message to the conductor inside
`Service.wait_first`, racing the hand-over against the flow being suspended for a
rebalance. That creates four tasks and an `asyncio.wait` per message. In the
benchmark's Faust floor, an agent that only decodes, they took a quarter of the
time (docs/benchmarks.md). The hand-over
can only block when a stream's buffer is full, flow control is suspended, the
producer's buffer is over its limit or the conductor is rebuilding its index.
`LeanConsumer` checks those first: when none holds, nothing can interrupt the
hand-over and it is awaited directly. Otherwise the message goes through
`wait_first` as before, so a rebalance still drops a hand-over that is waiting.
When the partition's one reader is a stream with a `RawSchema`, as the worker's
agents are, the consumer goes further and puts the event in the stream's queue
itself, as the conductor's callback would, without a coroutine per message.

It also fetches again soon after a stream's buffer pauses partitions, where
Faust's fetch waits up to a second (`LeanConsumer._fetch_wait_s`).

Read offsets, gaps and commits are kept as Faust keeps them, with one change: a
seek back to the committed offsets also moves a partition with no committed
offset, or a committed offset of 0, back to its first record (`seek_to_committed`).
`use_lean_consumer` installs the consumer on an app before anything has created
one, and `use_seeking_consumer` installs Faust's own consumer with that change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

import aiokafka
import faust
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, Message

from agents.lean_streams import RawSchema

logger = logging.getLogger(__name__)

# Messages handed over between two yields to the event loop, as in Faust.
YIELD_EVERY = 100
# The maximum wait of a fetch for new records, when no stream buffer has paused
# a partition and when one has (see `LeanConsumer._fetch_wait_s`).
FETCH_WAIT_S = 1.0
PAUSED_FETCH_WAIT_S = 0.01


async def seek_to_committed(
    consumer: aiokafka.AIOKafkaConsumer,
) -> Mapping[TopicPartition, int | None]:
    """Seek every assigned partition to its committed offset, and return those
    offsets, with None for a partition that has none.

    aiokafka's own `seek_to_committed` moves only the partitions whose committed
    offset is above 0, and leaves the others where the fetcher got to. Faust
    relies on this seek when a fetch returns after a rebalance stopped the flow:
    it drops the records and seeks back to the committed offsets. In a partition
    that nothing has committed yet, the dropped records would never be read again,
    and the next commit would skip them. The worker reads from the earliest offset
    when none is committed, so such a partition goes back to its first record.
    """
    committed: dict[TopicPartition, int | None]
    committed = await consumer.seek_to_committed()
    try:
        for tp, offset in committed.items():
            if offset == 0:
                consumer.seek(tp, 0)
        never_committed = [tp for tp, offset in committed.items() if offset is None]
        if never_committed:
            await consumer.seek_to_beginning(*never_committed)
    except IllegalStateError as error:
        # A rebalance took the partitions meanwhile. The next assignment starts
        # them from their committed offsets.
        logger.info("seek to the committed offsets stopped by a rebalance: %s", error)
    return committed


class SeekingConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's thread around the aiokafka consumer, with `seek_to_committed`."""

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await self.call_thread(seek_to_committed, self._ensure_consumer())
        return cast(Mapping[TP, int], committed)


class SeekingConsumer(aiokafka_driver.Consumer):
    """faust-streaming's aiokafka consumer whose seek back to the committed
    offsets also moves partitions with no committed offset."""

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return SeekingConsumerThread(self, loop=self.loop, beacon=self.beacon)


class LeanConsumer(SeekingConsumer):
    """faust-streaming's aiokafka consumer with a cheaper hand-over per message."""

    _pressure_dropped: asyncio.Event | None = None

    def on_buffer_drop(self, tp: TP) -> None:
        super().on_buffer_drop(tp)
        if self._pressure_dropped is not None:
            self._pressure_dropped.set()

    async def _fetch_wait_s(self) -> float:
        """Return how long the next fetch may wait for records. When a full stream
        buffer has paused every partition, wait first for its pressure to drop.

        Faust pauses a partition when a stream's buffer reaches its high-pressure
        mark, and resumes it once the buffer has drained to its low mark. aiokafka
        fetches no more records of a partition while it still buffers some, so a
        fetch that starts while the partition is paused waits its whole timeout,
        even after the partition resumes. With every partition paused, Faust
        sleeps a second instead of fetching. In the benchmark, a route-only worker
        reading a backlog stalled this way for a second about every 3 s.
        """
        buffered = self._buffered_partitions
        if not buffered:
            return FETCH_WAIT_S
        # Faust empties the set only when the consumer restarts, so a partition
        # revoked while paused would keep every fetch short.
        buffered.intersection_update(self.assignment())
        if not buffered:
            return FETCH_WAIT_S
        if not self._get_active_partitions():
            dropped = self._pressure_dropped
            if dropped is None:
                dropped = self._pressure_dropped = asyncio.Event()
            dropped.clear()
            try:
                await asyncio.wait_for(dropped.wait(), FETCH_WAIT_S)
            except TimeoutError:
                pass
        return PAUSED_FETCH_WAIT_S

    def _hand_over_cannot_block(self) -> Callable[[TP], bool]:
        """Return a predicate on a partition: whether handing one of its messages
        to the streams completes without waiting."""
        app = self.app
        # The conductor's index and lock are not part of its declared type.
        conductor = cast(Any, app.topics)
        flow_control = app.flow_control
        producer_buffer = app.producer.buffer
        max_buffered = producer_buffer.max_messages
        # ProducerBuffer.size reads a setting on every call. Without a producer
        # thread, it is the length of the pending queue.
        producer_buffered: Callable[[], int] = (
            (lambda: producer_buffer.size)
            if app.conf.producer_threaded
            else producer_buffer.pending.qsize
        )
        callback_lock = conductor._tp_to_callback_lock
        channels_of = conductor._tp_index.get
        flow_suspended = self.suspend_flow.is_set

        def cannot_block(tp: TP) -> bool:
            if flow_suspended() or not flow_control.is_active():
                return False
            if callback_lock.locked():
                return False
            if producer_buffered() > max_buffered:
                return False
            return not any(channel.queue.full() for channel in channels_of(tp, ()))

        return cannot_block

    def _direct_hand_over(self) -> Callable[[Any, Message], bool]:
        """Return a function that hands a message to the one channel that reads its
        partition, as the conductor's callback would, without awaiting anything.

        It returns False, having done nothing, when the partition has no channel
        or several, or when the channel's schema is not a `RawSchema`. The
        message then goes through the conductor. It skips the conductor's waits
        for flow control and the producer's buffer, so `_drain_messages` calls it
        only when `_hand_over_cannot_block` holds for the partition.
        """
        app = self.app
        conductor = cast(Any, app.topics)
        channels_of = conductor._tp_index.get
        event_type = app.conf.Event
        topic_buffer_full = app.sensors.on_topic_buffer_full
        on_buffer_full = self.on_buffer_full
        on_buffer_drop = self.on_buffer_drop
        # Partition -> its channel, with the pressure callbacks that the queue
        # keeps by identity, so they are made once per partition.
        routes: dict[TP, tuple[Any, Callable[[], None], Callable[[], None]]] = {}

        def hand_over(tp: Any, message: Message) -> bool:
            channels = channels_of(tp)
            if not channels or len(channels) != 1:
                return False
            (channel,) = channels
            route = routes.get(tp)
            if route is None or route[0] is not channel:
                if not isinstance(channel.schema, RawSchema):
                    return False
                # The callbacks need Faust's TP: the fetched partition is an
                # aiokafka TopicPartition (equal, but of another type), which
                # Faust's sets of partitions reject.
                faust_tp = TP(tp.topic, tp.partition)

                def on_pressure_high() -> None:
                    topic_buffer_full(faust_tp)
                    on_buffer_full(faust_tp)

                def on_pressure_drop() -> None:
                    on_buffer_drop(faust_tp)

                route = routes[faust_tp] = (channel, on_pressure_high, on_pressure_drop)
            message.incref(1)
            key, value, headers = message.key, message.value, message.headers
            event = event_type(app, key, value, headers, message)
            channel.queue.put_nowait_enhanced(
                event, on_pressure_high=route[1], on_pressure_drop=route[2]
            )
            return True

        return hand_over

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover
        # Faust's Fetcher service runs this until the consumer or the fetcher
        # stops. It does what faust.transport.consumer.Consumer._drain_messages
        # does, except for how a message is handed over.
        callback = self.callback
        read_offsets = self._read_offset
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        cannot_block = self._hand_over_cannot_block()
        hand_over_directly = self._direct_hand_over()
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        since_yield = 0
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                fetch_wait_s = await self._fetch_wait_s()
                messages = cast(AsyncIterator[Any], self.getmany(timeout=fetch_wait_s))
                await asyncio.sleep(0)
                if self.should_stop:
                    continue
                async for tp, message in messages:
                    since_yield += 1
                    if since_yield > YIELD_EVERY:
                        since_yield = 0
                        await asyncio.sleep(0)
                    offset = message.offset
                    read_offset = read_offsets[tp]
                    if read_offset is not None and offset < read_offset:
                        continue
                    if (
                        read_offset
                        and offset - read_offset > 1
                        and acks_enabled_for(message.topic)
                    ):
                        await self._add_gap(tp, read_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    free = cannot_block(tp)
                    if not (free and hand_over_directly(tp, message)):
                        await self._hand_over(callback, message, free)
                    read_offsets[tp] = offset
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                logger.info("the broker stopped the consumer while the app stops")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                logger.info("the fetch loop was cancelled while the app stops")
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _hand_over(
        self, callback: Any, message: Message, cannot_block: bool
    ) -> None:
        if cannot_block:
            await callback(message)
        else:
            await self.wait_first(callback(message), self.suspend_flow.wait())


class LeanTransport(aiokafka_driver.Transport):
    Consumer = LeanConsumer


class SeekingTransport(aiokafka_driver.Transport):
    Consumer = SeekingConsumer


def use_lean_consumer(app: faust.App) -> None:
    """Make `app` create a `LeanConsumer`. Call it before the app's consumer
    exists, that is, before the worker starts."""
    app.transport = LeanTransport(app.conf.broker_consumer, app)


def use_seeking_consumer(app: faust.App) -> None:
    """Make `app` create a `SeekingConsumer`: Faust's hand-over, with the seek of
    `seek_to_committed`. Call it before the app's consumer exists."""
    app.transport = SeekingTransport(app.conf.broker_consumer, app)
