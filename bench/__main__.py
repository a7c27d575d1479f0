"""`python -m bench [--quick]`: measure the worker; docs/benchmarks.md explains how.

Starts Kafka and Redis when they are not running, publishes the data set to a new
topic, measures the raw consumer rate R and the Faust floor, then runs real
workers: stage one with one and two processes, the end-to-end latency at half the
rate that one process sustains with both stages on a backlog, the highest live rate
it keeps up with and the latency at half of that, and (without --quick) the
scaling runs. Prints a table, writes bench/results/<UTC date and time>.json and prints
`ratio=<stage one / R>` last.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as redis

from bench import collectors, dataset, report
from bench.kafka_io import create_topic, delete_topics, prefill, raw_rate
from bench.processes import REPO, start_destination, stop_all
from bench.runs import (
    configure_collectors,
    measure_faust_floor,
    measure_latency,
    measure_live_capacity,
    measure_stage_one,
)
from bench.services import running_services
from bench.workers import Context

# The Redis database the benchmark flushes and fills. The service's default is 0,
# the API tests use 7 and the worker tests 8 to 15.
BENCH_DATABASE = 5
RESULTS_DIR = REPO / "bench" / "results"
WORK_DIR = REPO / ".data" / "bench"
MAIN_COLLECTORS = 1000
MAIN_SURVIVAL = 0.10
LATENCY_TEMPLATES = 2000
PACKAGES = (
    "faust-streaming",
    "aiokafka",
    "pydantic",
    "orjson",
    "redis",
    "httpx",
    "aiohttp",
)
# Installed or not, these change the worker's speed (see docs/benchmarks.md).
OPTIONAL_PACKAGES = ("sniffio", "uvloop")


@dataclass(frozen=True)
class Plan:
    name: str
    events: int
    window_s: float
    latency_duration_s: float
    latency_warm_up_s: float
    # Latency runs that bisect for the highest live rate one worker keeps up with.
    live_probes: int
    probe_duration_s: float
    # (collectors, survival) pairs measured besides the main configuration.
    scaling: tuple[tuple[int, float], ...]


FULL = Plan(
    "full",
    events=32_000,
    window_s=25.0,
    latency_duration_s=30.0,
    latency_warm_up_s=5.0,
    live_probes=3,
    probe_duration_s=15.0,
    scaling=((10, 0.10), (10_000, 0.10), (1000, 0.01), (1000, 1.0)),
)
QUICK = Plan(
    "quick",
    events=8_000,
    window_s=8.0,
    latency_duration_s=12.0,
    latency_warm_up_s=3.0,
    live_probes=2,
    probe_duration_s=10.0,
    scaling=(),
)


def main(argv: list[str] | None = None) -> int:
    args = _parse_arguments(argv)
    plan = QUICK if args.quick else FULL
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    redis_base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = f"{redis_base.rsplit('/', 1)[0]}/{BENCH_DATABASE}"
    worker_environment = dict(item.split("=", 1) for item in args.worker_env)
    main_configuration = (args.collectors, args.survival)

    started = time.monotonic()
    with running_services(bootstrap, redis_url) as started_services:
        try:
            result = asyncio.run(
                _run(
                    plan,
                    bootstrap,
                    redis_url,
                    main_configuration,
                    worker_environment,
                    args.profile,
                )
            )
        finally:
            stop_all()
    result["started_services"] = started_services
    result["bench_duration_s"] = round(time.monotonic() - started, 1)

    print(report.table(result))
    if not args.no_save:
        path = report.save(result, RESULTS_DIR)
        print(f"results: {path.relative_to(REPO)}")
    print(f"ratio_split={result['ratio_split']:.3f}")
    print(f"ratio={result['ratio']:.3f}")
    return 0


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smaller data set, shorter windows and no scaling runs (~2 minutes)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record each worker with py-spy (GIL samples, folded stacks) into "
        ".data/bench/<run>/profiles/",
    )
    parser.add_argument(
        "--collectors",
        type=int,
        default=MAIN_COLLECTORS,
        help="collectors of the main configuration [%(default)s]",
    )
    parser.add_argument(
        "--survival",
        type=float,
        default=MAIN_SURVIVAL,
        help="queue items per matched prediction in the main configuration "
        "[%(default)s]",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of every worker, for tuning experiments; "
        "repeat for several (recorded in the results)",
    )
    parser.add_argument(
        "--no-save",
        action="store_true",
        help=f"do not write the JSON result into {RESULTS_DIR.relative_to(REPO)}/",
    )
    args = parser.parse_args(argv)
    for item in args.worker_env:
        if "=" not in item:
            parser.error(f"--worker-env {item!r}: expected NAME=VALUE")
    return args


async def _run(
    plan: Plan,
    bootstrap: str,
    redis_url: str,
    main_configuration: tuple[int, float],
    worker_environment: dict[str, str],
    profile: bool,
) -> dict[str, Any]:
    now = datetime.now(UTC)
    prefix = f"bench-{now:%Y%m%dT%H%M%S}"
    log_dir = WORK_DIR / prefix
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"benchmark {plan.name}: logs in {log_dir.relative_to(REPO)}", flush=True)

    values = _load_events(plan.events)
    templates = [orjson.loads(value) for value in values[:LATENCY_TEMPLATES]]
    quantiles = collectors.measure_quantiles(orjson.loads(value) for value in values)
    outputs, success_by_model = _count_outputs(values)
    topic_name = f"{prefix}-predictions"
    await create_topic(bootstrap, topic_name)
    _say(f"publishing {len(values)} events ({sum(outputs)} predictions)")
    topic = await prefill(bootstrap, topic_name, values, outputs)
    del values

    _say("measuring the raw consumer rate R")
    raw_runs = [await raw_rate(bootstrap, topic) for _ in range(2)]

    destination, destination_url = start_destination(log_dir / "destination.log")
    ctx = Context(
        bootstrap=bootstrap,
        redis_url=redis_url,
        prefix=prefix,
        secret=collectors.BENCH_SECRET,
        topic=topic,
        destination=destination,
        destination_url=destination_url,
        log_dir=log_dir,
        window_s=plan.window_s,
        worker_environment=worker_environment,
        profile_dir=_profile_dir(log_dir) if profile else None,
    )
    try:
        _say("measuring the Faust floor (an agent that only decodes)")
        faust_floor = await measure_faust_floor(ctx, "lean")
        _say("measuring the Faust floor with faust-streaming's own consumer")
        faust_floor_stock = await measure_faust_floor(ctx, "faust")
        runs, latency, live_capacity, latency_live = await _measure_workers(
            ctx,
            plan,
            main_configuration,
            quantiles,
            templates,
            success_by_model,
        )
        # R is the best of runs before and after the workers, so that a slow
        # phase of a shared machine lowers it only if it lasts the whole run.
        _say("measuring the raw consumer rate R again")
        raw_runs.append(await raw_rate(bootstrap, topic))
    finally:
        destination.stop()
        await delete_topics(bootstrap, prefix)
        client = redis.Redis.from_url(redis_url, protocol=2)
        await client.flushdb()
        await client.aclose()

    raw = max(raw_runs, key=lambda run: run["predictions_per_s"])
    main_run, two, split = runs[0], runs[1], runs[2]
    return {
        "date": now.isoformat(timespec="seconds"),
        "plan": plan.name,
        "main_configuration": {
            "collectors": main_configuration[0],
            "survival": main_configuration[1],
        },
        "machine": _machine(),
        "worker_environment": worker_environment,
        "data_set": {
            "events": topic.events,
            "predictions": topic.predictions,
            "partitions": len(topic.cumulative),
            "seed": dataset.SEED,
        },
        "raw": raw,
        "raw_runs": raw_runs,
        "faust_floor": faust_floor,
        "faust_floor_stock_consumer": faust_floor_stock,
        "stage_one": runs,
        "latency": latency,
        "live_capacity": live_capacity,
        "latency_half_live_capacity": latency_live,
        "speed_up_two_workers": two["predictions_per_s"]
        / main_run["predictions_per_s"],
        "ratio_split": split["predictions_per_s"] / raw["predictions_per_s"],
        "ratio": main_run["predictions_per_s"] / raw["predictions_per_s"],
    }


async def _measure_workers(
    ctx: Context,
    plan: Plan,
    main_configuration: tuple[int, float],
    quantiles: dict[str, collectors.ModelQuantiles],
    templates: list[dict[str, Any]],
    success_by_model: list[int],
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Run the main configuration, then the scaling configurations, and return
    the stage-one runs, the latency run at half the backlog rate, the live
    capacity search and the latency run at half the live capacity.

    The main configuration runs one worker, two workers, a route worker beside a
    deliver worker, and the latency runs."""

    def matched(collector_count: int) -> float:
        watched = min(collector_count, dataset.WATCHED_MODELS)
        return sum(success_by_model[:watched]) / ctx.topic.predictions

    main_collectors, main_survival = main_configuration
    await configure_collectors(ctx, main_collectors, main_survival, quantiles)
    runs = []
    for workers in (1, 2):
        _say(
            f"stage one: {workers} worker(s), {main_collectors} collectors, "
            f"{main_survival:.0%} survival"
        )
        run = await measure_stage_one(
            ctx, main_collectors, main_survival, workers, matched(main_collectors)
        )
        runs.append(run.as_dict())
    _say("stage one: a route worker and a deliver worker")
    run = await measure_stage_one(
        ctx,
        main_collectors,
        main_survival,
        2,
        matched(main_collectors),
        stages=["route", "deliver"],
    )
    runs.append(run.as_dict())

    # Half the rate that both stages of one worker sustain: stage one alone can
    # run ahead of stage two, whose backlog then grows without bound.
    rate = runs[0]["end_to_end_predictions_per_s"] / 2
    _say(f"latency at {rate:.0f} predictions/s for {plan.latency_duration_s:.0f} s")
    latency = await measure_latency(
        ctx, templates, rate, plan.latency_duration_s, plan.latency_warm_up_s
    )
    # Live events arrive a few at a time, so batches are small and one worker
    # costs more per prediction than on the backlog above. So the highest live
    # rate it keeps up with is measured too, and the latency at half of it.
    _say(f"live capacity: {plan.live_probes} probes of {plan.probe_duration_s:.0f} s")
    live_capacity = await measure_live_capacity(
        ctx,
        templates,
        runs[0]["end_to_end_predictions_per_s"],
        plan.live_probes,
        plan.probe_duration_s,
        plan.latency_warm_up_s,
    )
    half_live = live_capacity["capacity_predictions_per_s"] / 2
    _say(
        f"latency at {half_live:.0f} predictions/s for {plan.latency_duration_s:.0f} s"
    )
    latency_live = await measure_latency(
        ctx,
        templates,
        half_live,
        plan.latency_duration_s,
        plan.latency_warm_up_s,
        topic_suffix="live-half-capacity",
    )

    for collector_count, survival in plan.scaling:
        if (collector_count, survival) == main_configuration:
            continue
        _say(f"stage one: {collector_count} collectors, {survival:.0%} survival")
        await configure_collectors(ctx, collector_count, survival, quantiles)
        run = await measure_stage_one(
            ctx, collector_count, survival, 1, matched(collector_count)
        )
        runs.append(run.as_dict())
    return runs, latency.as_dict(), live_capacity, latency_live.as_dict()


def _load_events(count: int) -> list[bytes]:
    """Return the encoded events, generated once and kept in .data/bench/."""
    path = WORK_DIR / f"events-{dataset.SEED}-{count}.jsonl"
    if path.exists():
        return path.read_bytes().splitlines()
    _say(f"generating {count} events (kept in {path.relative_to(REPO)} for later runs)")
    values = [dataset.encode(event) for event in dataset.events(count)]
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(b"\n".join(values))
    partial.rename(path)
    return values


def _count_outputs(values: list[bytes]) -> tuple[list[int], list[int]]:
    """Return each event's output count, and the successful valid predictions of
    each watched model."""
    counts = []
    success_by_model = [0] * dataset.WATCHED_MODELS
    for value in values:
        event = orjson.loads(value)
        counts.append(len(event["outputs"]))
        for output in event["outputs"]:
            number = int(output["model"]["id"].rsplit("-", 1)[1])
            valid = all(0.0 <= c["value"] <= 1.0 for c in output["data"]["concepts"])
            success = output["status"]["code"] == 10000
            if number < dataset.WATCHED_MODELS and valid and success:
                success_by_model[number] += 1
    return counts, success_by_model


def _profile_dir(log_dir: Path) -> Path:
    path = log_dir / "profiles"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _machine() -> dict[str, Any]:
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(memory_kib / 1024**2, 1),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES + OPTIONAL_PACKAGES},
    }


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _say(message: str) -> None:
    print(f"  {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
