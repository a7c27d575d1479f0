"""Worker processes of one benchmark consumer group, and what is read about them:
CPU time, peak resident memory and the counters of their INFO summary lines."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.kafka_io import PrefilledTopic
from bench.processes import (
    ChildProcess,
    cpu_seconds,
    find_pid,
    free_port,
    machine_busy_seconds,
    memory_bytes,
    start_worker,
    worker_environment,
)

# The worker's periodic summary line (log_summary_line in agents/app.py).
_SUMMARY_LINE = re.compile(r"summary events_in=\d+ outputs_in=.*")
SUMMARY_INTERVAL_S = 1.0


@dataclass
class Context:
    """Settings and services that every run of one benchmark shares."""

    bootstrap: str
    redis_url: str
    prefix: str
    secret: str
    topic: PrefilledTopic
    destination: ChildProcess
    destination_url: str
    log_dir: Path
    # Seconds of commits that a stage-one run measures before it stops.
    window_s: float = 25.0
    # Extra environment of every worker, for tuning experiments.
    worker_environment: dict[str, str] = field(default_factory=dict)
    profile_dir: Path | None = None


def read_summary(log_text: str) -> dict[str, int]:
    """Return the counters of the last INFO summary line in a worker's log."""
    lines = _SUMMARY_LINE.findall(log_text)
    if not lines:
        return {}
    return {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", lines[-1])}


class WorkerGroup:
    """One or more `collectors worker` processes in one consumer group."""

    def __init__(
        self,
        ctx: Context,
        group: str,
        count: int,
        input_topic: str,
        stages: list[str] | None = None,
    ) -> None:
        self.ctx = ctx
        # Each worker's COLLECTORS_WORKER_STAGES.
        self.stages = stages or ["route,deliver"] * count
        self.group = group
        self.input_topic = input_topic
        self.web_ports = [free_port() for _ in range(count)]
        self.workers: list[ChildProcess] = []
        self.profilers: list[ChildProcess] = []

    def start(self) -> None:
        for index, web_port in enumerate(self.web_ports):
            environment = worker_environment(
                bootstrap=self.ctx.bootstrap,
                redis_url=self.ctx.redis_url,
                group=self.group,
                input_topic=self.input_topic,
                destination_url=self.ctx.destination_url,
                web_port=web_port,
                secret=self.ctx.secret,
                summary_interval_s=SUMMARY_INTERVAL_S,
                data_dir=self.ctx.log_dir / f"{self.group}-{index}-data",
            )
            environment.update(self.ctx.worker_environment)
            environment["COLLECTORS_WORKER_STAGES"] = self.stages[index]
            log_path = self.ctx.log_dir / f"{self.group}-worker-{index}.log"
            worker = start_worker(environment, log_path)
            self.workers.append(worker)
            if self.ctx.profile_dir is not None:
                self.profilers.append(self._profile(worker, index))

    def _profile(self, worker: ChildProcess, index: int) -> ChildProcess:
        assert self.ctx.profile_dir is not None
        output = self.ctx.profile_dir / f"{self.group}-worker-{index}.folded.txt"
        command = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(worker.pid),
            "--rate",
            "200",
            # Only samples that hold the GIL: where the worker spends CPU.
            "--gil",
            "--format",
            "raw",
            "--output",
            str(output),
        ]
        log_path = self.ctx.log_dir / f"{self.group}-py-spy-{index}.log"
        return ChildProcess(command, dict(os.environ), log_path).start()

    def check_alive(self) -> None:
        for worker in self.workers:
            if not worker.alive():
                raise RuntimeError(
                    f"worker of group {self.group} exited; its log ends with:\n"
                    + worker.log_tail()
                )

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for profiler in self.profilers:
            # py-spy writes its profile when the process it follows exits.
            try:
                assert profiler.process is not None
                profiler.process.wait(30)
            except subprocess.TimeoutExpired:
                profiler.stop()

    def cpu(self) -> dict[str, float]:
        values = {}
        for index, worker in enumerate(self.workers):
            seconds = cpu_seconds(worker.pid)
            if seconds is not None:
                values[f"worker_{index}"] = seconds
        return values

    def peak_rss_bytes(self) -> int:
        """Return the largest peak resident memory (VmHWM) among the workers."""
        return max(
            (memory_bytes(worker.pid).get("VmHWM", 0) for worker in self.workers),
            default=0,
        )

    async def totals(self) -> dict[str, int]:
        """Sum the workers' summary lines, waiting for one written after now."""
        await asyncio.sleep(SUMMARY_INTERVAL_S * 1.5)
        summed: dict[str, int] = {}
        for worker in self.workers:
            for name, value in read_summary(worker.log_tail(400)).items():
                summed[name] = summed.get(name, 0) + value
        return summed


def service_pids(ctx: Context) -> dict[str, int]:
    """Return the pids of the broker, Redis and the destination, when found."""
    kafka_port = ctx.bootstrap.split(",")[0].rsplit(":", 1)[1]
    redis_port = ctx.redis_url.rsplit(":", 1)[1].split("/")[0]
    pids = {
        "broker": find_pid("kafka.Kafka", f"kafka-{kafka_port}/"),
        "redis": find_pid("redis-server", f":{redis_port}"),
        "destination": ctx.destination.pid,
    }
    return {name: pid for name, pid in pids.items() if pid is not None}


def cpu_snapshot(group: WorkerGroup, pids: dict[str, int]) -> dict[str, float]:
    """Return the CPU seconds of each process involved, and of the whole machine."""
    values = group.cpu()
    for name, pid in pids.items():
        seconds = cpu_seconds(pid)
        if seconds is not None:
            values[name] = seconds
    own = os.times()
    values["bench"] = own.user + own.system
    values["machine"] = machine_busy_seconds()
    return values


def cores_used(
    first: dict[str, float], last: dict[str, float], window_s: float
) -> dict[str, float]:
    """Return the cores each part used between two snapshots. `other` is what the
    machine did besides the benchmark's own processes (other programs)."""
    cores: dict[str, float] = {}
    for name, value in last.items():
        if name in first:
            key = "workers" if name.startswith("worker_") else name
            cores[key] = cores.get(key, 0.0) + (value - first[name]) / window_s
    if "machine" in cores:
        own = sum(value for name, value in cores.items() if name != "machine")
        cores["other"] = max(0.0, cores["machine"] - own)
    return {name: round(value, 3) for name, value in cores.items()}
