"""Processes the benchmark starts (workers, the destination) and what it reads about
them and about the broker and Redis from /proc: CPU time and resident memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import httpx

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """Return the user plus system CPU time of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of /proc/PID/stat, counted from 1 and
    # including the pid and the command name that the split above removed.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def machine_busy_seconds() -> float:
    """Return the CPU time all cores spent busy since boot (not idle nor waiting
    for I/O), from the first line of /proc/stat."""
    fields = [
        int(value)
        for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ]
    idle, iowait = fields[3], fields[4]
    # Guest time is already counted in user time, so only the first 8 fields add up.
    return (sum(fields[:8]) - idle - iowait) / CLOCK_TICKS_PER_S


def memory_bytes(pid: int) -> dict[str, int]:
    """Return VmRSS (resident now) and VmHWM (peak resident) of a process."""
    result: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                result[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return result


def find_pid(*fragments: str) -> int | None:
    """Return the pid of the process whose command line contains every fragment.

    Used read-only, to account the CPU time of the broker and of Redis.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except OSError:
            continue
        if all(fragment in command_line for fragment in fragments):
            return int(entry.name)
    return None


class ChildProcess:
    """A subprocess with its output in a log file, stopped with SIGTERM."""

    # Every process started, so that `stop_all` leaves none behind after an error.
    started: ClassVar[list[ChildProcess]] = []

    def __init__(
        self, command: list[str], environment: dict[str, str], log_path: Path
    ) -> None:
        self.command = command
        self.environment = environment
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ChildProcess.started.append(self)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(
            self.log_path.read_text(errors="replace").splitlines()[-lines:]
        )

    def stop(self, timeout_s: float = 60.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


def stop_all() -> None:
    """Stop every process this benchmark started that still runs."""
    for process in reversed(ChildProcess.started):
        process.stop()


def worker_environment(
    *,
    bootstrap: str,
    redis_url: str,
    group: str,
    input_topic: str,
    destination_url: str,
    web_port: int,
    secret: str,
    summary_interval_s: float,
    data_dir: Path,
) -> dict[str, str]:
    """Return the environment of `collectors worker` for one benchmark group."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "REDIS_URL": redis_url,
        "COLLECTORS_GROUP": group,
        "COLLECTORS_INPUT_TOPIC": input_topic,
        "COLLECTORS_DLQ_TOPIC": f"{group}-predictions.dlq",
        "COLLECTORS_DESTINATION_URL": destination_url,
        "COLLECTORS_WORKER_WEB_PORT": str(web_port),
        "COLLECTORS_SECRET_KEY": secret,
        "COLLECTORS_LOG_LEVEL": "INFO",
        "COLLECTORS_SUMMARY_INTERVAL_S": str(summary_interval_s),
        # Faust's data directory, by default `<group>-data` in the working directory.
        "APP_DATADIR": str(data_dir),
    }


def start_worker(environment: dict[str, str], log_path: Path) -> ChildProcess:
    return ChildProcess(
        [sys.executable, "-m", "app.cli", "worker"], environment, log_path
    ).start()


def start_destination(log_path: Path) -> tuple[ChildProcess, str]:
    """Start bench/destination.py and wait until it responds; return it and its URL."""
    port = free_port()
    process = ChildProcess(
        [sys.executable, "-m", "bench.destination", str(port)],
        dict(os.environ),
        log_path,
    ).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/stats", timeout=1.0).raise_for_status()
            return process, url
        except httpx.HTTPError:
            if not process.alive():
                break
            time.sleep(0.1)
    process.stop()
    raise RuntimeError(f"the bench destination did not start:\n{process.log_tail()}")
