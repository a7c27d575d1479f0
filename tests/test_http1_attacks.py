"""Hostile and malformed HTTP servers against the destination's HTTP/1.1 client
(`app.http1.HttpClient`) and `Destination` on top of it.

Every server here is started by the test on 127.0.0.1. Where RFC 9112 (HTTP/1.1
message syntax) or RFC 9110 (HTTP semantics) sets the rule that a case checks, the
case names the section. The other cases check the client's own contract. The client
raises `HttpError` for a response that it cannot frame or trust, and closes that
connection. `Destination` retries the request after an `HttpError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import logging
import random
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from app import http1
from app.destination import DeliveryError, DeliveryResult, Destination
from app.http1 import HttpClient, HttpError, _Connection
from tests.raw_http import Answer, Request, wait_for_eof
from tests.raw_http import raw_server as raw_server  # a fixture
from tests.tls_helpers import self_signed


def http_response(body: bytes, status: bytes = b"200 OK") -> bytes:
    """Return an HTTP/1.1 response whose body is framed by Content-Length."""
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


OK_BODY = b'{"status":{"code":10000}}'
OK = http_response(OK_BODY)
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


# --- Servers ---------------------------------------------------------------------


async def start_tcp_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
) -> tuple[asyncio.Server, int]:
    """Start a plain asyncio server on 127.0.0.1, and return it and its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def reply(data: bytes, close: bool = False) -> Answer:
    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        if close:
            await writer.drain()
            writer.close()

    return answer


async def answer_ok(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(OK)


async def answer_reset(request: Request, writer: asyncio.StreamWriter) -> None:
    reset(writer)


async def hang_up(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.close()


def write_then_reset(data: bytes) -> Answer:
    """Write `data`, wait 20 ms, then reset the connection."""

    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(0.02)
        reset(writer)

    return answer


def scripted(*answers: bytes | Answer) -> Answer:
    """Answer the server's requests, on any connection, with `answers` in order,
    then with OK. Bytes are written as they are, and an `Answer` is run."""
    queue = list(answers)

    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        step = queue.pop(0) if queue else OK
        if isinstance(step, bytes):
            writer.write(step)
        else:
            await step(request, writer)

    return answer


def per_connection(first: Answer, later: Answer) -> Answer:
    """Answer the first request on each connection with `first`, and every later
    request on that connection with `later`."""
    served: set[asyncio.StreamWriter] = set()

    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        if writer in served:
            await later(request, writer)
            return
        served.add(writer)
        await first(request, writer)

    return answer


async def post(client: HttpClient, body: bytes = b"{}", timeout_s: float = 2.0):
    return await client.post(
        "/v2/users/u/apps/a/inputs",
        {"Authorization": "Key k", "Content-Type": "application/json"},
        body,
        timeout_s,
    )


async def post_once(
    url: str,
    body: bytes = b"{}",
    ssl_context: ssl.SSLContext | None = None,
) -> http1.Response:
    """Post once with a new client, and close the client."""
    client = HttpClient(url, ssl_context=ssl_context)
    try:
        return await post(client, body)
    finally:
        await client.aclose()


async def post_bodies(url: str, count: int) -> list[bytes]:
    """Post `count` requests in turn with one new client, and return their
    bodies."""
    client = HttpClient(url)
    try:
        return [(await post(client)).body for _ in range(count)]
    finally:
        await client.aclose()


async def settle(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Yield to the event loop until `condition()` is true or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    # The conditions count connections on the server side, which no event marks.
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


# --- The connection's parser, fed directly, for every split of a response ------


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def open_connection() -> tuple[_Connection, FakeTransport]:
    connection = _Connection()
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


async def feed(
    pieces: list[bytes], eof: bool = False
) -> tuple[_Connection, FakeTransport, asyncio.Future[http1.Response]]:
    """Send a request on a fresh parser and feed it `pieces` as separate reads."""
    connection, transport = open_connection()
    waiter = connection.send(b"POST / HTTP/1.1\r\n\r\n")
    for piece in pieces:
        connection.data_received(piece)
    if eof:
        connection.eof_received()
    return connection, transport, waiter


CHUNKED = (
    CHUNKED_HEAD + b"5;name=value\r\nhello\r\n"
    b"00007\r\n, world\r\n"
    b"0\r\nX-Trailer: yes\r\n\r\n"
)
SPLIT_CASES = {
    "content-length": (OK, OK_BODY, True),
    "chunked": (CHUNKED, b"hello, world", True),
    "interim": (b"HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\n" + OK, OK_BODY, True),
    "no-content": (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
    "no-reason": (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", b"ok", True),
    "read-to-close": (b"HTTP/1.1 200 OK\r\n\r\nuntil close", b"until close", False),
}


@pytest.mark.parametrize("case", SPLIT_CASES)
async def test_parser_reads_response_split_at_every_byte(case: str) -> None:
    response, expected_body, reusable = SPLIT_CASES[case]
    eof = not reusable
    for cut in range(1, len(response)):
        connection, transport, waiter = await feed(
            [response[:cut], response[cut:]], eof
        )
        assert waiter.done(), f"cut at {cut}"
        assert waiter.result().body == expected_body, f"cut at {cut}"
        assert connection.reusable is reusable, f"cut at {cut}"
        assert transport.closed is not reusable, f"cut at {cut}"
    pieces = [response[index : index + 1] for index in range(len(response))]
    connection, _, waiter = await feed(pieces, eof)
    assert waiter.result().body == expected_body


async def test_parser_reads_response_split_at_every_two_bytes() -> None:
    for first in range(1, len(CHUNKED) - 1):
        for second in range(first + 1, len(CHUNKED)):
            pieces = [CHUNKED[:first], CHUNKED[first:second], CHUNKED[second:]]
            connection, _, waiter = await feed(pieces)
            assert waiter.result().body == b"hello, world", (first, second)
            assert connection.reusable


async def test_parser_closes_on_second_response_in_same_read() -> None:
    connection, transport, waiter = await feed([OK + OK])
    assert waiter.result().body == OK_BODY
    assert connection.reusable is False
    assert transport.closed


# --- Chunked transfer coding ------------------------------------------------


@pytest.mark.parametrize(
    ("size_line", "data"),
    [
        (b"A", b"0123456789"),
        (b"a", b"0123456789"),
        (b"0000000000000000000000000a", b"0123456789"),
        (b"a ; name = value", b"0123456789"),
        (b'a;name="quoted; value"', b"0123456789"),
        (b"a   ", b"0123456789"),
    ],
    ids=["upper", "lower", "leading-zeros", "bws-ext", "quoted-ext", "trailing-ws"],
)
async def test_chunk_size_variants_are_read(size_line: bytes, data: bytes) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
        + size_line
        + b"\r\n"
        + data
        + b"\r\n0\r\n\r\n"
    )
    connection, _, waiter = await feed([response])
    assert waiter.result().body == data
    assert connection.reusable


@pytest.mark.parametrize(
    "size_line",
    [b"FFFFFFFFFFFFFFFFFFFFFFFF", b"2000001"],
    ids=["huge", "just-over"],
)
async def test_chunk_size_over_body_limit_raises(size_line: bytes) -> None:
    _, transport, waiter = await feed([CHUNKED_HEAD + size_line + b"\r\n"])
    with pytest.raises(HttpError, match="response body over"):
        waiter.result()
    assert transport.closed


async def test_chunk_size_line_without_end_raises() -> None:
    _, transport, waiter = await feed([CHUNKED_HEAD + b"0" * 2000])
    with pytest.raises(HttpError, match="malformed chunk size line"):
        waiter.result()
    assert transport.closed


@pytest.mark.parametrize(
    "size_line",
    [b"0x10", b"1_0", b"+10", b"-0"],
    ids=["0x-prefix", "underscore", "plus-sign", "minus-zero"],
)
async def test_chunk_size_accepts_hex_digits_only(size_line: bytes) -> None:
    # RFC 9112 7.1: chunk-size = 1*HEXDIG. Python's int(text, 16) also accepts a
    # sign, "0x" and underscores, so the client checks the digits first.
    response = CHUNKED_HEAD + size_line + b"\r\n0123456789abcdef\r\n0\r\n\r\n"
    _, _, waiter = await feed([response])
    with pytest.raises(HttpError, match="malformed chunk size"):
        waiter.result()


async def test_chunked_trailer_over_limit_raises() -> None:
    # The trailer section counts against MAX_HEAD_BYTES (64 KiB), so a server
    # cannot grow the client's memory until the request's deadline.
    filler = b"a" * (1024 * 1024)
    _, transport, waiter = await feed([CHUNKED_HEAD + b"0\r\nX-T: ", filler, filler])
    assert waiter.done(), "a 2 MiB trailer line is still being buffered"
    with pytest.raises(HttpError):
        waiter.result()
    assert transport.closed


async def test_chunked_trailer_lines_are_skipped(raw_server) -> None:
    trailer = b"".join(b"X-T%d: %d\r\n" % (n, n) for n in range(200))
    server = await raw_server(
        reply(CHUNKED_HEAD + b"2\r\nok\r\n0\r\n" + trailer + b"\r\n")
    )
    assert await post_bodies(server.url, 2) == [b"ok", b"ok"]
    assert server.connections == 1


async def test_chunked_response_byte_by_byte_over_socket(raw_server) -> None:
    async def dribble(request: Request, writer: asyncio.StreamWriter) -> None:
        for index in range(len(CHUNKED)):
            writer.write(CHUNKED[index : index + 1])
            await writer.drain()

    server = await raw_server(dribble)
    assert await post_bodies(server.url, 2) == [b"hello, world", b"hello, world"]
    assert server.connections == 1


# --- Framing headers ----------------------------------------------------------


async def test_transfer_encoding_overrides_content_length(raw_server) -> None:
    # RFC 9112 6.3: Transfer-Encoding overrides Content-Length.
    server = await raw_server(
        reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        )
    )
    assert await post_bodies(server.url, 2) == [b"ok", b"ok"]


@pytest.mark.parametrize(
    "transfer_encoding",
    [b"gzip, chunked", b"chunked, gzip", b"gzip"],
    ids=["gzip-then-chunked", "chunked-not-final", "gzip-only"],
)
async def test_unknown_transfer_coding_raises(transfer_encoding: bytes) -> None:
    # The client sends no TE header and decodes no transfer coding but chunked,
    # so it raises for any other coding list rather than return encoded bytes as
    # the body. RFC 9112 6.3 frames a response whose final coding is not chunked
    # by the close of the connection, never by chunks or Content-Length.
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: "
        + transfer_encoding
        + b"\r\nContent-Length: 7\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    _, transport, waiter = await feed([response])
    assert waiter.done()
    with pytest.raises(HttpError):
        waiter.result()
    assert transport.closed


async def test_equal_duplicate_content_length_is_read(raw_server) -> None:
    server = await raw_server(
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")
    )
    assert await post_bodies(server.url, 2) == [b"ok", b"ok"]
    assert server.connections == 1


@pytest.mark.parametrize(
    "lengths",
    [(b"10", b"2"), (b"2", b"10")],
    ids=["last-shorter", "last-longer"],
)
async def test_conflicting_content_length_raises(
    lengths: tuple[bytes, bytes],
) -> None:
    # RFC 9112 6.3 item 5: differing Content-Length values make the framing
    # invalid, and a user agent must close the connection and discard the
    # response.
    first, last = lengths
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Length: "
        + first
        + b"\r\nContent-Length: "
        + last
        + b"\r\n\r\n0123456789"
    )
    _, transport, waiter = await feed([response])
    assert waiter.done(), "the client waits for a body of the last length"
    with pytest.raises(HttpError, match="Content-Length"):
        waiter.result()
    assert transport.closed


@pytest.mark.parametrize(
    "length",
    [b"2, 2", b"0x2", b"2.0", b"", b"1 0"],
    ids=["list", "hex", "decimal", "empty", "inner-space"],
)
async def test_unusual_content_length_is_rejected(length: bytes) -> None:
    # "2, 2" is a list that RFC 9112 6.3 lets a recipient accept as 2. The
    # client rejects it, which Destination then retries (see
    # test_destination_retries_after_malformed_response).
    response = b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nok"
    _, transport, waiter = await feed([response])
    with pytest.raises(HttpError, match="malformed Content-Length"):
        waiter.result()
    assert transport.closed


async def test_content_length_leading_zeros_are_read() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 0002\r\n\r\nok"
    connection, _, waiter = await feed([response])
    assert waiter.result().body == b"ok"
    assert connection.reusable


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nok",
        b"HTTP/1.1 \xb2\xb2\xb2 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["content-length", "status-code"],
)
async def test_superscript_digit_raises_http_error(
    raw_server, response: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # Latin-1 byte 0xB2 decodes to "²", for which str.isdigit() is true but int()
    # raises ValueError. The client accepts ASCII digits only, and turns any
    # ValueError from its parser into HttpError. A ValueError that escaped
    # data_received would make the event loop log "Fatal error:
    # protocol.data_received() call failed" and abort the transport, and the
    # request would fail as a closed connection, or be sent again on a reused one.
    server = await raw_server(reply(response))
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with pytest.raises(HttpError) as caught:
            await post_once(server.url)
    assert "malformed" in str(caught.value)
    assert not [r for r in caplog.records if r.name == "asyncio"]


async def test_content_length_over_limit_raises(raw_server) -> None:
    server = await raw_server(
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n")
    )
    with pytest.raises(HttpError, match="response body over"):
        await post_once(server.url)


async def test_read_to_close_body_over_limit_raises(
    raw_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "MAX_BODY_BYTES", 1000)

    async def endless(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        for _ in range(20):
            writer.write(b"x" * 100)
            await writer.drain()

    server = await raw_server(endless)
    with pytest.raises(HttpError, match="response body over 1000 bytes"):
        await post_once(server.url)


async def test_head_over_limit_in_one_read_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The head limit also applies to a head that arrives whole in one read (up to
    # 256 KiB on asyncio).
    monkeypatch.setattr(http1, "MAX_HEAD_BYTES", 1000)
    response = (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 5000 + b"\r\nContent-Length: 2\r\n\r\nok"
    )
    _, _, waiter = await feed([response])
    with pytest.raises(HttpError, match="response head over"):
        waiter.result()


# --- Status line and header lines -------------------------------------------


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.1 200 All Good Here"],
    ids=["no-reason", "empty-reason", "spaces-in-reason"],
)
async def test_status_line_reason_variants_are_read(status_line: bytes) -> None:
    response = status_line + b"\r\nContent-Length: 2\r\n\r\nok"
    connection, _, waiter = await feed([response])
    assert waiter.result().status == 200
    assert waiter.result().body == b"ok"
    assert connection.reusable


@pytest.mark.parametrize(
    "code",
    [b"000", b"099", b"20", b"2000"],
    ids=["zero", "below-100", "two-digits", "four-digits"],
)
async def test_invalid_status_code_raises(code: bytes) -> None:
    # RFC 9112 4: status-code = 3DIGIT, and RFC 9110 15 makes values outside
    # 100..599 invalid. The client raises HttpError for them, which Destination
    # retries (see test_destination_rejects_invalid_status).
    response = b"HTTP/1.1 " + code + b" X\r\nContent-Length: 2\r\n\r\n{}"
    _, _, waiter = await feed([response])
    assert waiter.done(), "the parser still waits for a status line"
    with pytest.raises(HttpError, match="malformed status line"):
        waiter.result()


@pytest.mark.parametrize(
    "response",
    [
        b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1  200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n Folded\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["leading-crlf", "double-space", "http2", "lower-case", "fold-no-colon"],
)
async def test_odd_status_or_header_lines_are_rejected(response: bytes) -> None:
    # These are rejected with HttpError, and Destination retries them. For a line
    # that starts with whitespace right after the status line, RFC 9112 2.2 lets
    # a recipient reject the message.
    _, transport, waiter = await feed([response])
    with pytest.raises(HttpError, match="malformed"):
        waiter.result()
    assert transport.closed


async def test_folded_line_is_not_new_header() -> None:
    # RFC 9112 5.2: a line that starts with a space continues the previous field
    # value, so " Content-Length: 9" must not replace the real length 2. The
    # client raises HttpError for any folded line.
    # NOTE: RFC 9112 5.2 requires a user agent to replace each fold with spaces
    # instead. This test accepts either outcome.
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Note: first\r\n"
        b" Content-Length: 9\r\n\r\nok"
    )
    _, _, waiter = await feed([response])
    assert waiter.done(), "the folded line was read as Content-Length: 9"
    if waiter.exception() is None:
        assert waiter.result().body == b"ok"
    else:
        assert isinstance(waiter.exception(), HttpError)


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length:2",
        b"Content-Length : 2",
        b"content-length:   2   ",
        b"CONTENT-LENGTH: 2",
    ],
    ids=["no-space", "space-before-colon", "padded", "upper-case"],
)
async def test_header_spacing_and_case_variants_are_read(header: bytes) -> None:
    response = b"HTTP/1.1 200 OK\r\n" + header + b"\r\n\r\nok"
    _, _, waiter = await feed([response])
    assert waiter.result().body == b"ok"


async def test_lf_only_line_ends_raise_when_server_closes(raw_server) -> None:
    # RFC 9112 2.2 lets a recipient accept a bare LF, but does not require it.
    # The client waits for CRLF CRLF, so this fails at the close (or at the
    # deadline if the server keeps the connection open), and Destination retries.
    server = await raw_server(
        reply(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", close=True)
    )
    with pytest.raises(HttpError, match="middle of a response"):
        await post_once(server.url)


# --- Connection reuse ---------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected_connections"),
    [
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            1,
        ),
        (
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
            1,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 3),
        (b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\nok", 3),
        (
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            1,
        ),
    ],
    ids=["1.0-keep-alive", "1.0-keep-alive-case", "1.0", "1.1-close", "1.1-keep-alive"],
)
async def test_keep_alive_follows_version_and_connection(
    raw_server, response: bytes, expected_connections: int
) -> None:
    # The server keeps every connection open, so only the client decides.
    server = await raw_server(reply(response))
    assert await post_bodies(server.url, 3) == [b"ok", b"ok", b"ok"]
    assert server.connections == expected_connections


@pytest.mark.parametrize(
    "headers",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\n",
    ],
    ids=["1.1-repeated-header", "1.0-both-tokens"],
)
async def test_close_token_prevents_reuse(raw_server, headers: bytes) -> None:
    # RFC 9112 9.6: a client that receives the "close" connection option closes
    # the connection after the response. The client collects the options of
    # every Connection field line, so "close" wins over "keep-alive".
    server = await raw_server(reply(headers + b"Content-Length: 2\r\n\r\nok"))
    assert await post_bodies(server.url, 2) == [b"ok", b"ok"]
    assert server.connections == 2


async def test_no_content_with_body_bytes_closes_connection(raw_server) -> None:
    # A 204 has no body whatever its Content-Length, so the bytes after its head
    # leave the connection in an unknown state.
    server = await raw_server(
        reply(b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\njunk")
    )
    assert await post_bodies(server.url, 2) == [b"", b""]
    assert server.connections == 2


async def test_interim_responses_before_final_are_skipped(raw_server) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: y\r\n\r\n"
    server = await raw_server(reply(interim * 20 + OK))
    assert await post_bodies(server.url, 2) == [OK_BODY, OK_BODY]
    assert server.connections == 1


async def test_close_after_interim_response_not_resent(raw_server) -> None:
    # The client sends a request again only when the server closed a reused
    # connection before any byte of a response, as an idle timeout does. After a
    # 100 Continue the server has the request, so the close raises HttpError.
    server = await raw_server(
        per_connection(answer_ok, reply(b"HTTP/1.1 100 Continue\r\n\r\n", close=True))
    )
    client = HttpClient(server.url)
    assert (await post(client)).status == 200
    with pytest.raises(HttpError, match="middle of a response"):
        await post(client)
    assert len(server.requests) == 2
    await client.aclose()


async def test_reused_connection_reset_before_response_is_replaced(raw_server) -> None:
    server = await raw_server(per_connection(answer_ok, answer_reset))
    client = HttpClient(server.url)
    assert (await post(client)).status == 200
    assert (await post(client)).status == 200
    assert server.connections == 2
    assert len(server.requests) == 3
    await client.aclose()


# --- Resets in the middle of a response ----------------------------------------


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
        CHUNKED_HEAD + b"7\r\npartial\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
    ids=["content-length", "chunked", "head"],
)
async def test_reset_mid_response_raises(raw_server, partial: bytes) -> None:
    server = await raw_server(write_then_reset(partial))
    with pytest.raises(HttpError, match="middle of a response"):
        await post_once(server.url)
    assert len(server.requests) == 1


async def test_reset_mid_read_to_close_body_raises(raw_server) -> None:
    # RFC 9112 8: a body delimited by the close is complete only if the
    # connection closed without an error, so a reset raises HttpError rather
    # than return the bytes read so far.
    server = await raw_server(
        write_then_reset(b'HTTP/1.1 200 OK\r\n\r\n{"status":{"co')
    )
    with pytest.raises(HttpError):
        await post_once(server.url)


async def test_fresh_connection_reset_before_response_raises(raw_server) -> None:
    server = await raw_server(answer_reset)
    with pytest.raises(HttpError, match="closed before a response"):
        await post_once(server.url)
    assert len(server.requests) == 1


# --- Deadlines ------------------------------------------------------------------


async def test_dribbling_server_hits_total_deadline(raw_server) -> None:
    # One byte every 20 ms keeps every read short, but the deadline covers the
    # whole request.
    async def dribble(request: Request, writer: asyncio.StreamWriter) -> None:
        for byte in OK:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    server = await raw_server(dribble)
    client = HttpClient(server.url)
    # The whole response takes over a second, so the deadline ends it.
    with pytest.raises(TimeoutError):
        await post(client, timeout_s=0.2)
    await settle(lambda: server.open_connections == 0)
    assert server.open_connections == 0
    await client.aclose()


async def test_late_response_rest_is_discarded(raw_server) -> None:
    async def stall_midway(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(OK[:20])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(OK[20:])

    server = await raw_server(scripted(stall_midway, http_response(b"second")))
    client = HttpClient(server.url)
    with pytest.raises(TimeoutError):
        await post(client, timeout_s=0.1)
    assert (await post(client)).body == b"second"
    assert server.connections == 2
    await client.aclose()


async def test_response_before_request_body_is_read(raw_server) -> None:
    # The server answers after the head, then reads the 2 MiB body, then serves
    # the next request on the same connection. The client returns the early
    # response and writes the rest of the body before the next request.
    async def early(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
        await writer.drain()
        assert request.reader is not None
        length = int(request.header("Content-Length"))
        request.body = await request.reader.readexactly(length)

    server = await raw_server(early)
    server.read_body = False
    client = HttpClient(server.url)
    big = b"x" * (2 * 1024 * 1024)
    assert (await post(client, body=big)).body == b"early"
    assert (await post(client, body=b"{}")).body == b"early"
    assert [len(r.body) for r in server.requests] == [len(big), 2]
    assert server.connections == 1
    await client.aclose()


async def test_early_close_response_before_body_is_read(raw_server) -> None:
    # A 413 with Connection: close before the body is read. The server closes
    # with unread data, which may reset the connection. The client returns the
    # 413, or raises HttpError if the reset came first, and never hangs.
    server = await raw_server(
        reply(
            b"HTTP/1.1 413 Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            close=True,
        )
    )
    server.read_body = False
    try:
        response = await post_once(server.url, body=b"x" * (4 * 1024 * 1024))
    except HttpError:
        pass
    else:
        assert response.status == 413


# --- Many requests sharing the pool ----------------------------------------------


async def echo_slowly(request: Request, writer: asyncio.StreamWriter) -> None:
    for _ in range(random.randrange(4)):
        await asyncio.sleep(0)
    if random.random() < 0.3:
        await asyncio.sleep(0.002)
    writer.write(http_response(request.body))


async def test_concurrent_requests_get_own_responses(raw_server) -> None:
    random.seed(7)
    server = await raw_server(echo_slowly)
    client = HttpClient(server.url)
    for round_number in range(3):
        bodies = [b"%d-%d" % (round_number, n) for n in range(150)]
        responses = await asyncio.gather(*(post(client, body) for body in bodies))
        assert [r.body for r in responses] == bodies
    # 150 requests at once need 150 connections. The pool keeps 64 and closes
    # the others.
    assert len(client._idle) == http1.MAX_IDLE_CONNECTIONS
    await settle(lambda: server.open_connections == http1.MAX_IDLE_CONNECTIONS)
    assert server.open_connections == http1.MAX_IDLE_CONNECTIONS
    await client.aclose()
    await settle(lambda: server.open_connections == 0)
    assert server.open_connections == 0


async def test_concurrent_requests_with_failures_mixed_in(raw_server) -> None:
    # A fifth of the requests get a reset, a fifth a truncated body, a fifth an
    # answer only after their deadline. No request may get another's response,
    # and no connection may stay open after aclose. Only the late requests have
    # a short deadline, so a slow machine cannot turn another case into a
    # timeout.
    random.seed(11)
    release = asyncio.Event()

    async def mixed(request: Request, writer: asyncio.StreamWriter) -> None:
        kind = int(request.body.split(b"-")[1]) % 5
        body = request.body
        if kind == 0:
            reset(writer)
        elif kind == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n" + body)
            await writer.drain()
            writer.close()
        elif kind == 2:
            await release.wait()
            writer.write(http_response(body))
        else:
            await echo_slowly(request, writer)

    def deadline_s(body: bytes) -> float:
        return 0.1 if int(body.split(b"-")[1]) % 5 == 2 else 30.0

    server = await raw_server(mixed)
    client = HttpClient(server.url)
    for round_number in range(3):
        bodies = [b"%d-%d" % (round_number, n) for n in range(100)]
        results = await asyncio.gather(
            *(post(client, body, timeout_s=deadline_s(body)) for body in bodies),
            return_exceptions=True,
        )
        for body, result in zip(bodies, results, strict=True):
            kind = int(body.split(b"-")[1]) % 5
            if kind in (0, 1):
                assert isinstance(result, HttpError), (body, result)
            elif kind == 2:
                assert isinstance(result, TimeoutError), (body, result)
            else:
                assert not isinstance(result, BaseException), (body, result)
                assert result.body == body
    release.set()
    await client.aclose()
    await settle(lambda: server.open_connections == 0)
    assert server.open_connections == 0


async def test_cancellation_at_every_step(
    raw_server,
) -> None:
    # Every connection answers one request and hangs up on the next, so each
    # request after the first tries an idle connection, then reconnects. The
    # request is cancelled after 0, 1, 2, ... event loop steps, which covers
    # every await in post(), including both connects.
    async def echo_after_three_steps(
        request: Request, writer: asyncio.StreamWriter
    ) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        writer.write(http_response(request.body))

    server = await raw_server(per_connection(echo_after_three_steps, hang_up))
    client = HttpClient(server.url)
    completed = 0
    for steps in range(40):
        task = asyncio.create_task(post(client, b"cancelled-%d" % steps))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
            completed += 1
        except asyncio.CancelledError:
            pass
        body = b"next-%d" % steps
        assert (await post(client, body)).body == body
    # Some requests finished before the cancel reached them.
    assert completed > 0
    assert len(client._idle) <= 1
    await client.aclose()
    await settle(lambda: server.open_connections == 0)
    assert server.open_connections == 0


async def test_aclose_closes_in_flight_connection(raw_server) -> None:
    # aclose closes the idle connections at once. A request in flight at that
    # moment closes its connection when it ends, instead of putting it back in
    # the pool.
    gate = asyncio.Event()

    async def wait_for_gate(request: Request, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        writer.write(OK)

    server = await raw_server(wait_for_gate)
    client = HttpClient(server.url)
    task = asyncio.create_task(post(client))
    await settle(lambda: len(server.requests) == 1)
    await client.aclose()
    gate.set()
    assert (await task).body == OK_BODY
    await settle(lambda: server.open_connections == 0)
    assert server.open_connections == 0


# --- Event loops ------------------------------------------------------------------


class ThreadedKeepAliveServer(socketserver.ThreadingTCPServer):
    """A blocking keep-alive server, independent of any event loop, that answers
    every request with OK."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), self.Handler)
        self.connections = 0

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            server: ThreadedKeepAliveServer = self.server  # type: ignore[assignment]
            server.connections += 1
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = self.rfile.readline()
                    if not line:
                        return
                    head += line
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.rfile.read(length)
                self.wfile.write(OK)


@pytest.fixture
def threaded_server() -> Iterator[ThreadedKeepAliveServer]:
    server = ThreadedKeepAliveServer()
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    ).start()
    yield server
    server.shutdown()
    server.server_close()


LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.mark.parametrize("loop_name", LOOP_FACTORIES)
def test_client_works_after_loop_closed(
    threaded_server: ThreadedKeepAliveServer, loop_name: str
) -> None:
    # The client drops the idle connections of a closed loop without closing
    # them, because transport.close() on a closed asyncio loop raises
    # RuntimeError("Event loop is closed").
    port = threaded_server.server_address[1]
    client = HttpClient(f"http://127.0.0.1:{port}")
    first = LOOP_FACTORIES[loop_name]()
    try:
        assert first.run_until_complete(post(client)).body == OK_BODY
    finally:
        first.close()
    second = LOOP_FACTORIES[loop_name]()
    try:
        assert second.run_until_complete(post(client)).body == OK_BODY
        second.run_until_complete(client.aclose())
    finally:
        second.close()
    assert threaded_server.connections == 2


@pytest.mark.parametrize("loop_name", LOOP_FACTORIES)
def test_client_moves_to_open_second_loop(
    threaded_server: ThreadedKeepAliveServer, loop_name: str
) -> None:
    port = threaded_server.server_address[1]
    client = HttpClient(f"http://127.0.0.1:{port}")
    first = LOOP_FACTORIES[loop_name]()
    second = LOOP_FACTORIES[loop_name]()
    try:
        assert first.run_until_complete(post(client)).body == OK_BODY
        assert second.run_until_complete(post(client)).body == OK_BODY
        assert second.run_until_complete(post(client)).body == OK_BODY
        second.run_until_complete(client.aclose())
        # The first loop runs the close of its connection once it runs again.
        first.run_until_complete(asyncio.sleep(0))
    finally:
        first.close()
        second.close()
    assert threaded_server.connections == 2


@pytest.mark.parametrize("loop_name", LOOP_FACTORIES)
def test_keep_alive_works_on_both_loops(
    threaded_server: ThreadedKeepAliveServer, loop_name: str
) -> None:
    port = threaded_server.server_address[1]
    client = HttpClient(f"http://127.0.0.1:{port}")
    loop = LOOP_FACTORIES[loop_name]()
    try:
        for _ in range(3):
            assert loop.run_until_complete(post(client)).body == OK_BODY
        loop.run_until_complete(client.aclose())
    finally:
        loop.close()
    assert threaded_server.connections == 1


# --- TLS --------------------------------------------------------------------------


@pytest.fixture
def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert_path, key_path = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cafile=str(cert_path))
    return server_context, client_context


async def test_tls_to_plain_http_server_raises(tls_contexts) -> None:
    _, client_context = tls_contexts
    # A plain HTTP server answers the ClientHello with an HTTP error.
    plain, port = await start_tcp_server(
        lambda r, w: w.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    )
    with pytest.raises(HttpError, match="cannot connect"):
        await post_once(f"https://127.0.0.1:{port}", ssl_context=client_context)
    plain.close()


async def test_tls_handshake_never_answered_times_out(tls_contexts) -> None:
    _, client_context = tls_contexts
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await wait_for_eof(reader)
        closed.set()
        writer.close()

    silent_server, port = await start_tcp_server(silent)
    client = HttpClient(
        f"https://127.0.0.1:{port}", connect_timeout_s=0.15, ssl_context=client_context
    )
    with pytest.raises(HttpError, match=r"timed out after 0\.15 s"):
        await post(client, timeout_s=1.0)
    # The half-open TLS connection is closed, not leaked.
    await asyncio.wait_for(closed.wait(), 10.0)

    # A request deadline shorter than the connect timeout raises TimeoutError.
    closed.clear()
    client = HttpClient(
        f"https://127.0.0.1:{port}", connect_timeout_s=2.0, ssl_context=client_context
    )
    with pytest.raises(TimeoutError):
        await post(client, timeout_s=0.1)
    await asyncio.wait_for(closed.wait(), 10.0)
    silent_server.close()


async def test_tls_handshake_reset_raises(tls_contexts) -> None:
    _, client_context = tls_contexts

    async def reset_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await reader.read(10)
        reset(writer)

    server, port = await start_tcp_server(reset_hello)
    with pytest.raises(HttpError, match="cannot connect"):
        await post_once(f"https://127.0.0.1:{port}", ssl_context=client_context)
    server.close()


async def test_tls_wrong_host_name_raises(raw_server, tls_contexts) -> None:
    server_context, client_context = tls_contexts
    server = await raw_server(answer_ok, server_context)
    # The certificate names 127.0.0.1 only, not "localhost".
    port = server.url.rsplit(":", 1)[1]
    with pytest.raises(HttpError, match="cannot connect"):
        await post_once(f"https://localhost:{port}", ssl_context=client_context)


async def test_tls_close_without_notify_ends_body(raw_server, tls_contexts) -> None:
    # RFC 9112 9.8 calls a close without TLS close_notify incomplete. asyncio
    # and uvloop report it as a clean end of stream, so the client takes the body
    # as complete (a NOTE in app/http1.py). For POST /inputs, only a response's
    # per-input statuses could be cut short: its status line has arrived whole.
    server_context, client_context = tls_contexts

    async def truncate(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\n\r\n{"status":{"co')
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.get_extra_info("socket").shutdown(socket.SHUT_RDWR)

    server = await raw_server(truncate, server_context)
    response = await post_once(server.url, ssl_context=client_context)
    assert response.status == 200
    assert response.body == b'{"status":{"co'


async def test_tls_clean_close_ends_read_to_close_body(
    raw_server, tls_contexts
) -> None:
    server_context, client_context = tls_contexts
    server = await raw_server(
        reply(b"HTTP/1.1 200 OK\r\n\r\n" + OK_BODY, close=True), server_context
    )
    response = await post_once(server.url, ssl_context=client_context)
    assert response.body == OK_BODY


# --- The request the client writes ----------------------------------------------


async def test_header_value_with_crlf_raises(raw_server) -> None:
    # RFC 9110 5.5 makes CR and LF invalid in a field value. The client raises
    # ValueError, as aiohttp does, for a line break in the path or in a header
    # name or value, so a header cannot add header lines or a second request.
    server = await raw_server(answer_ok)
    client = HttpClient(server.url)
    with pytest.raises(ValueError):
        await client.post(
            "/v2/users/u/apps/a/inputs",
            {"Authorization": "Key k\r\nX-Injected: yes"},
            b"{}",
            1.0,
        )
    assert all(not r.header("X-Injected") for r in server.requests)
    await client.aclose()


# --- Destination on top of the client ------------------------------------------------


INPUT = [{"id": "in-0", "data": {"image": {"url": "u0"}}}]


async def deliver(url: str, **options: Any) -> DeliveryResult:
    """Post INPUT with a new Destination for `url`, with short timeouts and
    backoff unless `options` set them, and close the Destination."""
    options.setdefault("give_up_s", 2.0)
    options.setdefault("backoff_base_s", 0.001)
    options.setdefault("backoff_max_s", 0.01)
    options.setdefault("timeout_s", 1.0)
    destination = Destination(url, **options)
    try:
        return await destination.post_inputs("u", "a", "k", INPUT)
    finally:
        await destination.aclose()


@pytest.mark.parametrize(
    "retry_after",
    [
        b"0",
        email.utils.format_datetime(
            datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
        ).encode(),
    ],
    ids=["seconds", "past-date"],
)
async def test_destination_retries_5xx_with_retry_after(
    raw_server, retry_after: bytes
) -> None:
    server = await raw_server(
        scripted(
            b"HTTP/1.1 503 Busy\r\nRetry-After: " + retry_after + b"\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
    )
    result = await deliver(server.url)
    assert result.attempts == 2
    assert len(server.requests) == 2


async def test_destination_caps_long_retry_after(raw_server) -> None:
    # Destination caps Retry-After at 3 * backoff_max_s (30 s with the
    # defaults), so a Retry-After of an hour delays the retry by that cap only.
    server = await raw_server(
        scripted(
            b"HTTP/1.1 503 Busy\r\nRetry-After: 3600\r\nContent-Length: 2\r\n\r\n{}"
        )
    )
    started = time.monotonic()
    result = await deliver(server.url, backoff_max_s=0.02, give_up_s=1.0)
    assert result.attempts == 2
    # At least the capped delay, and far less than the hour asked for.
    assert 0.06 <= time.monotonic() - started < 60


@pytest.mark.parametrize("status", [b"301", b"307", b"308"])
async def test_destination_does_not_follow_3xx(raw_server, status: bytes) -> None:
    server = await raw_server(
        reply(
            b"HTTP/1.1 " + status + b" Moved\r\nLocation: http://127.0.0.1:1/x\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
    )
    with pytest.raises(DeliveryError) as caught:
        await deliver(server.url)
    assert caught.value.retriable is False
    assert caught.value.http_status == int(status)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\n Folded\r\nContent-Length: 2\r\n\r\n{}",
        CHUNKED_HEAD + b"zz\r\n",
        answer_reset,
    ],
    ids=["content-length-list", "obs-fold", "chunk-size", "reset"],
)
async def test_destination_retries_after_malformed_response(
    raw_server, first: bytes | Answer
) -> None:
    server = await raw_server(scripted(first))
    result = await deliver(server.url)
    assert result.attempts == 2
    assert len(server.requests) == 2


async def test_destination_retries_truncated_body(raw_server) -> None:
    server = await raw_server(
        scripted(
            reply(b"HTTP/1.1 500 Oops\r\nContent-Length: 50\r\n\r\n{}", close=True)
        )
    )
    result = await deliver(server.url)
    assert result.attempts == 2


async def test_destination_retries_server_that_never_answers(raw_server) -> None:
    async def answer_late(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        writer.write(OK)

    server = await raw_server(scripted(answer_late))
    # The first attempt times out before the late answer; the second gets it.
    result = await deliver(server.url, timeout_s=0.1)
    assert result.attempts == 2
    assert server.connections == 2


async def test_destination_connection_refused_is_retried() -> None:
    probe, port = await start_tcp_server(lambda r, w: None)
    probe.close()
    await probe.wait_closed()
    with pytest.raises(DeliveryError) as caught:
        await deliver(
            f"http://127.0.0.1:{port}",
            give_up_s=0.1,
            backoff_base_s=0.01,
            backoff_max_s=0.02,
        )
    assert caught.value.retriable is True
    assert caught.value.attempts >= 2
    assert "cannot reach" in str(caught.value)


@pytest.mark.parametrize("code", [b"000", b"099", b"20"])
async def test_destination_rejects_invalid_status(raw_server, code: bytes) -> None:
    server = await raw_server(
        reply(b"HTTP/1.1 " + code + b" X\r\nContent-Length: 2\r\n\r\n{}")
    )
    with pytest.raises(DeliveryError):
        await deliver(server.url, timeout_s=0.1, give_up_s=0.05)


async def test_destination_rejects_non_json_200(raw_server) -> None:
    # A 200 whose body is not a JSON object (a proxy's HTML page, say) does not
    # show that the destination stored the inputs, so they go to the dead-letter
    # topic instead of counting as delivered.
    server = await raw_server(
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n<html></html>")
    )
    with pytest.raises(DeliveryError, match="not a JSON object") as caught:
        await deliver(server.url)
    assert caught.value.retriable is False
    assert caught.value.http_status == 200


@pytest.mark.parametrize(
    ("status", "document"),
    [
        (b"200", b'{"status": null}'),
        (b"200", b'{"status": "ok"}'),
        (b"200", b'{"status": {"code": 10000}, "inputs": 5}'),
        (b"200", b'{"status": {"code": 10000}, "inputs": [1]}'),
        (b"409", b'{"status": {"code": 1}, "inputs": "abc"}'),
        (b"500", b'{"status": {"code": 1, "description": 5}, "inputs": [null]}'),
    ],
    ids=[
        "status-null",
        "status-string",
        "inputs-int",
        "input-int",
        "inputs-str",
        "input-null",
    ],
)
async def test_destination_odd_json_raises_only_delivery_error(
    raw_server, status: bytes, document: bytes
) -> None:
    # Destination reads "status" and "inputs" only where they have the expected
    # JSON types, so any other shape ends in a result or a DeliveryError, the
    # error that agents/delivery.py handles. Any other exception fails the test.
    server = await raw_server(reply(http_response(document, status + b" X")))
    with contextlib.suppress(DeliveryError):
        await deliver(server.url, give_up_s=0.05)
