"""A raw asyncio HTTP server for the client tests, which replies with exactly the
bytes each case needs."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest


@dataclass
class Request:
    head: str
    body: bytes
    # The connection's reader, for a handler that reads the body itself.
    reader: asyncio.StreamReader | None = None

    @property
    def request_line(self) -> str:
        return self.head.split("\r\n", 1)[0]

    def header(self, name: str) -> str:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return ""


# Replies to one request: writes to the writer, and may close it.
Answer = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    answer: Answer
    url: str = ""
    connections: int = 0
    # Connections the client has not closed yet, as seen from the server.
    open_connections: int = 0
    requests: list[Request] = field(default_factory=list)
    # Set to read only the request head, so that the handler can reply before
    # the body arrives.
    read_body: bool = True


async def read_request(
    reader: asyncio.StreamReader, read_body: bool = True
) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    request = Request(head[:-4].decode("latin-1"), b"", reader)
    if read_body:
        length = int(request.header("Content-Length") or 0)
        try:
            request.body = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
    return request


async def wait_for_eof(reader: asyncio.StreamReader) -> None:
    """Read until the client closes its side of the connection."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(
        answer: Answer, ssl_context: ssl.SSLContext | None = None
    ) -> RawServer:
        state = RawServer(answer)

        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            state.connections += 1
            state.open_connections += 1
            writers.append(writer)
            try:
                while not writer.is_closing():
                    request = await read_request(reader, state.read_body)
                    if request is None:
                        break
                    state.requests.append(request)
                    await state.answer(request, writer)
                    await writer.drain()
                if not writer.is_closing():
                    await wait_for_eof(reader)
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                state.open_connections -= 1
                writer.close()

        # The backlog admits every connection of the concurrency tests at once.
        server = await asyncio.start_server(
            handle, "127.0.0.1", 0, ssl=ssl_context, backlog=1024
        )
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        scheme = "https" if ssl_context else "http"
        state.url = f"{scheme}://127.0.0.1:{port}"
        return state

    yield start
    for server in servers:
        server.close()
    for writer in writers:
        writer.transport.abort()
    for _ in range(3):
        await asyncio.sleep(0)
