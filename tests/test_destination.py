"""The destination client against an HTTP server run by the test."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app import destination as destination_module
from app.destination import MAX_INPUTS_PER_REQUEST, DeliveryError, Destination
from app.http1 import AiohttpClient, HttpClient


@pytest.fixture(autouse=True, params=["lean", "aiohttp"])
def http_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test with both HTTP clients (COLLECTORS_HTTP_CLIENT)."""
    if request.param == "aiohttp":
        monkeypatch.setattr(destination_module, "HttpClient", AiohttpClient)
    return str(request.param)


class Script:
    """Responses to send, in order: (HTTP status, JSON document, extra headers).

    `delays_s` lists how long to wait before each response, in order (no wait once
    it is empty). `peak_in_flight` is the max number of requests in progress at once.
    """

    def __init__(
        self, answers: list[tuple[int, dict[str, Any], dict[str, str]]]
    ) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self.delays_s: list[float] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak_in_flight = 0
        # Set at teardown, so that delayed responses are sent at once.
        self.released = threading.Event()


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests.append(
                    {
                        "path": self.path,
                        "auth": self.headers["Authorization"],
                        "body": body,
                    }
                )
                if script.answers:
                    answer = script.answers.pop(0)
                else:
                    answer = (200, {"status": {"code": 10000}}, {})
                delay_s = script.delays_s.pop(0) if script.delays_s else 0.0
                script.in_flight += 1
                script.peak_in_flight = max(script.peak_in_flight, script.in_flight)
            script.released.wait(delay_s)
            # Stop counting before the response goes out. The client may start its
            # next request as soon as it has the response, before this thread runs
            # again.
            with script.lock:
                script.in_flight -= 1
            try:
                self._send(body, *answer)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and closed the connection

        def _send(
            self,
            body: dict[str, Any],
            status: int,
            document: dict[str, Any],
            headers: dict[str, str],
        ) -> None:
            if document == {"echo": True}:
                document = {"status": {"code": 10000}, "inputs": body["inputs"]}
            payload = json.dumps(document).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.server_address[1]}", script
    script.released.set()
    http.shutdown()
    http.server_close()


def inputs(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"in-{n}", "data": {"image": {"url": f"u{n}"}}} for n in range(count)
    ]


async def test_destination_posts_in_chunks_of_128(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(200, {"echo": True}, {}) for _ in range(3)]
    destination = Destination(url, give_up_s=5)
    result = await destination.post_inputs("u", "a", "secret", inputs(300))
    await destination.aclose()
    assert result.posted == 300
    assert [len(r["body"]["inputs"]) for r in script.requests] == [128, 128, 44]
    assert MAX_INPUTS_PER_REQUEST == 128
    assert {r["path"] for r in script.requests} == {"/v2/users/u/apps/a/inputs"}
    assert {r["auth"] for r in script.requests} == {"Key secret"}


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503])
async def test_destination_retries_transient_status(
    server: tuple[str, Script], status: int
) -> None:
    url, script = server
    script.answers = [
        (status, {"status": {"code": 10020}}, {}),
        (200, {"echo": True}, {}),
    ]
    destination = Destination(url, give_up_s=10, backoff_base_s=0.01)
    result = await destination.post_inputs("u", "a", "k", inputs(2))
    await destination.aclose()
    assert result.posted == 2
    assert result.attempts == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_destination_does_not_retry_client_error(
    server: tuple[str, Script], status: int
) -> None:
    url, script = server
    script.answers = [(status, {"status": {"code": 11102, "description": "bad"}}, {})]
    destination = Destination(url, give_up_s=10, backoff_base_s=0.01)
    with pytest.raises(DeliveryError) as caught:
        await destination.post_inputs("u", "a", "k", inputs(1))
    await destination.aclose()
    assert caught.value.retriable is False
    assert caught.value.http_status == status
    assert len(script.requests) == 1


async def test_destination_counts_existing_ids_as_delivered(
    server: tuple[str, Script],
) -> None:
    url, script = server
    duplicate = {
        "status": {"code": 10010},
        "inputs": [
            {"id": "in-0", "status": {"code": 30100}},
            {"id": "in-1", "status": {"code": 30000}},
        ],
    }
    script.answers = [(200, duplicate, {})]
    destination = Destination(url, give_up_s=5)
    result = await destination.post_inputs("u", "a", "k", inputs(2))
    await destination.aclose()
    assert result.posted == 1
    assert result.already_present == 1
    assert result.present_ids == {"in-0"}


async def test_destination_names_present_inputs_without_ids_by_position(
    server: tuple[str, Script],
) -> None:
    url, script = server
    mixed = {
        "status": {"code": 10010},
        "inputs": [{"status": {"code": 10000}}, {"status": {"code": 30100}}],
    }
    everything_present = {"status": {"code": 40010}}
    script.answers = [(200, mixed, {}), (409, everything_present, {})]
    destination = Destination(url, give_up_s=5)
    first = await destination.post_inputs("u", "a", "k", inputs(2))
    second = await destination.post_inputs("u", "a", "k", inputs(3))
    await destination.aclose()
    assert (first.posted, first.present_ids) == (1, {"in-1"})
    assert (second.posted, second.present_ids) == (0, {"in-0", "in-1", "in-2"})


async def test_destination_all_duplicates_on_4xx_is_delivered(
    server: tuple[str, Script],
) -> None:
    url, script = server
    answer = {
        "status": {"code": 40010},
        "inputs": [{"id": "in-0", "status": {"code": 40010}}],
    }
    script.answers = [(409, answer, {})]
    destination = Destination(url, give_up_s=5)
    result = await destination.post_inputs("u", "a", "k", inputs(1))
    await destination.aclose()
    assert result.already_present == 1
    assert len(script.requests) == 1


async def test_destination_honours_retry_after(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [
        (429, {"status": {"code": 11005}}, {"Retry-After": "1"}),
        (200, {"echo": True}, {}),
    ]
    destination = Destination(url, give_up_s=10, backoff_base_s=0.001)
    result = await destination.post_inputs("u", "a", "k", inputs(1))
    await destination.aclose()
    assert result.attempts == 2
    assert result.latency_s >= 1.0


async def test_destination_gives_up_after_deadline(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, {"status": {"code": 10020}}, {}) for _ in range(100)]
    destination = Destination(
        url, give_up_s=0.5, backoff_base_s=0.05, backoff_max_s=0.1
    )
    with pytest.raises(DeliveryError) as caught:
        await destination.post_inputs("u", "a", "k", inputs(1))
    await destination.aclose()
    assert caught.value.retriable is True
    assert caught.value.attempts == len(script.requests)
    assert len(script.requests) >= 2


async def test_destination_connection_refused_is_retriable() -> None:
    destination = Destination("http://127.0.0.1:1", give_up_s=0.3, backoff_base_s=0.05)
    with pytest.raises(DeliveryError) as caught:
        await destination.post_inputs("u", "a", "k", inputs(1))
    await destination.aclose()
    assert caught.value.retriable is True
    assert "cannot reach" in str(caught.value)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_destination_does_not_follow_redirect(
    server: tuple[str, Script], status: int
) -> None:
    url, script = server
    elsewhere = f"{url}/v2/users/u/apps/elsewhere/inputs"
    script.answers = [(status, {}, {"Location": elsewhere})]
    destination = Destination(url, give_up_s=5, backoff_base_s=0.01)
    with pytest.raises(DeliveryError) as caught:
        await destination.post_inputs("u", "a", "k", inputs(1))
    await destination.aclose()
    assert caught.value.retriable is False
    assert caught.value.http_status == status
    assert [r["path"] for r in script.requests] == ["/v2/users/u/apps/a/inputs"]


async def test_destination_retries_after_timeout(server: tuple[str, Script]) -> None:
    url, script = server
    script.delays_s = [5.0]
    destination = Destination(url, timeout_s=0.3, give_up_s=5, backoff_base_s=0.01)
    started = time.monotonic()
    result = await destination.post_inputs("u", "a", "k", inputs(1))
    await destination.aclose()
    assert result.attempts == 2
    # The first attempt gave up at the timeout, not when its response came.
    assert time.monotonic() - started < 2.0
    assert len(script.requests) == 2


async def test_destination_timeout_is_retriable(server: tuple[str, Script]) -> None:
    url, script = server
    script.delays_s = [5.0] * 10
    destination = Destination(url, timeout_s=0.2, give_up_s=0.5, backoff_base_s=0.01)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        await destination.post_inputs("u", "a", "k", inputs(1))
    await destination.aclose()
    assert caught.value.retriable is True
    assert caught.value.http_status is None
    assert "timed out" in str(caught.value)
    assert caught.value.attempts >= 2
    assert time.monotonic() - started < 2.0


async def test_destination_caps_requests_in_flight(
    server: tuple[str, Script],
) -> None:
    url, script = server
    script.answers = [(200, {"echo": True}, {}) for _ in range(50)]
    script.delays_s = [0.1] * 50
    destination = Destination(url, give_up_s=10, max_in_flight=4)
    results = await asyncio.gather(
        *(destination.post_inputs("u", "a", "k", [item]) for item in inputs(50))
    )
    await destination.aclose()
    assert [r.posted for r in results] == [1] * 50
    assert [r.attempts for r in results] == [1] * 50
    assert len(script.requests) == 50
    assert script.peak_in_flight <= 4
    # The requests did run concurrently, up to the cap.
    assert script.peak_in_flight == 4


def test_destination_uses_the_chosen_http_client(http_client: str) -> None:
    destination = Destination("http://127.0.0.1:1")
    expected = AiohttpClient if http_client == "aiohttp" else HttpClient
    assert type(destination._http) is expected
    assert type(Destination("http://127.0.0.1:1", http_client="aiohttp")._http) is (
        AiohttpClient
    )
