"""The benchmark's printed table (bench/report.py)."""

from __future__ import annotations

from typing import Any

import orjson

from bench.report import table
from tests.harness import REPO


def recorded_result() -> dict[str, Any]:
    """Return a full benchmark result kept in bench/results/."""
    path = REPO / "bench" / "results" / "2026-12-05T162937Z.json"
    return orjson.loads(path.read_bytes())


def line_of(text: str, label: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(label)]
    return line


def test_table_prints_rates_of_full_runs() -> None:
    text = table(recorded_result())
    assert line_of(text, "    stage one, 2 workers").endswith("80,581")
    assert line_of(text, "    speed-up from 1 to 2 workers").endswith("1.68")


def test_table_marks_runs_too_short_for_a_rate() -> None:
    result = recorded_result()
    result["stage_one"][1]["commit_samples"] = 2
    text = table(result)
    assert line_of(text, "    stage one, 2 workers").endswith("too short")
    assert line_of(text, "    speed-up from 1 to 2 workers").endswith("n/a")
    assert line_of(text, "(b) stage one, 1 worker").endswith("48,033")
    (row,) = [line for line in text.splitlines() if "       2 both" in line]
    assert "too short" in row
