"""A small HTTP/1.1 client for the destination's POST /inputs.

The worker sends one POST per destination app and key in a batch, and under live
traffic most of them carry one or a few inputs. aiohttp spent about 150 µs of the
worker's CPU on each such request, mostly in machinery the worker does not use
(cookies, tracing, redirects, multipart, streaming bodies). This client does only
what the POST needs: keep-alive connections per origin, plain TCP or TLS, a
request written in one call, and a response read whole, framed by Content-Length,
chunked transfer coding or the end of the connection.

It raises `HttpError` when no complete response arrives (refused, reset, closed
early, malformed), and `TimeoutError` when the request's deadline passes. A
connection that fails in any way is closed, never reused. `AiohttpClient` offers
the same interface over aiohttp (`COLLECTORS_HTTP_CLIENT=aiohttp`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import aiohttp

logger = logging.getLogger(__name__)

# Limits on the size of a response. A destination's response to POST /inputs is a
# few kilobytes.
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
# Idle connections kept per client. The caller limits the requests in flight.
MAX_IDLE_CONNECTIONS = 64


# A chunk size: hexadecimal digits only (no sign, prefix or underscore).
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")
# Characters that would end a request line or a header line early.
_LINE_BREAKS = re.compile(r"[\r\n]")


class HttpError(Exception):
    """The request got no complete, well-formed response."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    # Header names in lower case. A repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    """The scheme, host and port that requests go to, and the base URL's path,
    which every request path is appended to."""

    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"the URL {url!r} has no host")
        default_port = 443 if parts.scheme == "https" else 80
        return cls(
            parts.scheme,
            parts.hostname,
            parts.port or default_port,
            parts.path.rstrip("/"),
        )

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.scheme == "https" else 80
        return host if self.port == default_port else f"{host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response it is reading."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.reusable = False
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._reason = ""
        self._headers: dict[str, str] = {}
        # Body framing once the head is read: "length", "chunked" or "close".
        self._framing = ""
        self._length = 0
        self._chunks: list[bytes] = []
        self._chunked_size = 0
        self._body_bytes = 0
        self._trailer_bytes = 0
        self._keep_alive = False
        # Whether any byte of a response, an interim one too, has arrived.
        self._received = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._received = True
        if self.waiter is None:
            # Bytes that arrive while no request waits mean the connection's
            # state is unknown, so it is closed.
            self.close()
            return
        try:
            self._parse()
        except HttpError as error:
            self._fail(error)
        except ValueError as error:
            self._fail(HttpError(f"malformed response: {error}"))

    def eof_received(self) -> bool | None:
        self._connection_ended()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._connection_ended(exc)

    # The request

    def send(self, request: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None and self.waiter is None
        self._reset()
        self.buffer.clear()
        self.reusable = False
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        self.transport.write(request)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # Parsing

    def _connection_ended(self, exc: Exception | None = None) -> None:
        self.closed = True
        if self.waiter is None or self.waiter.done():
            return
        if self._framing == "close" and exc is None:
            # NOTE: over TLS, a peer that closes without close_notify also ends
            # here, so a body cut short that way is taken as complete.
            self._finish(bytes(self.buffer))
            return
        detail = f": {exc!r}" if exc is not None else ""
        if not self._received:
            self._fail(
                _ClosedBeforeResponse(f"connection closed before a response{detail}")
            )
        else:
            self._fail(
                HttpError(f"connection closed in the middle of a response{detail}")
            )

    def _fail(self, error: Exception) -> None:
        waiter = self.waiter
        self.waiter = None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _finish(self, body: bytes) -> None:
        waiter = self.waiter
        self.waiter = None
        self.reusable = self._keep_alive and not self.closed and not self.buffer
        if not self.reusable:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._reason, self._headers, body))

    def _parse(self) -> None:
        while not self._status:
            if not self._parse_head():
                return
        if self._framing == "length":
            if len(self.buffer) >= self._length:
                body = bytes(self.buffer[: self._length])
                del self.buffer[: self._length]
                self._finish(body)
        elif self._framing == "chunked":
            self._parse_chunks()
        elif len(self.buffer) > MAX_BODY_BYTES:
            raise HttpError(f"response body over {MAX_BODY_BYTES} bytes")

    def _parse_head(self) -> bool:
        """Read the status line and headers, and return False when more bytes are
        needed. An interim (1xx) response is skipped."""
        end = self.buffer.find(b"\r\n\r\n")
        if end > MAX_HEAD_BYTES or (end < 0 and len(self.buffer) > MAX_HEAD_BYTES):
            raise HttpError(f"response head over {MAX_HEAD_BYTES} bytes")
        if end < 0:
            return False
        head = self.buffer[:end].decode("latin-1")
        del self.buffer[: end + 4]
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0") or not _is_status_code(code):
            raise HttpError(f"malformed status line {status_line[:100]!r}")
        status = int(code)

        headers: dict[str, str] = {}
        connection_tokens: list[str] = []
        for line in lines:
            if line[:1] in (" ", "\t"):
                raise HttpError(f"malformed header line {line[:100]!r} (folded)")
            name, colon, value = line.partition(":")
            if not colon:
                raise HttpError(f"malformed header line {line[:100]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name == "content-length" and headers.get(name, value) != value:
                raise HttpError("conflicting Content-Length headers")
            if name == "connection":
                connection_tokens.extend(_tokens(value))
            headers[name] = value

        if 100 <= status < 200:
            return True  # an interim response, which the final one follows
        self._status = status
        self._reason = reason
        self._headers = headers

        if "close" in connection_tokens:
            self._keep_alive = False
        else:
            self._keep_alive = (
                version == "HTTP/1.1" or "keep-alive" in connection_tokens
            )

        transfer_codings = _tokens(headers.get("transfer-encoding", ""))
        if status in (204, 304):
            self._framing, self._length = "length", 0
        elif transfer_codings == ["chunked"]:
            self._framing = "chunked"
        elif transfer_codings:
            # The request sends no TE header, so chunked is the only coding
            # this client can expect, and it decodes no other.
            raise HttpError(
                f"unsupported Transfer-Encoding {headers['transfer-encoding'][:60]!r}"
            )
        elif "content-length" in headers:
            length = headers["content-length"]
            if not (length.isascii() and length.isdigit()):
                raise HttpError(f"malformed Content-Length {length[:40]!r}")
            self._length = int(length)
            if self._length > MAX_BODY_BYTES:
                raise HttpError(f"response body over {MAX_BODY_BYTES} bytes")
            self._framing = "length"
        else:
            self._framing = "close"
            self._keep_alive = False
        return True

    def _parse_chunks(self) -> None:
        buffer = self.buffer
        while True:
            if self._chunked_size > 0:
                # Inside a chunk: its data and the CRLF after it.
                needed = self._chunked_size + 2
                if len(buffer) < needed:
                    return
                if buffer[needed - 2 : needed] != b"\r\n":
                    raise HttpError("malformed chunked body")
                self._chunks.append(bytes(buffer[: self._chunked_size]))
                del buffer[:needed]
                self._chunked_size = 0
                continue
            if self._chunked_size < 0:
                # After the last chunk: trailer lines up to an empty line.
                end = buffer.find(b"\r\n")
                if end < 0:
                    if self._trailer_bytes + len(buffer) > MAX_HEAD_BYTES:
                        raise HttpError(f"chunked trailer over {MAX_HEAD_BYTES} bytes")
                    return
                self._trailer_bytes += end + 2
                if self._trailer_bytes > MAX_HEAD_BYTES:
                    raise HttpError(f"chunked trailer over {MAX_HEAD_BYTES} bytes")
                del buffer[: end + 2]
                if end == 0:
                    self._finish(b"".join(self._chunks))
                    return
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 1024:
                    raise HttpError("malformed chunk size line")
                return
            size_text = bytes(buffer[:end].split(b";", 1)[0].strip())
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise HttpError(f"malformed chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            del buffer[: end + 2]
            self._body_bytes += size
            if self._body_bytes > MAX_BODY_BYTES:
                raise HttpError(f"response body over {MAX_BODY_BYTES} bytes")
            self._chunked_size = size if size else -1


def _is_status_code(text: str) -> bool:
    """Return whether `text` is a status code: three ASCII digits, 100 to 599."""
    return (
        len(text) == 3 and text.isascii() and text.isdigit() and "1" <= text[0] <= "5"
    )


def _tokens(value: str) -> list[str]:
    """Return the comma-separated tokens of a header value, in lower case."""
    return [token.strip().lower() for token in value.split(",") if token.strip()]


class _ClosedBeforeResponse(HttpError):
    """The server closed the connection before sending any byte of a response:
    on a reused connection, usually its idle timeout."""


class HttpClient:
    """A client that sends requests to one origin over keep-alive connections.

    Concurrent requests from one event loop are safe. The client does not limit
    how many are in flight, because the caller does.
    """

    def __init__(
        self,
        base_url: str,
        connect_timeout_s: float = 3.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.origin = Origin.parse(base_url)
        self.connect_timeout_s = connect_timeout_s
        self._ssl: ssl.SSLContext | None = None
        if self.origin.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._idle: list[_Connection] = []
        # Incremented by aclose(), so that a request in flight then does not put
        # its connection back in the pool.
        self._generation = 0
        # Connections belong to the event loop that opened them.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head_prefix = f"Host: {self.origin.host_header}\r\n"

    async def post(
        self,
        path: str,
        headers: dict[str, str],
        body: bytes,
        timeout_s: float,
    ) -> Response:
        """Send `body` in a POST to the base URL's path followed by `path`.

        A reused connection that the server had already closed is replaced once by
        a new one, which is safe only for requests that can be repeated, as the
        destination's POST /inputs can.
        """
        parts = [path, *headers.keys(), *headers.values()]
        if any(_LINE_BREAKS.search(part) for part in parts):
            raise ValueError("a request path or header contains a line break")
        lines = [
            f"POST {self.origin.base_path}{path} HTTP/1.1\r\n",
            self._head_prefix,
            f"Content-Length: {len(body)}\r\n",
        ]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        lines.append("\r\n")
        request = "".join(lines).encode("latin-1") + body
        async with asyncio.timeout(timeout_s):
            connection = self._take_idle()
            if connection is not None:
                try:
                    return await self._exchange(connection, request)
                except _ClosedBeforeResponse:
                    logger.debug(
                        "an idle connection to %s was closed; reconnecting",
                        self.origin.host,
                    )
            connection = await self._connect()
            return await self._exchange(connection, request)

    async def aclose(self) -> None:
        """Close the idle connections, and each busy one once its request ends.
        A request made after this opens new connections."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _take_idle(self) -> _Connection | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A closed loop cannot close its transports, whose sockets are then
            # closed when they are garbage collected.
            if self._loop is not None and not self._loop.is_closed():
                for connection in self._idle:
                    connection.close()
            self._idle.clear()
            self._loop = loop
            return None
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await loop.create_connection(
                    _Connection,
                    self.origin.host,
                    self.origin.port,
                    ssl=self._ssl,
                    server_hostname=self.origin.host if self._ssl else None,
                )
        except TimeoutError as error:
            raise HttpError(
                f"connecting to {self.origin.host}:{self.origin.port} timed out "
                f"after {self.connect_timeout_s} s"
            ) from error
        except (OSError, ssl.SSLError) as error:
            raise HttpError(
                f"cannot connect to {self.origin.host}:{self.origin.port}: {error!r}"
            ) from error
        return connection

    async def _exchange(self, connection: _Connection, request: bytes) -> Response:
        generation = self._generation
        try:
            response = await connection.send(request)
        except BaseException:
            # A timeout, a cancellation or a failure: the connection's state is
            # unknown, so it is not used again.
            connection.waiter = None
            connection.close()
            raise
        pooled = (
            generation == self._generation and len(self._idle) < MAX_IDLE_CONNECTIONS
        )
        if connection.reusable and pooled:
            self._idle.append(connection)
        else:
            connection.close()
        return response


class AiohttpClient:
    """A client with `HttpClient`'s interface over aiohttp, for
    `COLLECTORS_HTTP_CLIENT=aiohttp`. It costs more CPU per request, and suits a
    destination that `HttpClient` cannot work with."""

    def __init__(
        self,
        base_url: str,
        connect_timeout_s: float = 3.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.origin = Origin.parse(base_url)
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self._ssl = ssl_context
        # Created on first use, because a session belongs to the running event loop.
        self._session: aiohttp.ClientSession | None = None

    async def post(
        self,
        path: str,
        headers: dict[str, str],
        body: bytes,
        timeout_s: float,
    ) -> Response:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl or True)
            )
        timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=min(timeout_s, self.connect_timeout_s)
        )
        try:
            async with self._session.post(
                self.base_url + path,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                content = await response.read()
        except aiohttp.ClientError as error:
            raise HttpError(repr(error)) from error
        return Response(
            response.status,
            response.reason or "",
            {name.lower(): value for name, value in response.headers.items()},
            content,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
