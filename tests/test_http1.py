"""The destination's HTTP/1.1 client against raw servers run by the test, which
reply with exactly the bytes each case needs."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from app.http1 import MAX_HEAD_BYTES, HttpClient, HttpError, Origin
from app.settings import Settings
from tests.raw_http import Request
from tests.raw_http import raw_server as raw_server  # a fixture
from tests.tls_helpers import self_signed

OK_BODY = b'{"status":{"code":10000}}'
OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)


async def answer_ok(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(OK)


async def post(client: HttpClient, body: bytes = b"{}", timeout_s: float = 5.0):
    return await client.post(
        "/v2/users/u/apps/a/inputs",
        {"Authorization": "Key k", "Content-Type": "application/json"},
        body,
        timeout_s,
    )


async def test_requests_reuse_one_keep_alive_connection(raw_server) -> None:
    server = await raw_server(answer_ok)
    client = HttpClient(server.url)
    for _ in range(5):
        response = await post(client)
        assert (response.status, response.body) == (200, OK_BODY)
    assert server.connections == 1
    assert len(server.requests) == 5
    await client.aclose()


async def test_request_carries_path_host_length_and_headers(raw_server) -> None:
    server = await raw_server(answer_ok)
    client = HttpClient(server.url + "/prefix/")
    await post(client, b'{"inputs": []}')
    request = server.requests[0]
    assert request.request_line == "POST /prefix/v2/users/u/apps/a/inputs HTTP/1.1"
    assert request.header("Host") == server.url.removeprefix("http://")
    assert request.header("Content-Length") == "14"
    assert request.header("Authorization") == "Key k"
    assert request.body == b'{"inputs": []}'
    await client.aclose()


async def test_response_read_byte_by_byte(raw_server) -> None:
    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        for index in range(len(OK)):
            writer.write(OK[index : index + 1])
            await writer.drain()

    server = await raw_server(slow)
    client = HttpClient(server.url)
    assert (await post(client)).body == OK_BODY
    assert (await post(client)).body == OK_BODY
    await client.aclose()


async def test_chunked_response_with_trailer_is_joined(raw_server) -> None:
    async def chunked(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n"
            b"7\r\n, world\r\n"
            b"0\r\nX-Trailer: yes\r\n\r\n"
        )

    server = await raw_server(chunked)
    client = HttpClient(server.url)
    assert (await post(client)).body == b"hello, world"
    # The connection stays usable after a chunked response.
    assert (await post(client)).body == b"hello, world"
    assert server.connections == 1
    await client.aclose()


async def test_response_without_length_is_read_to_connection_close(
    raw_server,
) -> None:
    async def until_close(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 503 Busy\r\nRetry-After: 7\r\n\r\nbusy")
        await writer.drain()
        writer.close()

    server = await raw_server(until_close)
    client = HttpClient(server.url)
    response = await post(client)
    assert (response.status, response.reason, response.body) == (503, "Busy", b"busy")
    assert response.headers["retry-after"] == "7"
    await post(client)
    assert server.connections == 2
    await client.aclose()


async def test_connection_close_header_opens_a_new_connection(raw_server) -> None:
    async def closing(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        )

    server = await raw_server(closing)
    client = HttpClient(server.url)
    assert (await post(client)).body == b"ok"
    assert (await post(client)).body == b"ok"
    assert server.connections == 2
    await client.aclose()


async def test_reused_connection_closed_before_response_is_replaced_once(
    raw_server,
) -> None:
    # Each connection replies to one request and hangs up on the next one without a
    # word, as a server does when its keep-alive timeout passes while the request
    # is on its way.
    served: set[int] = set()

    async def one_per_connection(
        request: Request, writer: asyncio.StreamWriter
    ) -> None:
        if id(writer) in served:
            writer.close()
            return
        served.add(id(writer))
        writer.write(OK)

    server = await raw_server(one_per_connection)
    client = HttpClient(server.url)
    for _ in range(3):
        assert (await post(client)).status == 200
    # Requests 2 and 3 were each sent on the idle connection first, then again on
    # a new one.
    assert server.connections == 3
    assert len(server.requests) == 5
    await client.aclose()


async def test_idle_connection_closed_by_server_is_not_reused(raw_server) -> None:
    async def one_then_close(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        writer.close()

    server = await raw_server(one_then_close)
    client = HttpClient(server.url)
    for _ in range(3):
        assert (await post(client)).status == 200
        await asyncio.sleep(0.05)
    assert server.connections == 3
    assert len(server.requests) == 3
    await client.aclose()


async def test_closed_mid_response_raises(
    raw_server,
) -> None:
    async def truncated(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    server = await raw_server(truncated)
    client = HttpClient(server.url)
    with pytest.raises(HttpError, match="middle of a response"):
        await post(client)
    assert len(server.requests) == 1
    await client.aclose()


async def test_fresh_connection_closed_before_response_raises(raw_server) -> None:
    async def hang_up(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await raw_server(hang_up)
    client = HttpClient(server.url)
    with pytest.raises(HttpError, match="closed before a response"):
        await post(client)
    # Only an idle connection is replaced. A new one that fails raises.
    assert len(server.requests) == 1
    await client.aclose()


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "malformed chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n",
            "malformed chunked body",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10),
            "response head over",
        ),
    ],
    ids=[
        "protocol",
        "status-code",
        "header",
        "content-length",
        "chunk-size",
        "chunk-end",
        "head-size",
    ],
)
async def test_malformed_response_raises_http_error(
    raw_server, response: bytes, message: str
) -> None:
    async def malformed(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response)

    server = await raw_server(malformed)
    client = HttpClient(server.url)
    with pytest.raises(HttpError, match=message):
        await post(client)
    await client.aclose()


async def test_no_content_response_keeps_connection(
    raw_server,
) -> None:
    async def no_content(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    server = await raw_server(no_content)
    client = HttpClient(server.url)
    assert (await post(client)).body == b""
    assert (await post(client)).status == 204
    assert server.connections == 1
    await client.aclose()


async def test_timeout_discards_the_connection(
    raw_server,
) -> None:
    calls = 0

    async def first_hangs(request: Request, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(2)
        writer.write(OK)

    server = await raw_server(first_hangs)
    client = HttpClient(server.url)
    with pytest.raises(TimeoutError):
        await post(client, timeout_s=0.2)
    assert (await post(client)).status == 200
    assert server.connections == 2
    await client.aclose()


async def test_cancelled_request_does_not_leave_connection_for_reuse(
    raw_server,
) -> None:
    gate = asyncio.Event()
    received = asyncio.Event()

    async def wait_for_gate(request: Request, writer: asyncio.StreamWriter) -> None:
        received.set()
        await gate.wait()
        writer.write(OK)

    server = await raw_server(wait_for_gate)
    client = HttpClient(server.url)
    task = asyncio.create_task(post(client))
    await received.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    # A late answer to the cancelled request must not be read as this one's.
    assert (await post(client)).body == OK_BODY
    assert server.connections == 2
    await client.aclose()


async def test_unsolicited_bytes_on_idle_connection_discard_it(raw_server) -> None:
    async def extra(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")

    server = await raw_server(extra)
    client = HttpClient(server.url)
    assert (await post(client)).body == OK_BODY
    await asyncio.sleep(0.2)
    assert (await post(client)).body == OK_BODY
    assert server.connections == 2
    await client.aclose()


async def test_connection_refused_raises_http_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    client = HttpClient(f"http://127.0.0.1:{port}")
    with pytest.raises(HttpError, match="cannot connect"):
        await post(client)


async def test_https_request_verifies_the_server_certificate(
    raw_server, tmp_path: Path
) -> None:
    cert_path, key_path = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    server = await raw_server(answer_ok, server_context)

    trusting = ssl.create_default_context(cafile=str(cert_path))
    client = HttpClient(server.url, ssl_context=trusting)
    assert (await post(client)).body == OK_BODY
    assert (await post(client)).body == OK_BODY
    assert server.connections == 1
    await client.aclose()

    # The default context does not trust a self-signed certificate.
    untrusting = HttpClient(server.url)
    with pytest.raises(HttpError, match="CERTIFICATE_VERIFY_FAILED"):
        await post(untrusting)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.test", Origin("http", "example.test", 80, "")),
        ("https://example.test/api/", Origin("https", "example.test", 443, "/api")),
        ("http://[::1]:8080", Origin("http", "::1", 8080, "")),
    ],
)
def test_origin_parses_scheme_host_port_and_path(url: str, expected: Origin) -> None:
    assert Origin.parse(url) == expected


def test_host_header_brackets_ipv6_and_drops_default_port() -> None:
    assert Origin.parse("http://[::1]:8080").host_header == "[::1]:8080"
    assert Origin.parse("https://example.test:443").host_header == "example.test"


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://example.test", "http://"])
def test_settings_reject_invalid_destination_url(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTORS_DESTINATION_URL", url)
    with pytest.raises(ValueError, match="COLLECTORS_DESTINATION_URL is invalid"):
        Settings()
