"""The API process: REST (FastAPI over uvicorn) and gRPC in one asyncio loop.

Both servers share one Store and one SecretBox. `run_api` is the entry point of
`collectors api`. `serving` starts everything in the running loop, and tests give it
port 0 to bind free ports. `serving_in_thread` does the same in a background thread,
for callers with blocking clients. The operator routes (health, /metrics, the
dashboard) mount on the FastAPI app in `add_operator_routes`. Read next: rest.py,
grpc_service.py, handlers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import uvicorn
from fastapi import FastAPI

from app.api.context import Services
from app.api.grpc_service import add_servicer
from app.api.rest import create_rest_app
from app.dashboard.operator import mount_operator_routes
from app.security import SecretBox, load_secret_box
from app.settings import Settings
from app.store import Store, connect

logger = logging.getLogger(__name__)

GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SHUTDOWN_GRACE_S = 5.0
THREAD_START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class RunningApi:
    """A started API: its FastAPI app, services and bound ports."""

    app: FastAPI
    services: Services
    http_host: str
    http_port: int
    grpc_host: str
    grpc_port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"


def build_rest_app(settings: Settings, store: Store, secret_box: SecretBox) -> FastAPI:
    """Build the REST app on the given store; the caller keeps and closes the store."""
    services = Services(settings, store, secret_box)
    app = create_rest_app(services)
    add_operator_routes(app, services)
    app.router.add_event_handler("shutdown", services.aclose)
    return app


def add_operator_routes(app: FastAPI, services: Services) -> None:
    """Mount the routes for operators: /healthz, /readyz, /metrics and the
    dashboard (app/dashboard/operator.py)."""
    mount_operator_routes(app, services)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling, which `run_api` does for both
    servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[RunningApi]:
    """Start the REST and gRPC servers in the running loop, and stop them on exit.

    Port 0 in settings.http_port or settings.grpc_port binds a free port; the
    yielded RunningApi has the ports actually bound.
    """
    async with contextlib.AsyncExitStack() as stack:
        # Each resource is released in reverse order on exit, also when a later
        # step of the start-up fails.
        store = Store(connect(settings.redis_url))
        stack.push_async_callback(store.close)
        services = Services(settings, store, load_secret_box(settings))
        stack.push_async_callback(services.aclose)
        app = create_rest_app(services)
        add_operator_routes(app, services)

        grpc_server, grpc_port = _grpc_server(settings, services)
        http_socket = _bind(settings.http_host, settings.http_port)
        stack.callback(http_socket.close)
        await grpc_server.start()
        stack.push_async_callback(grpc_server.stop, SHUTDOWN_GRACE_S)
        http_server = _Server(
            uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        )
        http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]))
        stack.push_async_callback(_stop_http, http_server, http_task)
        await _wait_started(http_server, http_task)

        running = RunningApi(
            app=app,
            services=services,
            http_host=settings.http_host,
            http_port=http_socket.getsockname()[1],
            grpc_host=settings.grpc_host,
            grpc_port=grpc_port,
        )
        logger.info(
            "API serving REST on %s and gRPC on %s:%d",
            running.base_url,
            running.grpc_host,
            running.grpc_port,
        )
        yield running
    logger.info("API stopped")


async def _stop_http(server: uvicorn.Server, task: asyncio.Task[Any]) -> None:
    server.should_exit = True
    await asyncio.gather(task, return_exceptions=True)


def _grpc_server(settings: Settings, services: Services) -> tuple[grpc.aio.Server, int]:
    """Build the gRPC server and bind its port; return the server and the port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        ]
    )
    add_servicer(server, services)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}; is the port in use?")
    return server, port


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def _wait_started(server: uvicorn.Server, task: asyncio.Task[Any]) -> None:
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error, if any
            raise RuntimeError("the HTTP server stopped while starting")
        await asyncio.sleep(0.01)


def run_api(settings: Settings) -> None:
    """Serve REST and gRPC until SIGINT or SIGTERM."""
    asyncio.run(_serve_until_signal(settings))


async def _serve_until_signal(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    async with serving(settings):
        await stop.wait()
        logger.info("API stopping on signal")


@contextlib.contextmanager
def serving_in_thread(settings: Settings) -> Iterator[RunningApi]:
    """Run `serving` in a background thread with its own loop, for blocking
    clients such as clarifai_grpc's stubs; stop it on exit."""
    started = threading.Event()
    stop: dict[str, Any] = {}
    result: dict[str, Any] = {}

    async def main() -> None:
        stop["event"] = asyncio.Event()
        stop["loop"] = asyncio.get_running_loop()
        try:
            async with serving(settings) as running:
                result["running"] = running
                started.set()
                await stop["event"].wait()
        except BaseException as error:
            result["error"] = error
            started.set()
            raise

    thread = threading.Thread(
        target=lambda: asyncio.run(main()), name="collectors-api", daemon=True
    )
    thread.start()
    if not started.wait(THREAD_START_TIMEOUT_S):
        raise TimeoutError(f"the API did not start within {THREAD_START_TIMEOUT_S} s")
    if "error" in result:
        thread.join()
        raise RuntimeError("the API failed to start") from result["error"]
    try:
        yield result["running"]
    finally:
        stop["loop"].call_soon_threadsafe(stop["event"].set)
        thread.join(THREAD_START_TIMEOUT_S)
