"""Helpers for the fault tests: private Kafka and Redis instances, a publisher that
keeps publishing through broker outages, the consumer group's membership, and the
tally of what reached the destination.

Fault tests kill and restart real processes. Anything a test stops (a broker, a
Redis server) is a private instance on free ports under the test's tmp_path, so the
shared services of other tests keep running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

from agents.topics import ensure_topics
from tests.conftest import free_port, port_open
from tests.harness import (
    REPO,
    Destination,
    WorkerProcess,
    committed_offsets,
    end_offsets,
    expected_input_id,
    expected_sample,
    group_caught_up,
    output,
    put_collector,
    read_topic,
    serve_destination,
    settings_for,
    wait_for,
    worker_environment,
)

SERVICES_SCRIPT = REPO / "scripts" / "services.sh"

# A SIGKILLed worker keeps its partitions until the broker's session timeout for it
# expires (45 s as the worker configures it). Faust reads BROKER_SESSION_TIMEOUT from
# the environment, and that value overrides the app's, so fault tests use a shorter
# timeout to keep their runtime down. It changes when a dead member is dropped, not
# what the worker commits.
FAST_FAILOVER = {"BROKER_SESSION_TIMEOUT": "10"}


def free_port_pair() -> int:
    """Return a free port whose next port is free too (Kafka's controller port)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and not port_open("127.0.0.1", port + 1):
            return port
    raise RuntimeError("found no two consecutive free ports on 127.0.0.1")


class PrivateServices:
    """Kafka and/or Redis of one test, run by scripts/services.sh under `data_dir`.

    The data survives `kill_*`, `stop_*` and `down`, so `up` restarts an instance
    with the messages and keys it held.
    """

    def __init__(self, data_dir: Path, kafka: bool, redis: bool) -> None:
        self.data_dir = data_dir
        self.kafka_port = free_port_pair() if kafka else 0
        self.redis_port = free_port() if redis else 0
        # SERVICES_ONLY for services.sh: empty manages both.
        self.only = ""
        if not redis:
            self.only = "kafka"
        elif not kafka:
            self.only = "redis"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def redis_url(self, database: int = 0) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{database}"

    def _run(self, command: str, only: str | None = None) -> None:
        environment = {
            **os.environ,
            "SERVICES_DATA_DIR": str(self.data_dir),
            "SERVICES_ONLY": self.only if only is None else only,
            # Unused ports still have to be valid and distinct.
            "KAFKA_PORT": str(self.kafka_port or free_port_pair()),
            "REDIS_PORT": str(self.redis_port or free_port()),
        }
        result = subprocess.run(
            [SERVICES_SCRIPT, command],
            env=environment,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, (
            f"services.sh {command} failed:\n{result.stdout}\n{result.stderr}"
        )

    def up(self, only: str | None = None) -> None:
        self._run("up", only)

    def down(self, only: str | None = None) -> None:
        self._run("down", only)

    def kill_kafka(self) -> None:
        """SIGKILL the broker: no clean shutdown, no flush of unsynced log data."""
        pid_file = self.data_dir / f"kafka-{self.kafka_port}" / "kafka.pid"
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        # The JVM's threads exit one by one after the signal; the listening socket
        # closes with the last of them.
        deadline = time.monotonic() + 30
        while port_open("127.0.0.1", self.kafka_port):
            assert time.monotonic() < deadline, "the broker still listens 30 s later"
            time.sleep(0.1)

    def stop_redis(self) -> None:
        self.down("redis")
        assert not port_open("127.0.0.1", self.redis_port), "Redis still listens"

    def start_redis(self) -> None:
        self.up("redis")

    def pause_redis(self) -> None:
        """SIGSTOP Redis: connections stay open but no command gets a reply."""
        os.kill(self._redis_pid(), signal.SIGSTOP)

    def resume_redis(self) -> None:
        os.kill(self._redis_pid(), signal.SIGCONT)

    def _redis_pid(self) -> int:
        pid_file = self.data_dir / f"redis-{self.redis_port}" / "redis.pid"
        return int(pid_file.read_text())


# --- the stream of events ------------------------------------------------------------

MODEL = ("owner", "models", "classifier")
OUTPUTS_PER_EVENT = 2


def stream_event(run: str, number: int) -> tuple[str, bytes]:
    """Return the id and JSON of event `number`; its inputs are unique to it."""
    event_id = f"{run}-e{number}"
    outputs = [
        output(f"{event_id}-i{index}", MODEL, [("cat", 0.4)])
        for index in range(OUTPUTS_PER_EVENT)
    ]
    document = {
        "id": event_id,
        "created_at": "2026-12-04T10:00:00Z",
        "caller": {"user_id": "caller-1"},
        "outputs": outputs,
    }
    return event_id, orjson.dumps(document)


async def publish_events(
    bootstrap: str,
    topic: str,
    events: list[tuple[str, bytes]],
    key: bytes | None = None,
) -> None:
    """Publish events, keyed by `key` or else by their id, and wait for every
    acknowledgement."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=24 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=value, key=key or event_id.encode())
            for event_id, value in events
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


class StreamPublisher:
    """Publishes events `0..count-1` at about `rate` events/s in a background task.

    A chunk whose publish fails (the broker is down, for example) is published
    again until Kafka acknowledges it, so every event in `sent` is in the topic at
    least once. A retried chunk may be in the topic twice; the worker must treat
    the copies as one event.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        run: str,
        count: int,
        rate: float,
        chunk: int = 20,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.run = run
        self.count = count
        self.rate = rate
        self.chunk = chunk
        self.sent: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> StreamPublisher:
        self._task = asyncio.create_task(self._publish_all())
        return self

    async def wait(self, timeout_s: float = 240.0) -> None:
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), timeout_s)

    def cancel(self) -> None:
        """Stop publishing (the task ends at its next await)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def _publish_all(self) -> None:
        interval_s = self.chunk / self.rate
        producer = await self._started_producer()
        try:
            for start in range(0, self.count, self.chunk):
                began = time.monotonic()
                numbers = range(start, min(start + self.chunk, self.count))
                events = [stream_event(self.run, n) for n in numbers]
                producer = await self._publish_chunk(producer, events)
                self.sent.extend(event_id for event_id, _ in events)
                await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - began)))
        finally:
            await producer.stop()

    async def _started_producer(self) -> AIOKafkaProducer:
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=5,
                request_timeout_ms=10_000,
            )
            try:
                await producer.start()
                return producer
            except KafkaError:
                await producer.stop()
                await asyncio.sleep(1.0)

    async def _publish_chunk(
        self, producer: AIOKafkaProducer, events: list[tuple[str, bytes]]
    ) -> AIOKafkaProducer:
        """Publish until acknowledged; return the producer to use from now on."""
        while True:
            try:
                futures = [
                    await producer.send(self.topic, value=value, key=event_id.encode())
                    for event_id, value in events
                ]
                for future in futures:
                    await future
                return producer
            except KafkaError:
                await producer.stop()
                await asyncio.sleep(1.0)
                producer = await self._started_producer()


# --- a destination that goes away ----------------------------------------------------


class TcpGate:
    """A TCP relay in front of a server. `close` refuses new connections and cuts
    the open ones, as a crashed destination would; `open` listens again on the same
    port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))
        try:
            await asyncio.gather(
                _pipe(client_reader, server_writer), _pipe(server_reader, client_writer)
            )
        finally:
            self._writers.difference_update((client_writer, server_writer))
            client_writer.transport.abort()
            server_writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


# --- what reached the destination ----------------------------------------------------


@dataclass
class Tally:
    """The destination's inputs compared with those the events should produce."""

    events_sent: int
    inputs_expected: int
    inputs_delivered: int
    inputs_missing: int
    # Inputs held more than once in one app, under different ids (as a destination
    # id that is not derived from the collector and the event would cause).
    duplicates_at_destination: int
    # Ids that no collector should have produced from the events sent.
    unexpected_ids: int
    # Inputs whose id was POSTed more than once; allowed (at-least-once delivery
    # with idempotent ids).
    repeated_posts: int
    missing_sample: list[str] = field(default_factory=list)

    def line(self, case: str, elapsed_s: float) -> str:
        return (
            f"fault case {case}: events_sent={self.events_sent} "
            f"inputs_expected={self.inputs_expected} "
            f"delivered={self.inputs_delivered} missing={self.inputs_missing} "
            f"duplicates_at_destination={self.duplicates_at_destination} "
            f"unexpected_ids={self.unexpected_ids} "
            f"repeated_posts={self.repeated_posts} elapsed_s={elapsed_s:.1f}"
        )


@dataclass(frozen=True)
class CollectorUnderTest:
    key: str
    app_id: str
    fraction: float  # the pre-queue random sample; 1.0 keeps every input


def expected_inputs(
    collectors: list[CollectorUnderTest], event_ids: list[str]
) -> dict[str, tuple[str, str]]:
    """Map each expected destination id to (app, input id), using the documented
    id and sampling formulas."""
    expected: dict[str, tuple[str, str]] = {}
    for collector in collectors:
        for event_id in event_ids:
            for index in range(OUTPUTS_PER_EVENT):
                input_id = f"{event_id}-i{index}"
                if collector.fraction < 1.0 and not expected_sample(
                    collector.key, input_id, collector.fraction
                ):
                    continue
                destination_id = expected_input_id(collector.key, event_id, input_id)
                expected[destination_id] = (f"owner/{collector.app_id}", input_id)
    return expected


def tally(
    destination: Destination, expected: dict[str, tuple[str, str]], events_sent: int
) -> Tally:
    with destination.lock:
        received = dict(destination.inputs)
        post_counts = Counter(destination.post_counts)
    # The image URL names the input id, so it finds an input held twice under
    # different destination ids within one app.
    held: Counter[tuple[str, str]] = Counter(
        (item["app"], item["data"]["image"]["url"]) for item in received.values()
    )
    missing = sorted(set(expected) - set(received))
    return Tally(
        events_sent=events_sent,
        inputs_expected=len(expected),
        inputs_delivered=len(set(expected) & set(received)),
        inputs_missing=len(missing),
        duplicates_at_destination=sum(n - 1 for n in held.values() if n > 1),
        unexpected_ids=len(set(received) - set(expected)),
        repeated_posts=sum(1 for n in post_counts.values() if n > 1),
        missing_sample=[str(expected[i]) for i in missing[:5]],
    )


# --- the consumer group and the worker's web port -------------------------------------


async def group_assignment(bootstrap: str, group: str) -> dict[str, set[int]]:
    """Return each member's partitions of the group's input topic, by member id."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members: dict[str, set[int]] = {}
    for response in responses:
        for group_row in response.groups:
            for member in group_row[5]:
                member_id, assignment_bytes = member[0], member[4]
                partitions: set[int] = set()
                if assignment_bytes:
                    assignment = ConsumerProtocolMemberAssignment.decode(
                        assignment_bytes
                    )
                    for topic, numbers in assignment.assignment:
                        if topic == f"{group}-predictions":
                            partitions.update(numbers)
                members[member_id] = partitions
    return members


async def readiness(web_port: int) -> tuple[int, dict[str, Any]]:
    """GET the worker's /readyz; return the status code and the JSON body."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(f"http://127.0.0.1:{web_port}/readyz")
    return response.status_code, response.json()


async def metric_value(web_port: int, name: str) -> float | None:
    """Return the value of an unlabelled metric on the worker's /metrics."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(f"http://127.0.0.1:{web_port}/metrics")
    for line in response.text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def assert_alive(*workers: WorkerProcess) -> None:
    for worker in workers:
        assert worker.process is not None, "the worker was never started"
        assert worker.process.poll() is None, (
            f"the worker exited with {worker.process.returncode}:\n"
            + worker.log_text()[-4000:]
        )


# --- a scenario: collectors, workers, a stream and the final checks ------------------


@dataclass
class Scenario:
    """One fault test's collectors, destination and workers on given services."""

    name: str
    bootstrap: str
    redis_url: str
    destination: Destination
    logs_dir: Path
    extra_environment: dict[str, str] = field(default_factory=dict)
    # Where workers post; the destination's own URL unless a TcpGate is in front.
    destination_url: str = ""
    collectors: list[CollectorUnderTest] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    publishers: list[StreamPublisher] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)

    @property
    def input_topic(self) -> str:
        return f"{self.name}-predictions"

    @property
    def topics(self) -> list[str]:
        return [self.input_topic, f"{self.name}-queue", f"{self.name}-retry"]

    def environment(self, web_port: int, **extra: str) -> dict[str, str]:
        return worker_environment(
            self.name,
            self.redis_url,
            self.destination_url or self.destination.url,
            web_port,
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            **{**FAST_FAILOVER, **self.extra_environment, **extra},
        )

    def worker(self, label: str, **extra: str) -> WorkerProcess:
        """Create (not start) a worker with a web port and log file of its own."""
        worker = WorkerProcess(
            self.environment(free_port(), **extra),
            self.logs_dir / f"worker-{label}.log",
        )
        self.workers.append(worker)
        return worker

    def web_port(self, worker: WorkerProcess) -> int:
        return int(worker.environment["COLLECTORS_WORKER_WEB_PORT"])

    async def create_topics(self) -> None:
        await ensure_topics(settings_for(self.environment(free_port())))

    async def add_collectors(self) -> None:
        """Watch the stream's model with one collector that keeps every input and
        one that keeps a deterministic half, in apps of their own."""
        for collector_id, app_id, fraction in (
            ("all", "everything", 1.0),
            ("half", "sampled", 0.5),
        ):
            record = await put_collector(
                self.redis_url,
                user_id="owner",
                app_id=app_id,
                id=collector_id,
                model_user_id=MODEL[0],
                model_app_id=MODEL[1],
                model_id=MODEL[2],
                pre_queue_random_sample=fraction,
            )
            self.collectors.append(CollectorUnderTest(record.key, app_id, fraction))

    def publisher(self, count: int, rate: float) -> StreamPublisher:
        """Create (not start) a publisher of `count` events to the input topic."""
        publisher = StreamPublisher(
            self.bootstrap, self.input_topic, self.name, count, rate
        )
        self.publishers.append(publisher)
        return publisher

    def delivered_count(self) -> int:
        with self.destination.lock:
            return len(self.destination.inputs)

    async def wait_for_progress(
        self, inputs: int, live: list[WorkerProcess], what: str
    ) -> None:
        """Wait until `inputs` more inputs reach the destination than now."""
        target = self.delivered_count() + inputs

        async def progressed() -> bool:
            assert_alive(*live)
            return self.delivered_count() >= target

        await wait_for(progressed, what)

    async def wait_for_members(
        self, count: int, live: list[WorkerProcess], deadline_s: float = 90.0
    ) -> dict[str, set[int]]:
        """Wait until `count` members share all input partitions; return them."""
        found: dict[str, set[int]] = {}
        partitions = settings_for(self.environment(0)).input_partitions

        async def assigned() -> bool:
            assert_alive(*live)
            found.clear()
            found.update(await group_assignment(self.bootstrap, self.name))
            everything = set().union(*found.values()) if found else set()
            return (
                len(found) == count
                and all(found.values())
                and len(everything) == partitions
            )

        await wait_for(assigned, f"{count} workers holding partitions", deadline_s)
        return dict(found)

    async def finish(
        self,
        case: str,
        publisher: StreamPublisher,
        live: list[WorkerProcess],
        deadline_s: float = 120.0,
    ) -> Tally:
        """Wait for the stream to be published, delivered and committed; return the
        tally after checking that nothing is missing or duplicated."""
        await publisher.wait()
        expected = expected_inputs(self.collectors, publisher.sent)

        async def all_delivered() -> bool:
            assert_alive(*live)
            with self.destination.lock:
                return set(expected) <= set(self.destination.inputs)

        try:
            await wait_for(all_delivered, "every expected input", deadline_s)
        except AssertionError:
            print(tally(self.destination, expected, len(publisher.sent)))
            print(await self.trace_missing(expected))
            raise

        async def committed() -> bool:
            assert_alive(*live)
            return await group_caught_up(self.bootstrap, self.name, self.topics)

        await wait_for(committed, "every offset committed", deadline_s)
        result = tally(self.destination, expected, len(publisher.sent))
        print(result.line(case, time.monotonic() - self.started_at))
        assert result.inputs_missing == 0, result
        assert result.duplicates_at_destination == 0, result
        assert result.unexpected_ids == 0, result
        assert len(set(publisher.sent)) == publisher.count
        return result

    async def trace_missing(self, expected: dict[str, tuple[str, str]]) -> str:
        """Return where the inputs missing at the destination are: the messages of
        the internal topics and the dead-letter topic that contain them, the dead
        letters' error codes, and the group's committed offsets against the topics'
        ends."""
        with self.destination.lock:
            received = set(self.destination.inputs)
        missing = {expected[i][1] for i in set(expected) - received}
        lines = [f"{len(missing)} missing input ids"]

        committed = await committed_offsets(self.bootstrap, self.name)
        dead_letter_topic = f"{self.name}-predictions.dlq"
        for topic in [*self.topics, dead_letter_topic]:
            messages = await read_topic(self.bootstrap, topic)
            holding = []
            codes: Counter[str] = Counter()
            for message in messages:
                value = message.value or b""
                found = [i for i in missing if i.encode() in value]
                if found:
                    holding.append((message.partition, message.offset, len(found)))
                headers = dict(message.headers or [])
                if "error_code" in headers:
                    codes[headers["error_code"].decode(errors="replace")] += 1

            ends = await end_offsets(self.bootstrap, topic)
            positions = {
                partition: getattr(
                    committed.get(TopicPartition(topic, partition)), "offset", None
                )
                for partition in ends
            }
            lines.append(
                f"{topic}: {len(messages)} messages, ends {ends}, committed "
                f"{positions}, holding missing ids (partition, offset, ids) "
                f"{holding[:20]}, error codes {dict(codes)}"
            )
        return "\n".join(lines)

    def stop_all(self) -> None:
        for publisher in self.publishers:
            publisher.cancel()
        for worker in self.workers:
            worker.stop()


@contextmanager
def scenario_with_private_redis(
    tmp_path: Path, name: str, bootstrap: str
) -> Iterator[tuple[Scenario, PrivateServices]]:
    """A scenario whose configuration lives in a Redis server of its own, so that no
    other test session can flush or overwrite it, and that the test may stop."""
    services = PrivateServices(tmp_path / "services", kafka=False, redis=True)
    services.up()
    try:
        with serve_destination() as destination:
            scenario = Scenario(
                name, bootstrap, services.redis_url(), destination, tmp_path
            )
            try:
                yield scenario, services
            finally:
                scenario.stop_all()
    finally:
        services.down()
