"""Observability of a running deployment: the worker's summary line, the statistics
in Redis, both /metrics pages, health and readiness, and the `lag` and `status`
commands. One worker processes known events first (tests/observability_fixtures.py);
each test checks one surface against the numbers those events must produce."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import httpx
import orjson
import pytest
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import REPO, wait_for

if TYPE_CHECKING:
    from tests.observability_fixtures import Deployment

# Loaded as a plugin by name and not imported above, because pytest must import a
# plugin module first to rewrite its asserts, and otherwise warns (an error here).
pytest_plugins = ("tests.observability_fixtures",)
OWNER = "owner"
APP = "dataset"

SUMMARY = re.compile(
    r"summary events_in=(?P<events_in>\d+) outputs_in=(?P<outputs_in>\d+) "
    r"matched=(?P<matched>\d+) enqueued=(?P<enqueued>\d+) posted=(?P<posted>\d+) "
    r"already_present=(?P<already_present>\d+) failed=(?P<failed>\d+) "
    r"dead_lettered=(?P<dead_lettered>\d+) lag=(?P<lag>\d+)\s*$",
    re.MULTILINE,
)


def scrape(url: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Fetch a /metrics page and return metric family name -> samples."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        families[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return families


def sample_value(
    families: dict[str, list[tuple[str, dict[str, str], float]]],
    sample_name: str,
    **labels: str,
) -> float:
    for family in families.values():
        for name, sample_labels, value in family:
            if name == sample_name and all(
                sample_labels.get(k) == v for k, v in labels.items()
            ):
                return value
    raise AssertionError(f"no sample {sample_name} with labels {labels}")


def run_cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=deployment.environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the summary line -----------------------------------------------------------------


async def test_summary_line_format_and_values(deployment: Deployment) -> None:
    expected = {
        "events_in": deployment.events_in,
        "outputs_in": deployment.outputs_in,
        "matched": deployment.total("matched"),
        "enqueued": deployment.total("enqueued"),
        "posted": deployment.total("posted"),
        "already_present": 0,
        "failed": 0,
        "dead_lettered": deployment.dead_lettered,
        "lag": 0,
    }
    seen: list[dict[str, int]] = []

    async def summary_matches() -> bool:
        seen[:] = [
            {name: int(value) for name, value in match.groupdict().items()}
            for match in SUMMARY.finditer(deployment.worker.log_text())
        ]
        # Two lines, so that the interval of COLLECTORS_SUMMARY_INTERVAL_S=1 shows.
        return len(seen) >= 2 and seen[-1] == expected

    await wait_for(summary_matches, "summary lines with the expected values", 30)
    lines = [
        line
        for line in deployment.worker.log_text().splitlines()
        if " summary " in line
    ]
    assert all(SUMMARY.search(line) for line in lines), lines[-3:]


# --- statistics in Redis --------------------------------------------------------------


async def test_stats_flush_writes_funnels_rates_heartbeat(
    deployment: Deployment,
) -> None:
    client = redis.Redis.from_url(
        deployment.redis_url, protocol=2, decode_responses=True
    )
    try:
        for key, steps in deployment.funnels.items():
            stored = await client.hgetall(f"col:stats:funnel:{key}")
            assert {step: int(stored.get(step, 0)) for step in steps} == steps, key
        assert await client.smembers("col:stats:collectors") == set(deployment.funnels)

        rate_keys = [key async for key in client.scan_iter("col:stats:rate:*")]
        totals: dict[str, int] = {}
        for key in rate_keys:
            assert 0 < await client.ttl(key) <= 3600, key
            assert int(key.rsplit(":", 1)[1]) % 10 == 0, key
            for name, value in (await client.hgetall(key)).items():
                totals[name] = totals.get(name, 0) + int(value)
        assert totals.get("events_in") == deployment.events_in
        assert totals.get("matched") == deployment.total("matched")
        assert totals.get("posted") == deployment.total("posted")
        assert totals.get("dead_lettered") == deployment.dead_lettered

        latency = await client.hgetall("col:stats:latency")
        assert int(latency["count"]) >= 1
        assert float(latency["sum_s"]) > 0

        worker_ids = await client.zrange("col:stats:workers", 0, -1)
        assert len(worker_ids) == 1
        heartbeat = await client.hgetall(f"col:stats:worker:{worker_ids[0]}")
        assert 0 < await client.ttl(f"col:stats:worker:{worker_ids[0]}") <= 30
        assert heartbeat["group"] == deployment.name
        assert int(heartbeat["pid"]) == deployment.worker.process.pid  # type: ignore[union-attr]
        assert int(heartbeat["web_port"]) == int(
            deployment.environment["COLLECTORS_WORKER_WEB_PORT"]
        )
        partitions = orjson.loads(heartbeat["partitions"])
        assert partitions[deployment.settings.input_topic] == list(range(8))
        assert partitions[deployment.settings.queue_topic] == list(range(8))
        assert heartbeat["config_stale"] == "0"
        assert orjson.loads(heartbeat["totals"])["events_in"] == deployment.events_in
    finally:
        await client.aclose()


# --- worker /metrics ------------------------------------------------------------------


def test_worker_metrics_parse(deployment: Deployment) -> None:
    families = scrape(f"{deployment.web_url}/metrics")
    for name, samples in families.items():
        for sample_name, _, _ in samples:
            if sample_name.endswith("_created"):
                continue
            if name in ("collectors_worker_events", "collectors_funnel"):
                assert sample_name.endswith("_total"), sample_name

    assert (
        sample_value(families, "collectors_worker_events_total", result="events_in")
        == deployment.events_in
    )
    for key, steps in deployment.funnels.items():
        user_id, app_id, collector_id = key.split("/")
        for step, count in steps.items():
            value = sample_value(
                families,
                "collectors_funnel_total",
                user_id=user_id,
                app_id=app_id,
                collector_id=collector_id,
                step=step,
            )
            assert value == count, (key, step)

    count = sample_value(
        families, "collectors_worker_destination_latency_seconds_count"
    )
    infinite = sample_value(
        families, "collectors_worker_destination_latency_seconds_bucket", le="+Inf"
    )
    assert count >= 1
    assert infinite == count
    assert sample_value(families, "collectors_config_stale") == 0
    topics = (deployment.settings.input_topic, deployment.settings.queue_topic)
    for topic in topics:
        assigned = sample_value(
            families, "collectors_worker_assigned_partitions", topic=topic
        )
        assert assigned == 8, topic
    lags = [
        v
        for n, _, v in families["collectors_worker_lag"]
        if n == "collectors_worker_lag"
    ]
    assert len(lags) == 24
    assert sum(lags) == 0
    assert sample_value(families, "collectors_worker_stalled_partitions") == 0


# --- API /metrics ---------------------------------------------------------------------


def test_api_metrics_parse(deployment: Deployment) -> None:
    base_url = deployment.api.base_url
    assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200
    families = scrape(f"{base_url}/metrics")

    assert sample_value(families, "collectors_kafka_up") == 1
    assert sample_value(families, "collectors_redis_up") == 1
    lag_samples = families["collectors_group_lag"]
    assert {labels["topic"] for _, labels, _ in lag_samples} == {
        deployment.settings.input_topic,
        deployment.settings.queue_topic,
        deployment.settings.retry_topic,
    }
    assert len(lag_samples) == 24
    assert all(value == 0 for _, _, value in lag_samples)
    assert sample_value(families, "collectors_group_members") == 1
    assert sample_value(families, "collectors_group_workers") == 1

    for key, steps in deployment.funnels.items():
        user_id, app_id, collector_id = key.split("/")
        for step, count in steps.items():
            value = sample_value(
                families,
                "collectors_group_funnel_total",
                user_id=user_id,
                app_id=app_id,
                collector_id=collector_id,
                step=step,
            )
            assert value == count, (key, step)
    latency_count = sample_value(
        families, "collectors_group_destination_latency_seconds_count"
    )
    assert latency_count >= 1

    healthz = sample_value(
        families,
        "collectors_api_requests_total",
        method="GET",
        route="/healthz",
        status="200",
    )
    assert healthz >= 1
    duration = sample_value(
        families,
        "collectors_api_request_duration_seconds_count",
        method="GET",
        route="/healthz",
    )
    assert duration >= 1


# --- health ---------------------------------------------------------------------------


def test_api_health_and_readiness(deployment: Deployment) -> None:
    base_url = deployment.api.base_url
    live = httpx.get(f"{base_url}/healthz", timeout=10)
    ready = httpx.get(f"{base_url}/readyz", timeout=10)
    assert live.status_code == 200
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"ready": True, "checks": {"redis": "ok", "kafka": "ok"}}


def test_worker_health_and_readiness(deployment: Deployment) -> None:
    live = httpx.get(f"{deployment.web_url}/healthz", timeout=10)
    ready = httpx.get(f"{deployment.web_url}/readyz", timeout=10)
    assert live.status_code == 200, live.text
    assert live.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True
    assert body["checks"] == {"config": "ok", "redis": "ok", "kafka": "ok"}


# --- commands -------------------------------------------------------------------------


def test_cli_lag_prints_table(deployment: Deployment) -> None:
    result = run_cli(deployment, "lag")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"group {deployment.name}: Stable, 1 member"
    assert lines[2].split() == [
        "topic",
        "partition",
        "end",
        "offset",
        "committed",
        "lag",
    ]
    rows = [line.split() for line in lines[3:]]
    partition_rows = [row for row in rows if row[1].isdigit()]
    assert len(partition_rows) == 24
    for topic, _, end, committed, lag in partition_rows:
        assert int(lag) == 0, (topic, end, committed)
        if end == "0":
            assert committed == "-", topic
        else:
            assert int(committed) == int(end), topic
    input_ends = sum(
        int(row[2])
        for row in partition_rows
        if row[0] == deployment.settings.input_topic
    )
    assert input_ends == deployment.events_in
    assert rows[-1] == ["all", "topics", "total", "0"]

    as_json = run_cli(deployment, "lag", "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["total"] == 0
    assert len(document["members"]) == 1


def test_cli_status_prints_collector(deployment: Deployment) -> None:
    key = f"{OWNER}/{APP}/half"
    expected = deployment.funnels[key]
    by_key = run_cli(deployment, "status", key)
    by_options = run_cli(
        deployment, "status", "half", "--user-id", OWNER, "--app-id", APP
    )
    assert by_key.returncode == 0, by_key.stderr
    assert by_options.stdout == by_key.stdout
    lines = dict(
        re.match(r"(\S+(?: \S+)*)\s{2,}(.*)", line).groups()  # type: ignore[union-attr]
        for line in by_key.stdout.splitlines()
        if line.strip()
    )
    assert lines["collector"] == f"{key} (active)"
    assert lines["random sample"] == "0.5"
    assert lines["model"] == "owner/models/classifier, any version, any caller"
    for step, count in expected.items():
        assert int(lines[step].replace(",", "")) == count, step

    as_json = run_cli(deployment, "status", key, "--json")
    document = json.loads(as_json.stdout)
    assert document["funnel"]["posted"] == expected["posted"]
    assert document["collector"]["id"] == "half"
    assert "post_inputs_key_encrypted" not in as_json.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", f"{OWNER}/{APP}/missing"), "not found"),
        (("status", "half"), "--user-id and --app-id"),
        (("status", f"{OWNER}/{APP}/half", "--app-id", "other"), "another user or app"),
    ],
)
def test_cli_status_rejects(
    deployment: Deployment, args: tuple[str, ...], message: str
) -> None:
    result = run_cli(deployment, *args)
    assert result.returncode != 0
    assert message in result.stderr
