"""`python -m bench.soak [--seconds 120] [--rate 500]`: one worker under steady load,
with its resident memory (RSS) sampled from /proc.

Runs a private Redis (scripts/services.sh on a free port, data in a temporary
folder), the fast destination of bench/destination.py in a process of its own, and
one `collectors worker` on new topics of the Kafka broker at KAFKA_BOOTSTRAP_SERVERS.
Two collectors watch the model: one keeps every input, the other a tenth. Events
are published at `--rate` events/s for `--seconds`; `--backlog N` publishes N
events before the worker starts, to measure memory while it catches up. After the
load, it waits up to 120 s for the worker to route every event and for the
destination's count to stay the same between two samples. Prints a sample every
`--sample-interval-s`, then RSS at start (worker ready, before any load), at the
end and the maximum, with the events the worker processed.

This is a measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from agents.topics import ensure_topics
from app.models import CollectorRecord
from app.security import SecretBox
from app.settings import Settings
from app.store import Store, connect

REPO = Path(__file__).resolve().parent.parent
SOAK_SECRET = "soak-secret-not-for-production"
MODEL = ("owner", "models", "classifier")
PUBLISH_TICK_S = 0.1
CATCH_UP_LIMIT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Return the resident set size of a process in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def make_event(event_id: str, outputs: int) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "created_at": "2026-12-04T10:00:00Z",
            "caller": {"user_id": "caller-1"},
            "outputs": [
                {
                    "id": f"out-{event_id}-{index}",
                    "status": {"code": 10000},
                    "model": {
                        "id": MODEL[2],
                        "user_id": MODEL[0],
                        "app_id": MODEL[1],
                        "model_version": {"id": "v1"},
                    },
                    "input": {
                        "id": f"{event_id}-{index}",
                        "data": {
                            "image": {
                                "url": f"https://images.example/{event_id}/{index}.jpg"
                            },
                            "metadata": {"camera": "gate-3", "frame": index},
                        },
                    },
                    "data": {
                        "concepts": [
                            {"id": "cat", "name": "cat", "value": 0.61},
                            {"id": "dog", "name": "dog", "value": 0.27},
                        ]
                    },
                }
                for index in range(outputs)
            ],
        }
    )


@dataclass
class Sample:
    at_s: float
    rss_mib: float
    events_in: float
    inputs_delivered: int


@dataclass
class SoakRun:
    """The processes and names of one soak run."""

    name: str
    bootstrap: str
    work_dir: Path
    redis_port: int = field(default_factory=free_port)
    destination_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def services(self, command: str) -> None:
        environment = {
            **os.environ,
            "SERVICES_ONLY": "redis",
            "REDIS_PORT": str(self.redis_port),
            "SERVICES_DATA_DIR": str(self.work_dir / "services"),
        }
        subprocess.run(
            [REPO / "scripts" / "services.sh", command],
            env=environment,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def worker_environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "COLLECTORS_GROUP": self.name,
            "COLLECTORS_INPUT_TOPIC": f"{self.name}-predictions",
            "COLLECTORS_DLQ_TOPIC": f"{self.name}-predictions.dlq",
            "COLLECTORS_DESTINATION_URL": f"http://127.0.0.1:{self.destination_port}",
            "COLLECTORS_WORKER_WEB_PORT": str(self.web_port),
            "COLLECTORS_SECRET_KEY": SOAK_SECRET,
            "COLLECTORS_SUMMARY_INTERVAL_S": "10",
        }

    def settings(self) -> Settings:
        environment = self.worker_environment()
        names = [
            n for n in environment if n.startswith(("COLLECTORS_", "KAFKA_", "REDIS_"))
        ]
        return Settings.model_validate({name: environment[name] for name in names})

    def start(self, arguments: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (self.work_dir / log_name).open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", *arguments],
            cwd=REPO,
            env=self.worker_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(30)


async def add_collectors(redis_url: str) -> None:
    box = SecretBox(SOAK_SECRET)
    store = Store(connect(redis_url))
    try:
        await store.create_collectors(
            [
                CollectorRecord(
                    user_id="owner",
                    app_id=app_id,
                    id=app_id,
                    model_user_id=MODEL[0],
                    model_app_id=MODEL[1],
                    model_id=MODEL[2],
                    pre_queue_random_sample=fraction,
                    post_inputs_key_encrypted=box.encrypt("soak-key"),
                )
                for app_id, fraction in (("everything", 1.0), ("tenth", 0.1))
            ]
        )
    finally:
        await store.close()


class Publisher:
    """A Kafka producer of soak events, at a steady rate or all at once."""

    def __init__(self, bootstrap: str, topic: str, outputs: int) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5
        )
        self.topic = topic
        self.outputs = outputs
        self.published = 0

    async def publish(self, count: int) -> None:
        futures = []
        for _ in range(count):
            event_id = f"s{self.published}"
            self.published += 1
            futures.append(
                await self.producer.send(
                    self.topic,
                    value=make_event(event_id, self.outputs),
                    key=event_id.encode(),
                )
            )
        for future in futures:
            await future

    async def run(self, rate: float, seconds: float) -> None:
        started = time.monotonic()
        base = self.published
        while (elapsed_s := time.monotonic() - started) < seconds:
            owed = int(rate * elapsed_s) - (self.published - base)
            if owed > 0:
                await self.publish(owed)
            await asyncio.sleep(PUBLISH_TICK_S)

    async def __aenter__(self) -> Publisher:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.producer.stop()


async def read_counters(run: SoakRun, client: httpx.AsyncClient) -> tuple[float, int]:
    """Return the worker's events_in counter and the destination's input count."""
    events_in = 0.0
    response = await client.get(f"http://127.0.0.1:{run.web_port}/metrics")
    for line in response.text.splitlines():
        if line.startswith('collectors_worker_events_total{result="events_in"}'):
            events_in = float(line.rsplit(" ", 1)[1])
    stats = await client.get(f"http://127.0.0.1:{run.destination_port}/stats")
    return events_in, int(stats.json()["inputs"])


async def wait_ready(run: SoakRun, worker: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError("the worker exited before it became ready")
            try:
                response = await client.get(f"http://127.0.0.1:{run.web_port}/readyz")
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError("timed out after 120 s waiting for the worker to be ready")


async def soak(args: argparse.Namespace, run: SoakRun) -> list[Sample]:
    settings = run.settings()
    await ensure_topics(settings)
    await add_collectors(run.redis_url)
    run.start(["bench.destination", str(run.destination_port)], "destination.log")
    async with Publisher(run.bootstrap, settings.input_topic, args.outputs) as pub:
        if args.backlog:
            await pub.publish(args.backlog)
        worker = run.start(["app.cli", "worker"], "worker.log")
        await wait_ready(run, worker)
        samples: list[Sample] = []
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=5.0) as client:

            async def sample() -> None:
                events_in, delivered = await read_counters(run, client)
                samples.append(
                    Sample(
                        time.monotonic() - started,
                        rss_mib(worker.pid),
                        events_in,
                        delivered,
                    )
                )
                last = samples[-1]
                print(
                    f"{last.at_s:7.1f} {last.rss_mib:9.1f} {last.events_in:10.0f} "
                    f"{last.inputs_delivered:10d}",
                    flush=True,
                )

            print("  time_s   rss_mib  events_in  delivered", flush=True)
            await sample()
            load = asyncio.create_task(pub.run(args.rate, args.seconds))
            while not load.done():
                await asyncio.sleep(args.sample_interval_s)
                if worker.poll() is not None:
                    raise RuntimeError("the worker exited during the soak")
                await sample()
            await load
            # Catch up: every event routed and the destination's count steady.
            deadline = time.monotonic() + CATCH_UP_LIMIT_S
            while time.monotonic() < deadline and not (
                samples[-1].events_in >= pub.published
                and samples[-1].inputs_delivered == samples[-2].inputs_delivered
            ):
                await asyncio.sleep(args.sample_interval_s)
                await sample()
        print(
            f"published {pub.published} events ({args.backlog} as a backlog), "
            f"{args.outputs} outputs each"
        )
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="seconds of steady load"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument(
        "--outputs", type=int, default=4, help="outputs (predictions) per event"
    )
    parser.add_argument(
        "--backlog", type=int, default=0, help="events published before the worker"
    )
    parser.add_argument(
        "--sample-interval-s", type=float, default=5.0, help="seconds between samples"
    )
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    with tempfile.TemporaryDirectory(prefix="soak-") as work_dir:
        run = SoakRun(f"soak-{int(time.time())}", bootstrap, Path(work_dir))
        run.services("up")
        try:
            samples = asyncio.run(soak(args, run))
        except RuntimeError:
            log = Path(work_dir) / "worker.log"
            if log.exists():
                print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            run.stop_all()
            run.services("down")
    report(samples, args)


def report(samples: list[Sample], args: argparse.Namespace) -> None:
    first, last = samples[0], samples[-1]
    peak = max(samples, key=lambda s: s.rss_mib)
    print(
        f"rss_mib start={first.rss_mib:.1f} end={last.rss_mib:.1f} "
        f"max={peak.rss_mib:.1f} (at {peak.at_s:.0f} s)"
    )
    print(
        f"events_processed={last.events_in:.0f} inputs_delivered="
        f"{last.inputs_delivered} over {last.at_s:.0f} s "
        f"(load {args.seconds:.0f} s at {args.rate:.0f} events/s)"
    )


if __name__ == "__main__":
    main()
