"""The Faust app: topics, the two agents and the worker's periodic tasks.

Flow: `predictions` -> route (agents/routing.py) -> `collectors-queue`, keyed by
collector -> deliver (agents/delivery.py) -> the destination app. Bad events and
failed deliveries go to `predictions.dlq` (agents/dead_letters.py).

Retries. The deliver agent retries a failing POST for a few seconds only, then
moves the inputs to `collectors-retry` and goes on, so one failing destination
does not hold up the other collectors. The retry agent posts them again after an
exponential, jittered delay until COLLECTORS_DESTINATION_GIVE_UP_S has passed
since the first failure, then dead-letters them with COLLECTOR_POST_INPUT_FAILED.

Acknowledgement. The agents take their batches with `take_batches`
(agents/lean_streams.py), which acks a batch's events only when the loop body ends
normally, and a worker commits only acked offsets. The body ends normally only once
the batch's outcome is durable (queued and acknowledged by Kafka, posted, or
dead-lettered). A batch that is interrupted stays unacked, so its offsets are never
committed and the events are read again after a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust
import orjson
from faust.types import EventT, StreamT

from agents.backlog import Backlog, DeliveryWindow
from agents.consumer import use_lean_consumer, use_seeking_consumer
from agents.dead_letters import DeadLetterWriter
from agents.delivery import Deliverer, FailedDelivery
from agents.errors import INFRASTRUCTURE_ERRORS
from agents.lean_streams import RawSchema, take_batches
from agents.queue_messages import QueuePacker, unpack_queue_message
from agents.routing import Router, RouteResult
from agents.stats import WorkerStats
from agents.stats_flush import install_worker_observability
from app.config_cache import ConfigCache
from app.settings import Settings

logger = logging.getLogger(__name__)

# Max bytes fetched per partition in one fetch request. The consumer buffers up to
# this much for every assigned partition (input, queue and retry topics), so the
# 24 MiB message limit as fetch size lets a worker that catches up on a backlog hold
# hundreds of MiB of records. A record batch larger than the fetch size still
# arrives whole when it is the first of its partition in the response (KIP-74,
# Kafka 0.10.1 and later), so events up to the message limit still pass.
PARTITION_FETCH_BYTES = 1024 * 1024
# How long the route agent routes a batch before it lets the event loop run other
# tasks. A batch of 500 events can take a second with 10,000 collectors.
ROUTE_SLICE_S = 0.01


class TimeSlice:
    """A limit on how long a loop keeps the event loop to itself."""

    def __init__(self, slice_s: float) -> None:
        self.slice_s = slice_s
        self._until = time.monotonic() + slice_s

    async def pause_if_due(self) -> bool:
        """Let the event loop run other tasks once the slice has passed since the
        last pause, and return whether it did."""
        if time.monotonic() < self._until:
            return False
        await asyncio.sleep(0)
        self._until = time.monotonic() + self.slice_s
        return True


def create_app(
    settings: Settings,
    cache: ConfigCache,
    router: Router,
    deliverer: Deliverer,
    stats: WorkerStats,
) -> faust.App:
    """Build the Faust app with its agents; nothing runs until a worker starts it."""
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        autodiscover=False,
        datadir=str(settings.faust_data_dir / settings.consumer_group),
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=PARTITION_FETCH_BYTES,
        producer_max_request_size=settings.max_message_bytes,
        producer_acks=-1,
        producer_linger=0.005,
        broker_commit_interval=1.0,
        broker_session_timeout=45.0,
        broker_heartbeat_interval=3.0,
        broker_request_timeout=90.0,
        stream_buffer_maxsize=settings.route_batch_max * 2,
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=settings.worker_web_port,
        web_in_thread=False,
    )
    if settings.consumer == "lean":
        use_lean_consumer(app)
    else:
        use_seeking_consumer(app)
    predictions = app.topic(
        settings.input_topic,
        schema=RawSchema(),
        partitions=settings.input_partitions,
    )
    queue = app.topic(
        settings.queue_topic,
        schema=RawSchema(),
        partitions=settings.internal_partitions,
    )
    retry = app.topic(
        settings.retry_topic,
        schema=RawSchema(),
        partitions=settings.internal_partitions,
    )
    dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    dead_letters = DeadLetterWriter(dlq)
    packer = QueuePacker(settings.internal_partitions, settings.queue_batch_max_bytes)

    backlog = Backlog(app, settings.input_topic)

    async def route(stream: StreamT[bytes]) -> None:
        await cache.wait_ready()
        async for events in take_batches(
            stream, settings.route_batch_max, settings.batch_within_s
        ):
            backlog.note_taken(events)
            await _run_until_durable(events, _route_batch, dead_letters)

    async def _route_batch(events: Sequence[EventT]) -> None:
        snapshot = cache.snapshot
        result = RouteResult()
        pending: list[Awaitable[Any]] = []
        time_slice = TimeSlice(ROUTE_SLICE_S)
        for event in events:
            before = len(result.dead_letters)
            router.route(event.message.value, snapshot, result)
            for dead_letter in result.dead_letters[before:]:
                pending.append(
                    await dead_letters.send_event(event.message, dead_letter)
                )
            # Lets responses to POSTs, commits and the other agents run.
            await time_slice.pause_if_due()
        # The funnel counts of the extension reach the stats once per batch.
        router.settle()
        for message in packer.pack(result.batches):
            pending.append(
                await queue.send(
                    key=message.key,
                    value=message.value,
                    partition=message.partition,
                    force=True,
                )
            )
            stats.totals["queue_messages_out"] += 1
        await asyncio.gather(*pending)

    # Stage two waits longer for its batches while this worker's stage one reads
    # a backlog (agents/backlog.py).
    delivery_window = DeliveryWindow(
        backlog if "route" in settings.stages else None,
        settings.batch_within_s,
        settings.deliver_window_behind_s,
        behind_records=settings.route_batch_max,
        request_counts=deliverer.request_counts,
    )

    async def deliver(stream: StreamT[bytes]) -> None:
        await cache.wait_ready()
        async for events in take_batches(
            stream, settings.deliver_batch_max, delivery_window
        ):
            if delivery_window.behind:
                stats.totals["delivery_batches_widened"] += 1
            await _run_until_durable(events, _deliver_batch, dead_letters)

    async def _deliver_batch(events: Sequence[EventT]) -> None:
        batches: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        pending: list[Awaitable[Any]] = []
        for event in events:
            stats.totals["queue_messages_in"] += 1
            try:
                for key, items in unpack_queue_message(event.message.value):
                    batches[key].extend(items)
            except (orjson.JSONDecodeError, KeyError, TypeError) as error:
                reason = f"invalid queue message: {error!r}"
                pending.append(
                    await dead_letters.send_raw(
                        event.message, reason, "INVALID_QUEUE_MESSAGE"
                    )
                )
        failures = await deliverer.deliver(batches, cache.snapshot)
        for failure in failures:
            pending.append(await _route_failure(failure, first_failure_at=time.time()))
        await asyncio.gather(*pending)

    async def _route_failure(
        failure: FailedDelivery, first_failure_at: float
    ) -> Awaitable[Any]:
        """Send a failed delivery to the retry topic while retrying may still help,
        else to the dead-letter topic."""
        elapsed_s = time.time() - first_failure_at
        if (
            failure.payload_kind == "inputs"
            and failure.retriable
            and elapsed_s < settings.destination_give_up_s
        ):
            delay_s = random.uniform(
                0.5, min(settings.retry_backoff_max_s, 2.0 ** max(failure.attempts, 1))
            )
            document = {
                "collector": failure.collector_key,
                "inputs": failure.items,
                "attempts": failure.attempts,
                "first_failure_at": first_failure_at,
                "next_attempt_at": time.time() + delay_s,
                "error": failure.reason,
            }
            stats.totals["retries_scheduled"] += 1
            return await retry.send(
                key=failure.collector_key.encode(),
                value=orjson.dumps(document),
                force=True,
            )
        field_name = "inputs" if failure.payload_kind == "inputs" else "items"
        payload = orjson.dumps(
            {"collector": failure.collector_key, field_name: failure.items}
        )
        stats.add_funnel(failure.collector_key, "dead_lettered", len(failure.items))
        source_topic = (
            settings.retry_topic
            if failure.payload_kind == "inputs"
            else settings.queue_topic
        )
        return await dead_letters.send_failed_delivery(
            failure, payload, source_topic, first_failure_at
        )

    async def retry_deliveries(stream: StreamT[bytes]) -> None:
        await cache.wait_ready()
        async for events in take_batches(stream, 50, settings.batch_within_s):
            await _run_until_durable(events, _retry_batch, dead_letters)

    async def _retry_batch(events: Sequence[EventT]) -> None:
        documents = []
        pending: list[Awaitable[Any]] = []
        for event in events:
            try:
                document = orjson.loads(event.message.value)
                documents.append((document["collector"], document["inputs"], document))
            except (orjson.JSONDecodeError, KeyError, TypeError) as error:
                reason = f"invalid retry message: {error!r}"
                pending.append(
                    await dead_letters.send_raw(
                        event.message, reason, "INVALID_RETRY_MESSAGE"
                    )
                )
        if documents:
            due_at = max(float(d.get("next_attempt_at", 0.0)) for _, _, d in documents)
            wait_s = min(due_at - time.time(), settings.retry_backoff_max_s)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        outcomes = await asyncio.gather(
            *(_retry_one(key, inputs, document) for key, inputs, document in documents)
        )
        for failure, document in outcomes:
            if failure is not None:
                first = float(document.get("first_failure_at") or time.time())
                pending.append(await _route_failure(failure, first_failure_at=first))
        await asyncio.gather(*pending)

    async def _retry_one(
        key: str, inputs: list[dict[str, Any]], document: dict[str, Any]
    ) -> tuple[FailedDelivery | None, dict[str, Any]]:
        view = cache.snapshot.by_key.get(key)
        if view is None or not view.record.active:
            stats.add_funnel(key, "dropped_inactive", len(inputs))
            return None, document
        stats.totals["retries_attempted"] += 1
        failure = await deliverer.post(
            view, inputs, settings.destination_inline_retry_s
        )
        if failure is not None:
            attempts = int(document.get("attempts") or 0) + failure.attempts
            failure = dataclasses.replace(failure, attempts=attempts)
        return failure, document

    group = settings.consumer_group
    if "route" in settings.stages:
        app.agent(predictions, name=f"{group}-route", concurrency=1)(route)
    if "deliver" in settings.stages:
        app.agent(queue, name=f"{group}-deliver", concurrency=1)(deliver)
        app.agent(retry, name=f"{group}-retry", concurrency=1)(retry_deliveries)

    @app.task
    async def shorten_fetch_wait() -> None:
        # The consumer thread creates its aiokafka consumer when it starts.
        for _ in range(600):
            tuned = _tune_fetcher(
                app, settings.fetch_max_wait_ms, settings.fetch_min_bytes
            )
            if tuned is not None:
                return
            await asyncio.sleep(0.1)
        logger.warning(
            "the consumer did not start within 60 s, so its fetch wait stays at 1.5 s"
        )

    @app.task
    async def follow_configuration() -> None:
        await cache.run()

    @app.task
    async def freeze_start_up_heap() -> None:
        await cache.wait_ready()
        freeze_heap()

    observability = install_worker_observability(app, settings, cache, stats)

    @app.timer(interval=settings.summary_interval_s)
    async def log_summary() -> None:
        log_summary_line(stats, await observability.lag.refresh())

    app.conf.collectors_stats = stats  # type: ignore[attr-defined]  # read by web views
    app.conf.collectors_observability = observability  # read by web views
    return app


# Attempts at a batch that fails with any other error before its events are tried
# one by one, to find the ones that cause it.
ATTEMPTS_BEFORE_ISOLATING = 3


async def _run_until_durable(
    events: Sequence[EventT],
    process: Callable[[Sequence[EventT]], Awaitable[None]],
    dead_letters: DeadLetterWriter,
) -> None:
    """Run `process` on the batch until its outcome is durable. Only then does the
    agent's loop body end, so that `take_batches` acks the batch's events.

    When another error keeps happening (a bug, or an event that breaks the code),
    each event of the batch runs alone. An event that still fails is dead-lettered
    with PROCESSING_FAILED, so one poison event stops nothing.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            await process(events)
            return
        except INFRASTRUCTURE_ERRORS as error:
            delay_s = min(30.0, 0.5 * 2 ** min(attempt, 6))
            logger.warning(
                "batch of %d events failed on a dependency (attempt %d), retrying "
                "in %.1f s: %r",
                len(events),
                attempt,
                delay_s,
                error,
            )
            await asyncio.sleep(delay_s)
        except Exception as error:
            if attempt < ATTEMPTS_BEFORE_ISOLATING:
                logger.exception(
                    "batch of %d events failed (attempt %d)", len(events), attempt
                )
                await asyncio.sleep(0.5 * attempt)
                continue
            if len(events) > 1:
                for event in events:
                    await _run_until_durable([event], process, dead_letters)
                return
            await _dead_letter_poison(events[0], error, dead_letters)
            return


async def _dead_letter_poison(
    event: EventT, error: Exception, dead_letters: DeadLetterWriter
) -> None:
    message = event.message
    reason = f"processing failed: {error!r}"
    logger.error(
        "dead-lettering the message at %s[%d]@%d: %s",
        message.topic,
        message.partition,
        message.offset,
        reason,
    )
    attempt = 0
    while True:
        attempt += 1
        try:
            await (await dead_letters.send_raw(message, reason, "PROCESSING_FAILED"))
            return
        except INFRASTRUCTURE_ERRORS as send_error:
            logger.warning("cannot write a dead letter yet: %r", send_error)
            await asyncio.sleep(min(30.0, 0.5 * 2 ** min(attempt, 6)))


def _tune_fetcher(
    app: faust.App, fetch_max_wait_ms: int, fetch_min_bytes: int
) -> bool | None:
    """Set how long the broker may hold a fetch, and how many bytes of new records
    complete it before that time.

    faust-streaming 0.15 creates its aiokafka consumer with fetch_max_wait_ms=1500
    and aiokafka's fetch_min_bytes=1, and has no setting for either. The worker
    sets them on the consumer's fetcher, in private attributes. Returns whether
    they were set, or None while the consumer has not started yet.
    """
    thread = getattr(app.consumer, "_thread", None)
    consumer = getattr(thread, "_consumer", None)
    if consumer is None:
        return None
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None:
        return None
    if not hasattr(fetcher, "_fetch_max_wait_ms"):
        logger.warning("cannot set the consumer's fetch wait on this aiokafka version")
        return False
    fetcher._fetch_max_wait_ms = fetch_max_wait_ms
    fetcher._fetch_min_bytes = fetch_min_bytes
    logger.info(
        "consumer fetch wait set to %d ms, fetch minimum to %d bytes",
        fetch_max_wait_ms,
        fetch_min_bytes,
    )
    return True


def freeze_heap() -> int:
    """Move every object tracked by the garbage collector into its permanent
    generation, and return how many there are.

    A worker starts with 110,000 to 140,000 such objects (modules, Faust, the
    compiled configuration) that live as long as it does. Without the freeze, each full
    collection walks all of them. In the benchmark's latency run (6,700
    predictions a second), full collections took 75 to 95 ms about every 4 s
    without the freeze, and at most 6 ms with it.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("froze %d start-up objects out of garbage collection", frozen)
    return frozen


def log_summary_line(stats: WorkerStats, lag: int) -> None:
    """Log the fixed-format INFO summary of the counters since the worker started,
    with the current lag of the partitions assigned to this worker."""
    totals = stats.totals
    funnel = stats.funnel_totals()
    logger.info(
        "summary events_in=%d outputs_in=%d matched=%d enqueued=%d posted=%d "
        "already_present=%d failed=%d dead_lettered=%d lag=%d",
        totals["events_in"],
        totals["outputs_in"],
        funnel["matched"],
        funnel["enqueued"],
        funnel["posted"],
        funnel["already_present"],
        funnel["failed"],
        totals["events_dead_lettered"]
        + totals["outputs_dead_lettered"]
        + funnel["dead_lettered"],
        lag,
    )
