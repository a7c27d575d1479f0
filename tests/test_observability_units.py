"""Pieces of the observability code on their own: stall detection, the latency
histogram and its quantiles, counter deltas, flushing through a Redis outage, and
the progress bar of `collectors produce`."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
from pathlib import Path
from subprocess import CompletedProcess

import orjson
import pytest
import redis.asyncio as redis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.stats import WorkerStats
from agents.stats_flush import (
    CounterSnapshot,
    LatencyHistogram,
    LatencyRecorder,
    PartitionPosition,
    StallDetector,
    StatsFlusher,
)
from app.dashboard.stats import histogram_quantile, read_funnels, read_latency_total
from app.produce import ProgressBar
from tests.conftest import KAFKA, free_port
from tests.harness import REPO


def position(
    partition: int, committed: int | None, lag: int, topic: str = "t"
) -> PartitionPosition:
    highwater = (committed or 0) + lag
    return PartitionPosition(topic, partition, highwater, committed, lag)


# --- stall detection ------------------------------------------------------------------


def test_stall_detector_flags_stuck_partition_only() -> None:
    detector = StallDetector(stall_after_s=10)
    detector.observe([position(0, 5, 3), position(1, 7, 0), position(2, 9, 2)], now=0)
    detector.observe([position(0, 5, 4), position(1, 7, 0), position(2, 11, 2)], now=6)
    assert detector.stalled == []
    detector.observe([position(0, 5, 6), position(1, 7, 0), position(2, 13, 1)], now=10)
    assert [p.partition for p in detector.stalled] == [0]


def test_stall_detector_resets_on_progress_or_catch_up() -> None:
    detector = StallDetector(stall_after_s=10)
    detector.observe([position(0, 5, 3)], now=0)
    detector.observe([position(0, 6, 3)], now=9)  # committed moved
    detector.observe([position(0, 6, 3)], now=15)
    assert detector.stalled == []
    detector.observe([position(0, 6, 0)], now=18)  # caught up
    detector.observe([position(0, 6, 2)], now=25)
    assert detector.stalled == []
    detector.observe([position(0, 6, 2)], now=28)
    assert [p.partition for p in detector.stalled] == [0]


def test_stall_detector_gives_retry_topic_extra_time() -> None:
    detector = StallDetector(stall_after_s=10, extra_s_by_topic={"retry": 30})
    stuck = [position(0, 1, 5, "queue"), position(0, 1, 5, "retry")]
    detector.observe(stuck, now=0)
    detector.observe(stuck, now=20)
    assert [p.topic for p in detector.stalled] == ["queue"]
    detector.observe(stuck, now=40)
    assert [p.topic for p in detector.stalled] == ["queue", "retry"]


def test_stall_detector_forgets_revoked_partitions() -> None:
    detector = StallDetector(stall_after_s=10)
    detector.observe([position(0, 1, 5)], now=0)
    detector.observe([], now=5)
    detector.observe([position(0, 1, 5)], now=12)
    assert detector.stalled == []


# --- latency histogram ----------------------------------------------------------------


def test_latency_recorder_drains_worker_list() -> None:
    stats = WorkerStats()
    stats.destination_latency_s.extend([0.004, 0.02, 0.02, 7.0, 120.0])
    recorder = LatencyRecorder(stats)
    recorder.absorb()
    assert stats.destination_latency_s == []
    assert recorder.total.count == 5
    assert recorder.total.counts[0] == 1  # <= 5 ms
    assert recorder.total.counts[-1] == 1  # above the largest bound
    assert recorder.total.sum_s == pytest.approx(127.044)
    taken = recorder.take_pending()
    assert taken.count == 5
    assert recorder.pending.count == 0
    recorder.restore_pending(taken)
    assert recorder.pending.count == 5
    assert recorder.total.count == 5


@pytest.mark.parametrize(
    ("values", "quantile", "expected"),
    [
        ([], 0.5, None),
        ([0.02] * 10, 0.5, 0.0175),  # rank 5 of 10 in (0.01, 0.025]
        ([0.02] * 10, 1.0, 0.025),
        ([0.003] * 99 + [200.0], 0.99, 0.005),  # rank 99: top of the first bucket
        ([0.003] * 50 + [200.0] * 50, 0.99, 60.0),  # +Inf bucket: the largest bound
    ],
)
def test_histogram_quantile_cases(
    values: list[float], quantile: float, expected: float | None
) -> None:
    histogram = LatencyHistogram()
    for value in values:
        histogram.observe(value)
    result = histogram_quantile(quantile, histogram)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_counter_snapshot_delta_and_rates() -> None:
    stats = WorkerStats()
    stats.totals.update(events_in=4, outputs_in=6, events_dead_lettered=1)
    stats.add_funnel("u/a/c", "matched", 6)
    stats.add_funnel("u/a/c", "posted", 2)
    earlier = CounterSnapshot.of(stats)
    stats.totals.update(events_in=3, outputs_dead_lettered=1)
    stats.add_funnel("u/a/c", "posted", 3)
    stats.add_funnel("u/a/d", "dead_lettered", 2)
    delta = CounterSnapshot.of(stats).minus(earlier)
    assert dict(delta.totals) == {"events_in": 3, "outputs_dead_lettered": 1}
    assert {k: dict(v) for k, v in delta.funnel.items()} == {
        "u/a/c": {"posted": 3},
        "u/a/d": {"dead_lettered": 2},
    }
    assert delta.rate_counts() == {"events_in": 3, "posted": 3, "dead_lettered": 3}


# --- flushing through an outage -------------------------------------------------------


async def test_stats_flush_keeps_deltas_through_outage(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    stats = WorkerStats()
    stats.totals["events_in"] += 5
    stats.add_funnel("u/a/c", "matched", 3)
    stats.destination_latency_s.append(0.02)
    broken = redis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", protocol=2, decode_responses=True
    )
    good = redis.Redis.from_url(redis_url, protocol=2, decode_responses=True)
    flusher = StatsFlusher(broken, stats, LatencyRecorder(stats), "host:1", 10.0)
    heartbeat = {"group": "g", "partitions": {"t": [0, 1]}, "lag": 0}
    try:
        with caplog.at_level(logging.WARNING, logger="agents.stats_flush"):
            assert await flusher.flush(heartbeat) is False
            stats.totals["events_in"] += 2
            stats.add_funnel("u/a/c", "matched", 1)
            assert await flusher.flush(heartbeat) is False
        assert flusher.failures == 2
        assert flusher.last_error is not None
        warnings = [r for r in caplog.records if "cannot flush statistics" in r.message]
        assert len(warnings) == 1

        flusher.client = good
        assert await flusher.flush(heartbeat) is True
        assert flusher.last_error is None
        assert await flusher.flush(heartbeat) is True  # nothing new: nothing added
        assert await read_funnels(good) == {"u/a/c": {"matched": 4}}
        rates = [key async for key in good.scan_iter("col:stats:rate:*")]
        assert len(rates) == 1
        assert await good.hgetall(rates[0]) == {"events_in": "7", "matched": "4"}
        assert (await read_latency_total(good)).count == 1
        stored = await good.hgetall("col:stats:worker:host:1")
        assert orjson.loads(stored["partitions"]) == {"t": [0, 1]}
        assert await good.zrange("col:stats:workers", 0, -1) == ["host:1"]
        await flusher.remove_heartbeat()
        assert await good.exists("col:stats:worker:host:1") == 0
    finally:
        await broken.aclose()
        await good.aclose()


async def test_stats_flush_adds_every_funnel_counter(redis_url: str) -> None:
    stats = WorkerStats()
    for n in range(50):
        stats.add_funnel(f"u/a/c{n}", "matched", n + 2)
        stats.add_funnel(f"u/a/c{n}", "posted", n + 1)
    stats.rule_drops[("u/a/c0", "below")] += 4
    stats.rule_drops[("u/a/rules-only", "above")] += 2
    client = redis.Redis.from_url(redis_url, protocol=2, decode_responses=True)
    flusher = StatsFlusher(client, stats, LatencyRecorder(stats), "host:1", 10.0)
    heartbeat = {"group": "g", "partitions": {"t": [0]}, "lag": 0}
    try:
        assert await flusher.flush(heartbeat) is True
        # A second flush adds only what changed since the first.
        stats.add_funnel("u/a/c1", "posted", 5)
        stats.rule_drops[("u/a/rules-only", "above")] += 1
        assert await flusher.flush(heartbeat) is True
        funnels = await read_funnels(client)
    finally:
        await client.aclose()

    expected = {f"u/a/c{n}": {"matched": n + 2, "posted": n + 1} for n in range(50)}
    expected["u/a/c0"]["rule:below"] = 4
    expected["u/a/c1"]["posted"] = 2 + 5
    # A collector with rule drops only is listed among the collectors too.
    expected["u/a/rules-only"] = {"rule:above": 3}
    assert funnels == expected


async def test_stats_flush_adds_large_counts_exactly(redis_url: str) -> None:
    # Lua formats a number of 10^14 or more in exponent notation, which HINCRBY
    # would reject, so the script must pass the counts on as strings.
    stats = WorkerStats()
    stats.add_funnel("u/a/big", "matched", 10**15 + 1)
    stats.rule_drops[("u/a/big", "node-é")] += 2**53 + 1
    client = redis.Redis.from_url(redis_url, protocol=2, decode_responses=True)
    flusher = StatsFlusher(client, stats, LatencyRecorder(stats), "host:1", 10.0)
    heartbeat = {"group": "g", "partitions": {"t": [0]}, "lag": 0}
    try:
        assert await flusher.flush(heartbeat) is True
        funnels = await read_funnels(client)
    finally:
        await client.aclose()

    assert funnels["u/a/big"]["matched"] == 10**15 + 1
    assert funnels["u/a/big"]["rule:node-é"] == 2**53 + 1


# --- progress bar ---------------------------------------------------------------------


def test_progress_bar_lines_off_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(total_bytes=2000, stream=stream)
    bar.update(500, 10)
    bar.update(1000, 20)  # within the redraw interval: not drawn
    bar.update(2000, 40)
    bar.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[#######-----------------------]  25%  10 events")
    assert lines[1].startswith("[##############################] 100%  40 events")
    assert "\r" not in stream.getvalue()


def run(command: list[str], environment: dict[str, str]) -> CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=60
    )


async def test_cli_produce_progress(
    tmp_path: Path, unique_name: str, services: None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(unique_name, 1, 1)])
        path = tmp_path / "events.jsonl"
        lines = [orjson.dumps({"id": f"e{i}", "outputs": []}) for i in range(2500)]
        path.write_bytes(b"\n".join(lines) + b"\n")
        environment = {"KAFKA_BOOTSTRAP_SERVERS": KAFKA, "PATH": "/usr/bin:/bin"}
        command = [
            sys.executable,
            "-m",
            "app.cli",
            "produce",
            str(path),
            "--topic",
            unique_name,
        ]
        forced = await asyncio.to_thread(run, [*command, "--progress"], environment)
        default = await asyncio.to_thread(run, command, environment)
    finally:
        await admin.delete_topics([unique_name])
        await admin.close()
    assert forced.returncode == 0, forced.stderr
    bars = [line for line in forced.stderr.splitlines() if line.startswith("[")]
    assert bars, forced.stderr
    assert bars[-1].startswith("[##############################] 100%  2,500 events")
    assert forced.stdout == ""
    assert default.returncode == 0, default.stderr
    assert not [line for line in default.stderr.splitlines() if line.startswith("[")]
    assert "published 2500 events" in default.stderr
