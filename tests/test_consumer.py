"""The lean consumer (agents/consumer.py): the conditions for handing a message
over directly, the seek back to the committed offsets, and a worker whose stream
buffers fill up during a rebalance, which must lose no input and post none twice."""

from __future__ import annotations

import asyncio

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP, Message

from agents.consumer import (
    FETCH_WAIT_S,
    PAUSED_FETCH_WAIT_S,
    LeanConsumer,
    SeekingConsumer,
    SeekingConsumerThread,
    seek_to_committed,
    use_lean_consumer,
)
from agents.lean_streams import RawSchema
from agents.worker import build_worker_app
from app.settings import Settings
from tests.conftest import KAFKA
from tests.fault_fixtures import Scenario, assert_alive
from tests.harness import create_filled_topic


@pytest.mark.parametrize(
    ("setting", "expected"), [("lean", LeanConsumer), ("faust", SeekingConsumer)]
)
def test_consumer_setting_picks_consumer_class(setting: str, expected: type) -> None:
    settings = Settings(COLLECTORS_CONSUMER=setting, COLLECTORS_GROUP="consumer-kind")
    app = build_worker_app(settings)
    assert type(app.consumer) is expected
    # Both keep Faust's consumer, and both seek as `seek_to_committed` does.
    assert isinstance(app.consumer, FaustConsumer)
    assert isinstance(app.consumer._new_consumer_thread(), SeekingConsumerThread)


async def test_seek_moves_uncommitted_partition_to_start(
    services: None, unique_name: str
) -> None:
    topic = f"{unique_name}-seek"
    await create_filled_topic(KAFKA, topic, {0: 10, 1: 10, 2: 10})
    never, at_four, at_zero = (TopicPartition(topic, p) for p in range(3))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA,
        group_id=unique_name,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([never, at_four, at_zero])
        await consumer.commit({at_four: 4, at_zero: 0})
        # The fetcher reads every record from the committed offsets on (the first
        # partition from its start), as a fetch that Faust drops would.
        read = 0
        for _ in range(50):
            if read == 10 + 6 + 10:
                break
            batches = await consumer.getmany(timeout_ms=500)
            read += sum(len(records) for records in batches.values())
        assert read == 10 + 6 + 10

        # aiokafka's seek moves only the partition committed above 0.
        await consumer.seek_to_committed()
        assert await consumer.position(never) == 10
        assert await consumer.position(at_four) == 4
        assert await consumer.position(at_zero) == 10

        committed = await seek_to_committed(consumer)
        assert committed == {never: None, at_four: 4, at_zero: 0}
        assert await consumer.position(never) == 0
        assert await consumer.position(at_four) == 4
        assert await consumer.position(at_zero) == 0

        again = await consumer.getmany(never, timeout_ms=5000)
        assert again[never][0].value == b"0-0"
    finally:
        await consumer.stop()


async def test_direct_hand_over_conditions() -> None:
    app = faust.App(
        "lean-hand-over",
        broker="kafka://127.0.0.1:1",
        stream_buffer_maxsize=3,
        web_enabled=False,
    )
    use_lean_consumer(app)
    topic = app.topic("lean-hand-over", value_serializer="raw")
    tp = TP("lean-hand-over", 0)
    app.topics._tp_index[tp].add(topic)
    consumer = app.consumer
    assert isinstance(consumer, LeanConsumer)
    cannot_block = consumer._hand_over_cannot_block()

    # Faust starts with flow control suspended until the first assignment.
    assert cannot_block(tp) is False
    app.flow_control.resume()
    assert cannot_block(tp) is True
    # A partition that no stream reads has no buffer to fill.
    assert cannot_block(TP("lean-hand-over", 1)) is True

    consumer.suspend_flow.set()
    assert cannot_block(tp) is False
    consumer.suspend_flow.clear()

    async with app.topics._tp_to_callback_lock:
        assert cannot_block(tp) is False

    queue = topic.queue
    while not queue.full():
        queue.put_nowait(object())
    assert cannot_block(tp) is False
    queue.get_nowait()
    assert cannot_block(tp) is True


def fetched_message(offset: int) -> Message:
    """Return a message as the fetcher makes it, whose partition is aiokafka's
    TopicPartition rather than Faust's TP."""
    tp = TopicPartition("lean-direct", 0)
    return Message(
        "lean-direct", 0, offset, 0, 0, [], b"k", b"v%d" % offset, None, 1, 2, tp
    )


async def test_direct_hand_over_pauses_faust_partitions() -> None:
    app = faust.App(
        "lean-direct", broker="kafka://127.0.0.1:1", stream_buffer_maxsize=4
    )
    use_lean_consumer(app)
    consumer = app.consumer
    assert isinstance(consumer, LeanConsumer)
    tp = TP("lean-direct", 0)
    consumer._set_active_tps({tp})
    channel = app.topic("lean-direct", schema=RawSchema())
    app.topics._tp_index[tp].add(channel)
    hand_over = consumer._direct_hand_over()
    fetched = TopicPartition("lean-direct", 0)

    messages = [fetched_message(offset) for offset in range(4)]
    for message in messages:
        assert hand_over(fetched, message) is True
    # The queue reached its high-pressure mark, so the partition is paused,
    # under Faust's TP.
    assert consumer._buffered_partitions == {tp}
    assert all(type(buffered) is TP for buffered in consumer._buffered_partitions)
    assert tp not in consumer._get_active_partitions()

    events = [channel.queue.get_nowait() for _ in messages]
    assert [event.message for event in events] == messages
    assert [event.value for event in events] == [b"v0", b"v1", b"v2", b"v3"]
    assert all(message.refcount == 1 for message in messages)
    # Emptying the queue resumed the partition.
    assert consumer._buffered_partitions == set()
    assert all(type(active) is TP for active in consumer._get_active_partitions())
    assert tp in consumer._get_active_partitions()


async def test_direct_hand_over_declines_other_readers() -> None:
    app = faust.App("lean-direct", broker="kafka://127.0.0.1:1")
    use_lean_consumer(app)
    consumer = app.consumer
    assert isinstance(consumer, LeanConsumer)
    tp = TP("lean-direct", 0)
    hand_over = consumer._direct_hand_over()
    message = fetched_message(0)
    # No channel reads the partition.
    assert hand_over(tp, message) is False
    # A channel whose schema decodes values.
    decoding = app.topic("lean-direct", value_serializer="json")
    app.topics._tp_index[tp].add(decoding)
    assert hand_over(tp, message) is False
    # Two channels: the conductor hands the message to both.
    app.topics._tp_index[tp].add(app.topic("lean-direct", schema=RawSchema()))
    assert hand_over(tp, message) is False
    assert message.refcount == 0
    assert decoding.queue.empty()


def assigned_consumer(
    monkeypatch: pytest.MonkeyPatch, name: str, assignment: set[TP]
) -> LeanConsumer:
    """Return the lean consumer of a new app that is never started, with
    `assignment` (read at each call) as its assigned and active partitions."""
    app = faust.App(name, broker="kafka://127.0.0.1:1", web_enabled=False)
    use_lean_consumer(app)
    consumer = app.consumer
    assert isinstance(consumer, LeanConsumer)
    monkeypatch.setattr(consumer, "assignment", lambda: set(assignment))
    consumer._set_active_tps(assignment)
    return consumer


async def test_fetch_wait_while_partitions_paused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = TP("lean-pause", 0), TP("lean-pause", 1)
    consumer = assigned_consumer(monkeypatch, "lean-pause", {first, second})
    assert await consumer._fetch_wait_s() == FETCH_WAIT_S

    # A full buffer pauses one partition. Fetches go on for the other, with a
    # short wait so that the paused one is read again soon after it resumes.
    consumer.on_buffer_full(first)
    assert consumer._get_active_partitions() == {second}
    assert await consumer._fetch_wait_s() == PAUSED_FETCH_WAIT_S

    # With both paused there is nothing to fetch until the pressure drops.
    consumer.on_buffer_full(second)
    waiting = asyncio.create_task(consumer._fetch_wait_s())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    consumer.on_buffer_drop(first)
    assert await asyncio.wait_for(waiting, 5.0) == PAUSED_FETCH_WAIT_S
    assert consumer._get_active_partitions() == {first}

    consumer.on_buffer_drop(second)
    assert await consumer._fetch_wait_s() == FETCH_WAIT_S


async def test_fetch_wait_forgets_revoked_paused_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    still_assigned, revoked = TP("lean-revoke", 0), TP("lean-revoke", 1)
    assignment = {still_assigned, revoked}
    consumer = assigned_consumer(monkeypatch, "lean-revoke", assignment)
    consumer.on_buffer_full(revoked)
    assert await consumer._fetch_wait_s() == PAUSED_FETCH_WAIT_S

    # A rebalance takes the paused partition away before its buffer drains.
    assignment.discard(revoked)
    assert await consumer._fetch_wait_s() == FETCH_WAIT_S
    assert consumer._buffered_partitions == set()


@pytest.mark.slow
async def test_full_stream_buffers_during_rebalance_lose_nothing(
    scenario: Scenario,
) -> None:
    # Batches of 2 give each stream a buffer of 4 messages, so the consumer finds
    # it full most of the time and hands over through wait_first, also while the
    # second worker's join moves partitions.
    small_buffers = {
        "COLLECTORS_ROUTE_BATCH_MAX": "2",
        "COLLECTORS_DELIVER_BATCH_MAX": "2",
    }
    await scenario.create_topics()
    await scenario.add_collectors()
    first = scenario.worker("first", **small_buffers).start()
    publisher = scenario.publisher(count=1200, rate=100).start()

    await scenario.wait_for_progress(200, [first], "inputs before the join")
    second = scenario.worker("second", **small_buffers).start()
    members = await scenario.wait_for_members(2, [first, second])
    assert all(members.values())
    assert_alive(first, second)

    await scenario.finish(
        "full buffers, second worker joins", publisher, [first, second]
    )
