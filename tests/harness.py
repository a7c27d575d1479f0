"""Helpers for end-to-end tests: a worker subprocess, an HTTP destination served by
the test, Kafka reads and waits with generous deadlines."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.models import CollectorRecord
from app.security import SecretBox
from app.settings import Settings
from app.store import Store, connect

REPO = Path(__file__).resolve().parent.parent
TEST_SECRET = "test-secret-not-for-production"
DEADLINE_S = 90.0


def expected_sample(collector_key: str, input_id: str, fraction: float) -> bool:
    """The documented random-sample rule, written again here on purpose."""
    digest = hashlib.sha256(f"{collector_key}/{input_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def expected_input_id(collector_key: str, event_id: str, input_id: str) -> str:
    return hashlib.sha256(
        f"{collector_key}/{event_id}/{input_id}".encode()
    ).hexdigest()[:32]


async def wait_for(
    check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = DEADLINE_S
) -> None:
    """Poll `check` until it returns True; fail naming `what` after the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")


# --- HTTP servers ------------------------------------------------------------------


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler that sends JSON responses and logs no requests."""

    def send_json(self, code: int, document: Any) -> None:
        payload = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_http(handler_class: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler_class` on a free port of 127.0.0.1 from a background thread,
    and yield the server's base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- the destination ---------------------------------------------------------------


@dataclass
class Destination:
    """A Clarifai-compatible POST /inputs endpoint that records what it receives."""

    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    post_counts: Counter[str] = field(default_factory=Counter)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # When set, rejects every POST with this HTTP status (to simulate an outage),
    # or only the POSTs to the apps in `failing_apps` ("user/app") when that is set.
    fail_with: int | None = None
    failing_apps: set[str] = field(default_factory=set)
    url: str = ""

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return dict(self.inputs)


@contextmanager
def serve_destination() -> Iterator[Destination]:
    destination = Destination()

    class Handler(JsonHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            parts = self.path.strip("/").split("/")
            with destination.lock:
                destination.requests.append(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("Authorization"),
                        "count": len(body.get("inputs", [])),
                    }
                )
                user_app = f"{parts[2]}/{parts[4]}"
                failing = (
                    not destination.failing_apps or user_app in destination.failing_apps
                )
                if destination.fail_with is not None and failing:
                    self.send_json(destination.fail_with, {"status": {"code": 10020}})
                    return
                for item in body["inputs"]:
                    destination.post_counts[item["id"]] += 1
                    destination.inputs.setdefault(item["id"], {**item, "app": user_app})
            self.send_json(200, {"status": {"code": 10000}, "inputs": body["inputs"]})

    with serve_http(Handler) as url:
        destination.url = url
        yield destination


# --- the worker --------------------------------------------------------------------


def worker_environment(
    name: str, redis_url: str, destination_url: str, web_port: int, **extra: str
) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": os.environ.get(
            "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"
        ),
        "REDIS_URL": redis_url,
        "COLLECTORS_GROUP": name,
        "COLLECTORS_INPUT_TOPIC": f"{name}-predictions",
        "COLLECTORS_DLQ_TOPIC": f"{name}-predictions.dlq",
        "COLLECTORS_DESTINATION_URL": destination_url,
        "COLLECTORS_WORKER_WEB_PORT": str(web_port),
        "COLLECTORS_SECRET_KEY": TEST_SECRET,
        "COLLECTORS_SUMMARY_INTERVAL_S": "2",
        "COLLECTORS_DESTINATION_GIVE_UP_S": "20",
        **extra,
    }


def settings_for(environment: dict[str, str]) -> Settings:
    keys = [k for k in environment if k.startswith(("COLLECTORS_", "KAFKA_", "REDIS_"))]
    with _patched_environment({k: environment[k] for k in keys}):
        return Settings()


@contextmanager
def _patched_environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class WorkerProcess:
    """`collectors worker` as a subprocess, with its log in a file."""

    def __init__(self, environment: dict[str, str], log_path: Path) -> None:
        self.environment = environment
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            cwd=REPO,
            env=self.environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def log_text(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


# --- configuration and Kafka ---------------------------------------------------------


async def put_collector(redis_url: str, **fields: Any) -> CollectorRecord:
    """Store a collector directly (the API has tests of its own)."""
    fields.setdefault(
        "post_inputs_key_encrypted", SecretBox(TEST_SECRET).encrypt("dest-key")
    )
    record = CollectorRecord(**fields)
    store = Store(connect(redis_url))
    try:
        existing = await store.get_collector(record.user_id, record.app_id, record.id)
        if existing is None:
            await store.create_collectors([record])
        else:
            assert await store.replace_collectors([(existing, record)])
    finally:
        await store.close()
    return record


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partition_ids = [p["partition"] for p in description["partitions"]]
    assert partition_ids, f"topic {topic} does not exist"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in partition_ids]
        offsets = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in offsets.items()}
    finally:
        await consumer.stop()


async def create_filled_topic(
    bootstrap: str, topic: str, records: Mapping[int, int]
) -> None:
    """Create `topic` with a partition per key of `records`, and publish
    records[p] records to partition p, valued `f"{p}-{index}"`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, len(records), 1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, count in records.items():
            for index in range(count):
                value = f"{partition}-{index}".encode()
                await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


async def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, Any]:
    """Return the group's committed offsets (OffsetAndMetadata) by partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()


async def group_caught_up(bootstrap: str, group: str, topics: list[str]) -> bool:
    """Whether the group's committed offsets reach the end of every partition."""
    committed = await committed_offsets(bootstrap, group)
    for topic in topics:
        for partition, end in (await end_offsets(bootstrap, topic)).items():
            metadata = committed.get(TopicPartition(topic, partition))
            position = metadata.offset if metadata is not None else 0
            if end > 0 and position < end:
                return False
    return True


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 5.0) -> list[Any]:
    """Read every message currently in a topic."""
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in ends]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        messages: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while sum(ends.values()) > len(messages) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                messages.extend(records)
        return messages
    finally:
        await consumer.stop()


def event(
    event_id: str,
    outputs: list[dict[str, Any]],
    caller: str = "caller-1",
) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "created_at": "2026-12-04T10:00:00Z",
            "caller": {"user_id": caller},
            "outputs": outputs,
        }
    )


def output(
    input_id: str,
    model: tuple[str, str, str] = ("owner", "models", "classifier"),
    concepts: list[tuple[str, float]] | None = None,
    version: str = "v1",
    metadata: dict[str, Any] | None = None,
    status_code: int = 10000,
) -> dict[str, Any]:
    user_id, app_id, model_id = model
    return {
        "id": f"out-{input_id}",
        "status": {"code": status_code},
        "model": {
            "id": model_id,
            "user_id": user_id,
            "app_id": app_id,
            "model_version": {"id": version},
        },
        "input": {
            "id": input_id,
            "data": {
                "image": {"url": f"https://images.example/{input_id}.jpg"},
                "metadata": metadata or {},
            },
        },
        "data": {
            "concepts": [
                {"id": c, "name": c, "value": v}
                for c, v in (concepts or [("cat", 0.5)])
            ]
        },
    }


@dataclass
class ModelServer:
    """A PostModelOutputs endpoint: concept `keep` scores 0.9 for inputs whose id
    ends in an even digit and 0.1 otherwise. `fail_with` makes it return that HTTP
    status instead."""

    url: str = ""
    authorizations: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    fail_with: int | None = None


def model_score(input_id: str) -> float:
    return 0.9 if int(input_id[-1]) % 2 == 0 else 0.1


@contextmanager
def serve_model() -> Iterator[ModelServer]:
    server_state = ModelServer()

    class Handler(JsonHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            server_state.authorizations.append(self.headers.get("Authorization"))
            server_state.paths.append(self.path)
            if server_state.fail_with is not None:
                document: dict[str, Any] = {"status": {"code": 10020}}
                code = server_state.fail_with
            else:
                input_id = body["inputs"][0]["id"]
                concept = {"id": "keep", "name": "keep", "value": model_score(input_id)}
                document = {
                    "status": {"code": 10000},
                    "outputs": [
                        {
                            "status": {"code": 10000},
                            "input": body["inputs"][0],
                            "data": {"concepts": [concept]},
                        }
                    ],
                }
                code = 200
            self.send_json(code, document)

    with serve_http(Handler) as url:
        server_state.url = url
        yield server_state
