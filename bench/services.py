"""Kafka and Redis for the benchmark: started with scripts/services.sh when their
ports are closed, and stopped afterwards only when this run started them."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from bench.processes import REPO


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def running_services(bootstrap: str, redis_url: str) -> Iterator[list[str]]:
    """Start whichever of Kafka and Redis is not running; yield the names started.

    Only loopback addresses are checked and started, as scripts/services.sh runs
    both on 127.0.0.1.
    """
    kafka_port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    missing = [
        name
        for name, port in (("kafka", kafka_port), ("redis", redis_port))
        if not _port_open(port)
    ]
    environment = {
        **os.environ,
        "KAFKA_PORT": str(kafka_port),
        "REDIS_PORT": str(redis_port),
    }
    script = REPO / "scripts" / "services.sh"
    for name in missing:
        subprocess.run(
            [script, "up"], check=True, env={**environment, "SERVICES_ONLY": name}
        )
    try:
        yield missing
    finally:
        for name in missing:
            subprocess.run(
                [script, "down"],
                check=False,
                env={**environment, "SERVICES_ONLY": name},
            )
