"""Fixtures for the API tests: a real Redis, the API server in-process and a remote
model served by the test.

Redis: the server at REDIS_URL when it is set, using database 7 (worker tests use 8
to 15), or else a `redis-server` this module starts on a free port. The database is
flushed before every test. The API runs once per session in a background thread
(`serving_in_thread`) on free ports, because clarifai_grpc's stubs block.

Test modules load these fixtures with `pytest_plugins = ("api_fixtures",)`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from api_helpers import Api

from app.api.server import RunningApi, serving_in_thread
from app.settings import Settings

API_TEST_DATABASE = 7
TEST_SECRET = "api-test-secret-not-for-production"
REDIS_START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def api_redis_url() -> Iterator[str]:
    """URL of the Redis database the API tests use."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield f"{configured.rsplit('/', 1)[0]}/{API_TEST_DATABASE}"
        return

    port = free_port()
    directory = tempfile.mkdtemp(prefix="collectors-api-redis-")
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            directory,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/{API_TEST_DATABASE}"
    client = redis.Redis.from_url(url, protocol=2)
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.05)
    client.close()
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


# --- a remote model served by the test ------------------------------------------------


@dataclass
class FakeModel:
    """A Clarifai-compatible PostModelOutputs endpoint on 127.0.0.1.

    It answers every POST with `concepts` as the output data, or with HTTP
    `fail_with` when set, and records each request's path, key and body.
    """

    url: str = ""
    concepts: list[dict[str, Any]] = field(
        default_factory=lambda: [{"id": "remote-cat", "name": "cat", "value": 0.9}]
    )
    fail_with: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _fake_model_handler(model: FakeModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with model.lock:
                model.requests.append(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("Authorization", ""),
                        "body": body,
                    }
                )
                fail_with = model.fail_with
            if fail_with:
                payload = {"status": {"code": 10020, "description": "model failed"}}
                self._send(fail_with, payload)
                return
            outputs = [
                {
                    "status": {"code": 10000},
                    "input": item,
                    "data": {"concepts": model.concepts},
                }
                for item in body.get("inputs", [])
            ]
            self._send(200, {"status": {"code": 10000}, "outputs": outputs})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            content = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="session")
def fake_model_server() -> Iterator[FakeModel]:
    model = FakeModel()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _fake_model_handler(model))
    model.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield model
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake_model(fake_model_server: FakeModel) -> FakeModel:
    """The session's fake model, reset for one test."""
    with fake_model_server.lock:
        fake_model_server.requests.clear()
        fake_model_server.fail_with = None
    return fake_model_server


# --- the API server -------------------------------------------------------------------


@pytest.fixture(scope="session")
def api_settings(api_redis_url: str, fake_model_server: FakeModel) -> Settings:
    return Settings(
        REDIS_URL=api_redis_url,
        COLLECTORS_HTTP_PORT=0,
        COLLECTORS_GRPC_PORT=0,
        COLLECTORS_SECRET_KEY=TEST_SECRET,
        COLLECTORS_MODEL_URL_ALLOWLIST=fake_model_server.url,
        COLLECTORS_MODEL_TIMEOUT_S=5.0,
    )


@pytest.fixture(scope="session")
def api_server(api_settings: Settings) -> Iterator[RunningApi]:
    with serving_in_thread(api_settings) as running:
        yield running


@pytest.fixture
def api(api_server: RunningApi, api_settings: Settings) -> Api:
    """The API on a freshly flushed Redis database."""
    client = redis.Redis.from_url(api_settings.redis_url, protocol=2)
    client.flushdb()
    client.close()
    return Api(api_server, api_settings)
