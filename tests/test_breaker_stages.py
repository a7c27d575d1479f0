"""Workers that run one stage each (COLLECTORS_WORKER_STAGES) in one consumer group,
on real Kafka and Redis, with route-only and deliver-only workers killed mid-stream.

The destination of these tests creates an input id once and replies to every
later POST of that id with status 30100, already present (one of the codes that
app/destination.py counts as delivered). An input posted twice therefore shows up
as a repeated POST with that reply, and an input created twice would show up as
one image held under two ids.

Each test has its own topics, consumer group and database on a Redis server of this
module, so that no other test session can flush the collectors.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from agents.queue_messages import QueuePacker
from agents.stats_flush import funnel_key
from tests.conftest import KAFKA
from tests.fault_fixtures import (
    MODEL,
    CollectorUnderTest,
    PrivateServices,
    Scenario,
    StreamPublisher,
    assert_alive,
    expected_inputs,
    publish_events,
    readiness,
    stream_event,
)
from tests.harness import (
    Destination,
    JsonHandler,
    WorkerProcess,
    end_offsets,
    group_caught_up,
    put_collector,
    serve_http,
    settings_for,
    wait_for,
)

ROUTE = {"COLLECTORS_WORKER_STAGES": "route"}
DELIVER = {"COLLECTORS_WORKER_STAGES": "deliver"}
# Per-input status codes of a Clarifai response: stored, and already present.
INPUT_CREATED = 30000
INPUT_ALREADY_PRESENT = 30100
MIXED_STATUS = 10010
# How long a held POST waits for `release` before the destination responds anyway.
HOLD_MAX_S = 60.0
# How long a POST stays held before its worker is killed: three commit intervals of
# the worker, and less than its 10 s destination timeout.
COMMIT_WINDOW_S = 3.0

_next_database = iter(range(1, 16))


# --- the destination -----------------------------------------------------------------


@dataclass
class IdempotentDestination(Destination):
    """A POST /inputs endpoint that creates each input id once.

    `inputs` contains the first POST of each id, `post_counts` every POST of it, and
    `already_present_replies` the POSTs that got INPUT_ALREADY_PRESENT. While
    `hold` is set, the endpoint stores a request's inputs and then keeps the
    response back until `release` is set, so that the worker's POST stays in
    flight after the destination has created the inputs. `held_ids` are the ids
    of those requests.
    """

    already_present_replies: Counter[str] = field(default_factory=Counter)
    hold: bool = False
    held_requests: int = 0
    held_ids: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)


@contextmanager
def serve_idempotent_destination() -> Iterator[IdempotentDestination]:
    destination = IdempotentDestination()

    class Handler(JsonHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            parts = self.path.strip("/").split("/")
            user_app = f"{parts[2]}/{parts[4]}"
            statuses = []
            with destination.lock:
                destination.requests.append(
                    {"path": self.path, "count": len(body["inputs"])}
                )
                for item in body["inputs"]:
                    input_id = item["id"]
                    destination.post_counts[input_id] += 1
                    if input_id in destination.inputs:
                        destination.already_present_replies[input_id] += 1
                        code = INPUT_ALREADY_PRESENT
                    else:
                        destination.inputs[input_id] = {**item, "app": user_app}
                        code = INPUT_CREATED
                    statuses.append({"id": input_id, "status": {"code": code}})
                holding = destination.hold
                if holding:
                    destination.held_requests += 1
                    destination.held_ids.update(item["id"] for item in statuses)
            if holding:
                destination.release.wait(HOLD_MAX_S)
            codes = {item["status"]["code"] for item in statuses}
            overall = 10000 if codes == {INPUT_CREATED} else MIXED_STATUS
            document = {"status": {"code": overall}, "inputs": statuses}
            try:
                self.send_json(200, document)
            except OSError:
                # The worker was killed while its POST was held.
                pass

    with serve_http(Handler) as url:
        destination.url = url
        try:
            yield destination
        finally:
            # Held POSTs return at once, so that the server can shut down.
            destination.release.set()


# --- the consumer group --------------------------------------------------------------


async def member_topics(group: str) -> list[dict[str, set[int]]]:
    """Return each group member's assigned partitions, by topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members = []
    for response in responses:
        for group_row in response.groups:
            for member in group_row[5]:
                assignment_bytes = member[4]
                topics: dict[str, set[int]] = {}
                if assignment_bytes:
                    assignment = ConsumerProtocolMemberAssignment.decode(
                        assignment_bytes
                    )
                    for topic, numbers in assignment.assignment:
                        if numbers:
                            topics.setdefault(topic, set()).update(numbers)
                members.append(topics)
    return members


async def committed_offsets(group: str, topic: str) -> dict[int, int]:
    """Return the group's committed offset of each partition of `topic` that has
    one."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        tp.partition: metadata.offset
        for tp, metadata in committed.items()
        if tp.topic == topic and metadata.offset >= 0
    }


# --- one deployment per test ---------------------------------------------------------


@dataclass
class Deployment:
    scenario: Scenario
    destination: IdempotentDestination
    input_partitions: int
    internal_partitions: int

    @property
    def group(self) -> str:
        return self.scenario.name

    @property
    def queue_topic(self) -> str:
        return f"{self.group}-queue"

    @property
    def retry_topic(self) -> str:
        return f"{self.group}-retry"

    @property
    def dlq_topic(self) -> str:
        return f"{self.group}-predictions.dlq"

    def route_worker(self, label: str) -> WorkerProcess:
        return self.scenario.worker(label, **ROUTE)

    def deliver_worker(self, label: str) -> WorkerProcess:
        return self.scenario.worker(label, **DELIVER)

    async def wait_for_split(
        self, live: list[WorkerProcess], routes: int, delivers: int
    ) -> None:
        """Wait until `routes` members hold every input partition and nothing else,
        and `delivers` members hold every queue and retry partition and nothing
        else."""
        input_topic = self.scenario.input_topic
        description: list[Any] = []

        async def split() -> bool:
            assert_alive(*live)
            members = await member_topics(self.group)
            description[:] = members
            route_members = [m for m in members if set(m) == {input_topic}]
            deliver_members = [
                m for m in members if set(m) == {self.queue_topic, self.retry_topic}
            ]
            if len(members) != routes + delivers:
                return False
            if len(route_members) != routes or len(deliver_members) != delivers:
                return False
            held_inputs = set().union(*(m[input_topic] for m in route_members))
            held_queue = set().union(*(m[self.queue_topic] for m in deliver_members))
            held_retry = set().union(*(m[self.retry_topic] for m in deliver_members))
            input_count = self.input_partitions if routes else 0
            internal_count = self.internal_partitions if delivers else 0
            return (
                len(held_inputs) == input_count
                and len(held_queue) == internal_count
                and len(held_retry) == internal_count
            )

        try:
            await wait_for(
                split, f"{routes} route and {delivers} deliver members", 90.0
            )
        except AssertionError:
            print(f"group members' partitions: {description}")
            raise

    async def dead_letter_count(self) -> int:
        return sum((await end_offsets(KAFKA, self.dlq_topic)).values())

    async def funnel_total(self, step: str) -> int:
        """Sum one funnel step over this deployment's collectors, as the workers
        flushed it to Redis."""
        client = redis.Redis.from_url(
            self.scenario.redis_url, protocol=2, decode_responses=True
        )
        try:
            total = 0
            for collector in self.scenario.collectors:
                stored = await client.hget(funnel_key(collector.key), step)
                total += int(stored or 0)
            return total
        finally:
            await client.aclose()


def app_sharing_partition(key: str, partitions: int) -> str:
    """Return an app id whose collector "all" has the same queue partition as
    `key`, so that route batches pack both collectors into one queue message."""
    packer = QueuePacker(partitions, 1024)
    expected_partition = packer.partition(key)
    for n in range(1000):
        app_id = f"together{n}"
        if packer.partition(f"owner/{app_id}/all") == expected_partition:
            return app_id
    raise AssertionError(
        f"no app id shares queue partition {expected_partition} with {key}"
    )


async def add_collectors(deployment: Deployment) -> None:
    """Watch the stream's model with three collectors: one keeps every input, one a
    deterministic half, and one keeps every input in an app whose collector shares
    the first one's queue partition."""
    shared_app = app_sharing_partition(
        "owner/everything/all", deployment.internal_partitions
    )
    for collector_id, app_id, fraction in (
        ("all", "everything", 1.0),
        ("half", "sampled", 0.5),
        ("all", shared_app, 1.0),
    ):
        record = await put_collector(
            deployment.scenario.redis_url,
            user_id="owner",
            app_id=app_id,
            id=collector_id,
            model_user_id=MODEL[0],
            model_app_id=MODEL[1],
            model_id=MODEL[2],
            pre_queue_random_sample=fraction,
        )
        deployment.scenario.collectors.append(
            CollectorUnderTest(record.key, app_id, fraction)
        )


@pytest.fixture(scope="module")
def private_redis(
    services: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateServices]:
    redis_server = PrivateServices(
        tmp_path_factory.mktemp("stages-redis"), kafka=False, redis=True
    )
    redis_server.up()
    try:
        yield redis_server
    finally:
        redis_server.down()


@pytest.fixture
async def deployment(
    private_redis: PrivateServices, tmp_path: Path
) -> AsyncIterator[Deployment]:
    name = f"st{os.urandom(5).hex()}"
    redis_url = private_redis.redis_url(next(_next_database))
    with serve_idempotent_destination() as destination:
        scenario = Scenario(name, KAFKA, redis_url, destination, tmp_path)
        settings = settings_for(scenario.environment(0))
        deployed = Deployment(
            scenario,
            destination,
            settings.input_partitions,
            settings.internal_partitions,
        )
        try:
            await scenario.create_topics()
            await add_collectors(deployed)
            yield deployed
        finally:
            scenario.stop_all()


# --- checks --------------------------------------------------------------------------


async def finish_exactly_once(
    deployment: Deployment, publisher: StreamPublisher, live: list[WorkerProcess]
) -> None:
    """Wait for every expected input and every committed offset, then check that
    each expected input was created once, under its expected id, and nothing
    else was created or dead-lettered."""
    result = await deployment.scenario.finish(
        "stages", publisher, live, deadline_s=120.0
    )
    assert result.inputs_delivered == result.inputs_expected
    assert await deployment.dead_letter_count() == 0


async def publish_and_wait_for_progress(
    deployment: Deployment,
    live: list[WorkerProcess],
    count: int,
    progress: int,
) -> StreamPublisher:
    """Start a stream of `count` events and return once `progress` inputs have
    reached the destination."""
    publisher = deployment.scenario.publisher(count, rate=60.0).start()
    await deployment.scenario.wait_for_progress(
        progress, live, f"{progress} inputs delivered"
    )
    return publisher


# --- the tests -----------------------------------------------------------------------


async def test_route_and_deliver_workers_split_group(
    deployment: Deployment,
) -> None:
    route = deployment.route_worker("route").start()
    deliver = deployment.deliver_worker("deliver").start()
    live = [route, deliver]
    await deployment.wait_for_split(live, routes=1, delivers=1)

    publisher = deployment.scenario.publisher(300, rate=300.0).start()
    await finish_exactly_once(deployment, publisher, live)

    # Without a fault, no offset is read twice, so no input is posted twice.
    destination = deployment.destination
    with destination.lock:
        repeated = {i: n for i, n in destination.post_counts.items() if n > 1}
    assert repeated == {}
    # The group split did not change while the stream ran.
    await deployment.wait_for_split(live, routes=1, delivers=1)
    for worker in live:
        port = deployment.scenario.web_port(worker)
        status, body = await readiness(port)
        assert status == 200, body
        async with httpx.AsyncClient(timeout=5.0) as client:
            health = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert health.status_code == 200, health.text


async def test_route_worker_killed_midstream(deployment: Deployment) -> None:
    first_route = deployment.route_worker("route-1").start()
    deliver = deployment.deliver_worker("deliver").start()
    await deployment.wait_for_split([first_route, deliver], routes=1, delivers=1)
    publisher = await publish_and_wait_for_progress(
        deployment, [first_route, deliver], count=300, progress=30
    )

    first_route.kill()
    print(f"route worker killed after {len(publisher.sent)} of 300 events were sent")
    second_route = deployment.route_worker("route-2").start()
    live = [second_route, deliver]
    await finish_exactly_once(deployment, publisher, live)
    await deployment.wait_for_split(live, routes=1, delivers=1)


async def test_deliver_worker_killed_mid_post(
    deployment: Deployment,
) -> None:
    route = deployment.route_worker("route").start()
    first_deliver = deployment.deliver_worker("deliver-1").start()
    await deployment.wait_for_split([route, first_deliver], routes=1, delivers=1)
    publisher = await publish_and_wait_for_progress(
        deployment, [route, first_deliver], count=300, progress=30
    )

    destination = deployment.destination
    destination.hold = True

    async def post_in_flight() -> bool:
        assert_alive(route, first_deliver)
        with destination.lock:
            return destination.held_requests > 0

    await wait_for(post_in_flight, "a POST held in flight")
    # The worker commits acknowledged offsets every second (broker_commit_interval),
    # so a worker that acknowledged a queue message before its POST got a response
    # would have committed it before this kill.
    await asyncio.sleep(COMMIT_WINDOW_S)
    assert_alive(route, first_deliver)
    first_deliver.kill()
    with destination.lock:
        held_ids = set(destination.held_ids)
        held_requests = destination.held_requests
    print(
        f"deliver worker killed with {held_requests} POSTs of {len(held_ids)} "
        f"inputs held, after {len(publisher.sent)} of 300 events were sent"
    )
    destination.hold = False
    destination.release.set()

    second_deliver = deployment.deliver_worker("deliver-2").start()
    live = [route, second_deliver]
    await finish_exactly_once(deployment, publisher, live)

    # The killed worker never got a response to the held POSTs, so it committed none
    # of their queue offsets. The new worker posted those inputs again, and the
    # destination replied that they were already present.
    with destination.lock:
        reposted = set(destination.already_present_replies)
    assert held_ids
    assert held_ids <= reposted, sorted(held_ids - reposted)[:5]

    async def counted_present() -> bool:
        assert_alive(*live)
        return await deployment.funnel_total("already_present") > 0

    await wait_for(counted_present, "the new worker's already_present count")
    assert await deployment.funnel_total("failed") == 0


async def test_stage_alone_leaves_other_topics(deployment: Deployment) -> None:
    scenario = deployment.scenario
    events = [stream_event(scenario.name, n) for n in range(100)]
    await publish_events(KAFKA, scenario.input_topic, events)

    # A deliver-only worker alone: it delivers a message written to the queue
    # topic, and never reads the input topic.
    first_deliver = deployment.deliver_worker("deliver-1").start()
    await deployment.wait_for_split([first_deliver], routes=0, delivers=1)
    marker = await send_marker(deployment)

    async def marker_committed() -> bool:
        assert_alive(first_deliver)
        delivered = marker in deployment.destination.snapshot()
        return delivered and await group_caught_up(
            KAFKA, deployment.group, [deployment.queue_topic]
        )

    await wait_for(marker_committed, "the queue message delivered and committed")
    assert await committed_offsets(deployment.group, scenario.input_topic) == {}
    assert set(deployment.destination.snapshot()) == {marker}
    queue_committed = await committed_offsets(deployment.group, deployment.queue_topic)
    first_deliver.stop()

    # A route-only worker alone: it routes every event and never reads the queue.
    route = deployment.route_worker("route").start()
    await deployment.wait_for_split([route], routes=1, delivers=0)

    async def routed() -> bool:
        assert_alive(route)
        return await group_caught_up(KAFKA, deployment.group, [scenario.input_topic])

    await wait_for(routed, "every input event routed and committed")
    queued = await end_offsets(KAFKA, deployment.queue_topic)
    assert sum(queued.values()) > 1
    assert (
        await committed_offsets(deployment.group, deployment.queue_topic)
        == queue_committed
    )
    assert set(deployment.destination.snapshot()) == {marker}

    # A deliver worker beside the route worker delivers what waited on the queue.
    second_deliver = deployment.deliver_worker("deliver-2").start()
    live = [route, second_deliver]
    expected = expected_inputs(scenario.collectors, [e for e, _ in events])
    expected[marker] = ("owner/everything", marker)

    async def delivered() -> bool:
        assert_alive(*live)
        return set(expected) <= set(deployment.destination.snapshot())

    await wait_for(delivered, "every queued input after the deliver worker started")

    async def committed() -> bool:
        assert_alive(*live)
        return await group_caught_up(KAFKA, deployment.group, scenario.topics)

    await wait_for(committed, "every offset committed")
    destination = deployment.destination
    assert set(destination.snapshot()) == set(expected)
    with destination.lock:
        repeated = {i: n for i, n in destination.post_counts.items() if n > 1}
    assert repeated == {}
    assert await deployment.dead_letter_count() == 0


async def send_marker(deployment: Deployment) -> str:
    """Write a queue message with one item for collector owner/everything/all to
    the queue topic; return the item's destination id."""
    marker = f"marker-{deployment.group}"
    item = {
        "id": marker,
        "event_id": f"e-{marker}",
        "created_at": time.time(),
        "input": {
            "id": marker,
            "data": {"image": {"url": f"https://images.example/{marker}.jpg"}},
        },
    }
    value = orjson.dumps(
        {"batches": [{"collector": "owner/everything/all", "items": [item]}]}
    )
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
    await producer.start()
    try:
        await (
            await producer.send(
                deployment.queue_topic, value=value, key=b"owner/everything/all"
            )
        )
    finally:
        await producer.stop()
    return marker
