"""The printed table and the JSON file of a benchmark run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bench.runs import MIN_COMMIT_SAMPLES

MIB = 1024 * 1024
LABEL_WIDTH = 52


def _line(label: str, value: str) -> str:
    return f"{label:<{LABEL_WIDTH}} {value:>14}"


def table(result: dict[str, Any]) -> str:
    """Format the summary and one row per stage-one run."""
    runs = result["stage_one"]
    main_run, two, split = runs[0], runs[1], runs[2]
    latency = result["latency"]
    data_set = result["data_set"]
    rss_mib = max(main_run["rss_peak_bytes"], latency["rss_peak_bytes"]) / MIB
    offered = f"{latency['offered_predictions_per_s']:,.0f}/s"
    lines = [
        "",
        f"data set: {data_set['events']:,} events, {data_set['predictions']:,} "
        f"predictions, {data_set['partitions']} partitions",
        "",
        _line("measure", "value"),
        _line(
            "(a) raw consumer R, predictions/s",
            f"{result['raw']['predictions_per_s']:,.0f}",
        ),
        _line(
            "    Faust floor (decode only), predictions/s",
            f"{result['faust_floor']['predictions_per_s']:,.0f}",
        ),
        _line(
            "    the same, faust-streaming's consumer, pred/s",
            _rate(result.get("faust_floor_stock_consumer")),
        ),
        _line("(b) stage one, 1 worker, predictions/s", _stage_rate(main_run)),
        _line(
            "    both stages keep up with, 1 worker, pred/s",
            f"{main_run.get('end_to_end_predictions_per_s', 0.0):,.0f}",
        ),
        _line("    stage one, 2 workers, predictions/s", _stage_rate(two)),
        _line("    speed-up from 1 to 2 workers", _speed_up(result, main_run, two)),
        _line("    stage one, a route and a deliver worker", _stage_rate(split)),
        _line(f"(c) latency p50 at {offered}, ms", f"{latency['p50_ms']:,.1f}"),
        _line("    latency p99, ms", f"{latency['p99_ms']:,.1f}"),
        *_other_latency_lines(result),
        _line("(d) worker peak RSS, MiB", f"{rss_mib:,.0f}"),
        _line(
            "(e) Redis commands per event (steady state)",
            f"{main_run['redis_commands_per_event']:.3f}",
        ),
        _line(
            "    Redis commands per second", f"{main_run['redis_commands_per_s']:,.0f}"
        ),
        "",
        "stage one runs (survival: queue items per matched prediction)",
        "collectors target workers stages         pred/s events/s survival RSS MiB "
        "Redis/ev start s  cores used",
    ]
    lines.extend(_run_row(run) for run in runs)
    lines.append("")
    return "\n".join(lines)


def _run_row(run: dict[str, Any]) -> str:
    cores = " ".join(
        f"{name}={value:.2f}" for name, value in sorted(run["cores_used"].items())
    )
    return (
        f"{run['collectors']:>10,} {run['survival_target']:>6.0%} "
        f"{run['workers']:>7} {_stages(run):<13} {_stage_rate(run):>9} "
        f"{run['events_per_s']:>8,.0f} {run['survival']:>8.1%} "
        f"{run['rss_peak_bytes'] / MIB:>7.0f} {run['redis_commands_per_event']:>8.3f} "
        f"{run['start_up_s']:>7.1f}  {cores}"
    )


def _is_short(run: dict[str, Any]) -> bool:
    """Return whether the run's window ended at the end of the topic with too
    few commits for a rate. With --quick, one worker can read the small topic
    before a second one has joined the group."""
    return run.get("commit_samples", MIN_COMMIT_SAMPLES + 1) <= MIN_COMMIT_SAMPLES


def _stage_rate(run: dict[str, Any]) -> str:
    """Format a stage-one run's predictions per second, or "too short"."""
    return "too short" if _is_short(run) else f"{run['predictions_per_s']:,.0f}"


def _speed_up(
    result: dict[str, Any], single: dict[str, Any], two: dict[str, Any]
) -> str:
    if _is_short(single) or _is_short(two):
        return "n/a"
    return f"{result['speed_up_two_workers']:.2f}"


def _stages(run: dict[str, Any]) -> str:
    """Return "both", or each worker's stages joined by "+"."""
    stages = run.get("stages") or []
    if all(stage == "route,deliver" for stage in stages):
        return "both"
    return "+".join(stages)


def save(result: dict[str, Any], directory: Path) -> Path:
    """Write the result as `<UTC date and time>.json`, one file per run."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = result["date"].replace(":", "").replace("+0000", "Z")
    suffix = "" if result["plan"] == "full" else f"-{result['plan']}"
    path = directory / f"{stamp}{suffix}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def _rate(run: dict[str, float] | None) -> str:
    """Format a run's predictions per second; results from before a measure
    existed have no such run."""
    return "not measured" if run is None else f"{run['predictions_per_s']:,.0f}"


def _other_latency_lines(result: dict[str, Any]) -> list[str]:
    """Format the live capacity and the latency at half of it, or, in older
    results, the latency run at a quarter load."""
    capacity = result.get("live_capacity")
    if capacity is None:
        return _latency_lines(result.get("latency_quarter_load"))
    bounds = f"{capacity['kept_up_with']:,.0f}-{capacity['fell_behind_at']:,.0f}"
    return [
        _line("    live capacity, 1 worker, pred/s", bounds),
        *_latency_lines(result.get("latency_half_live_capacity")),
    ]


def _latency_lines(latency: dict[str, Any] | None) -> list[str]:
    """Format a latency run's p50 and p99, or nothing for a missing run."""
    if latency is None:
        return []
    offered = f"{latency['offered_predictions_per_s']:,.0f}/s"
    return [
        _line(f"    latency p50 at {offered}, ms", f"{latency['p50_ms']:,.1f}"),
        _line("    latency p99, ms", f"{latency['p99_ms']:,.1f}"),
    ]
