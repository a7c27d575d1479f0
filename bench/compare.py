"""`python -m bench.compare`: alternating runs of a base and a variant worker.

Single benchmark runs on a shared machine vary by more than most changes. This
tool runs the same measurement with two worker environments in turn, base then
variant, several times, so that both see the same drift, and prints every run:

```
.venv/bin/python -m bench.compare --runs 3 COLLECTORS_HTTP_CLIENT=aiohttp
.venv/bin/python -m bench.compare --latency 11000 COLLECTORS_FETCH_MIN_BYTES=131072
.venv/bin/python -m bench.compare --collectors 10000 --base COLLECTORS_CONSUMER=faust \
    COLLECTORS_CONSUMER=lean
.venv/bin/python -m bench.compare --stages route COLLECTORS_STAGE_ONE=python
```

Without `--latency`, each run is a stage-one run of one worker on a pre-filled
topic (`bench.runs.measure_stage_one`). With it, each run is a latency run at
that many predictions a second (`bench.runs.measure_latency`). Code changes need an
environment variable that selects them for the duration of the comparison.

A broker that has just started used 0.6 to 0.8 cores in its first latency runs,
against about 0.3 later. Start the services first (`scripts/services.sh up`), or
leave the first pair out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as redis

from bench import collectors, dataset
from bench.__main__ import (
    BENCH_DATABASE,
    LATENCY_TEMPLATES,
    WORK_DIR,
    _count_outputs,
    _load_events,
)
from bench.kafka_io import create_topic, delete_topics, prefill
from bench.processes import start_destination, stop_all
from bench.runs import configure_collectors, measure_latency, measure_stage_one
from bench.services import running_services
from bench.workers import Context


def main(argv: list[str] | None = None) -> int:
    args = _parse_arguments(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    redis_base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = f"{redis_base.rsplit('/', 1)[0]}/{BENCH_DATABASE}"
    with running_services(bootstrap, redis_url):
        try:
            asyncio.run(_compare(args, bootstrap, redis_url))
        finally:
            stop_all()
    return 0


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="Alternate benchmark runs of a base and a variant worker "
        "environment; docs/benchmarks.md explains the measurements.",
    )
    parser.add_argument(
        "variant", nargs="+", metavar="NAME=VALUE", help="the variant's environment"
    )
    parser.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="the base's environment (empty by default); repeat for several",
    )

    parser.add_argument("--runs", type=int, default=2, help="pairs of runs [2]")
    parser.add_argument(
        "--collectors",
        type=int,
        default=1000,
        help="collectors in the configuration [1000]",
    )
    parser.add_argument(
        "--survival",
        type=float,
        default=0.1,
        help="queue items per matched prediction [0.1]",
    )
    parser.add_argument(
        "--events", type=int, default=16_000, help="events in the topic [16000]"
    )
    parser.add_argument(
        "--window", type=float, default=15.0, help="stage-one window, s [15]"
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="RATE",
        help="measure latency at RATE predictions a second instead",
    )
    parser.add_argument(
        "--duration", type=float, default=20.0, help="latency run, s [20]"
    )
    parser.add_argument(
        "--stages",
        default="route,deliver",
        help="the stage-one worker's stages: route, deliver or both [route,deliver]",
    )

    args = parser.parse_args(argv)
    for item in [*args.variant, *args.base]:
        if "=" not in item:
            parser.error(f"{item!r}: expected NAME=VALUE")
    if not 1 <= args.events <= 32_000:
        parser.error("--events: expected 1 to 32000")
    return args


async def _compare(args: argparse.Namespace, bootstrap: str, redis_url: str) -> None:
    prefix = f"compare-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    log_dir = WORK_DIR / prefix
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"comparison: logs in {log_dir}", flush=True)

    values = _load_events(32_000)[: args.events]
    documents = [orjson.loads(value) for value in values]
    quantiles = collectors.measure_quantiles(documents)
    outputs, success_by_model = _count_outputs(values)
    watched_models = min(args.collectors, dataset.WATCHED_MODELS)
    # The fraction of predictions that some collector matches, as in bench.
    matched = sum(success_by_model[:watched_models]) / sum(outputs)
    templates = documents[:LATENCY_TEMPLATES]

    topic_name = f"{prefix}-predictions"
    await create_topic(bootstrap, topic_name)
    topic = await prefill(bootstrap, topic_name, values, outputs)
    destination, destination_url = start_destination(log_dir / "destination.log")

    environments = {
        "base": dict(item.split("=", 1) for item in args.base),
        "variant": dict(item.split("=", 1) for item in args.variant),
    }
    try:
        for run in range(args.runs):
            for name, environment in environments.items():
                ctx = Context(
                    bootstrap=bootstrap,
                    redis_url=redis_url,
                    prefix=f"{prefix}-{run}{name}",
                    secret=collectors.BENCH_SECRET,
                    topic=topic,
                    destination=destination,
                    destination_url=destination_url,
                    log_dir=log_dir,
                    window_s=args.window,
                    worker_environment=environment,
                    profile_dir=None,
                )
                if run == 0 and name == "base":
                    await configure_collectors(
                        ctx, args.collectors, args.survival, quantiles
                    )
                outcome = await _measure(ctx, args, templates, matched)
                print(f"{name:8} run {run}: {outcome}", flush=True)
    finally:
        destination.stop()
        await delete_topics(bootstrap, prefix)
        client = redis.Redis.from_url(redis_url, protocol=2)
        await client.flushdb()
        await client.aclose()


async def _measure(
    ctx: Context,
    args: argparse.Namespace,
    templates: list[dict[str, Any]],
    matched: float,
) -> str:
    if args.latency:
        latency = await measure_latency(
            ctx, templates, args.latency, args.duration, 4.0, topic_suffix="live"
        )
        return (
            f"p50 {latency.p50_ms} p90 {latency.p90_ms} p99 {latency.p99_ms} "
            f"max {latency.max_ms} ms, cores {latency.cores_used}"
        )
    run = await measure_stage_one(
        ctx, args.collectors, args.survival, 1, matched, stages=[args.stages]
    )
    return (
        f"stage one {run.predictions_per_s:,.0f} pred/s, both stages keep up with "
        f"{run.end_to_end_predictions_per_s:,.0f}, cores {run.cores_used}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
