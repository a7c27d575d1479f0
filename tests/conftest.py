"""Shared test set-up: real Kafka and Redis, started when they are not running.

The services come from `scripts/services.sh up` on the default ports (or the
addresses in KAFKA_BOOTSTRAP_SERVERS and REDIS_URL); a session that started them
stops them at the end. Each test gets its own topics, consumer group and Redis
database, so tests never see each other's data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as redis

if TYPE_CHECKING:
    from tests.fault_fixtures import Scenario

REPO = Path(__file__).resolve().parent.parent
KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REDIS_BASE_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[
    0
]
# Worker tests use Redis databases 8 to 15, each flushed before use.
WORKER_DATABASES = range(8, 16)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def services() -> Iterator[None]:
    """Make sure Kafka and Redis run; stop them afterwards if this session
    started them."""
    kafka_host, kafka_port = KAFKA.split(",")[0].rsplit(":", 1)
    redis_port = int(REDIS_BASE_URL.rsplit(":", 1)[1])
    running = port_open(kafka_host, int(kafka_port)) and port_open(
        "127.0.0.1", redis_port
    )
    environment = {
        **os.environ,
        "KAFKA_PORT": kafka_port,
        "REDIS_PORT": str(redis_port),
    }
    if not running:
        subprocess.run(
            [REPO / "scripts" / "services.sh", "up"], check=True, env=environment
        )
    yield
    if not running and not os.environ.get("COLLECTORS_TEST_KEEP_SERVICES"):
        subprocess.run(
            [REPO / "scripts" / "services.sh", "down"], check=False, env=environment
        )


_next_database = iter(range(1_000_000))


@pytest.fixture
async def redis_url(services: None) -> AsyncIterator[str]:
    """A flushed Redis database of its own for one test."""
    database = WORKER_DATABASES[next(_next_database) % len(WORKER_DATABASES)]
    url = f"{REDIS_BASE_URL}/{database}"
    client = redis.Redis.from_url(url, protocol=2)
    await client.flushdb()
    await client.aclose()
    yield url


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def scenario(services: None, tmp_path: Path, unique_name: str) -> Iterator[Scenario]:
    """A fault scenario on the shared broker, with a Redis server of its own."""
    # Imported here, because tests.fault_fixtures imports this module.
    from tests.fault_fixtures import scenario_with_private_redis

    with scenario_with_private_redis(tmp_path, unique_name, KAFKA) as (scenario, _):
        yield scenario
