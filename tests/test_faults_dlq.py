"""`collectors dlq list` and `collectors dlq replay` on dead letters that a real
worker wrote: bad events, and inputs that the destination rejected."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from app.dlq import DeadLetterRecord, ReplayPosition
from tests.fault_fixtures import (
    MODEL,
    Scenario,
    assert_alive,
    publish_events,
)
from tests.harness import (
    REPO,
    WorkerProcess,
    end_offsets,
    event,
    expected_input_id,
    group_caught_up,
    output,
    put_collector,
    read_topic,
    wait_for,
)


async def collectors_cli(
    environment: dict[str, str], *arguments: str
) -> tuple[str, str]:
    """Run `collectors ARGUMENTS...`; return stdout and stderr, failing on a
    non-zero exit status."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", *arguments],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{arguments}: {result.stdout}\n{result.stderr}"
    return result.stdout, result.stderr


def headers_of(message: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in message.headers}


async def replay_group_offsets(scenario: Scenario) -> dict[Any, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=scenario.bootstrap)
    await admin.start()
    try:
        return dict(
            await admin.list_consumer_group_offsets(f"{scenario.name}-dlq-replay")
        )
    finally:
        await admin.close()


async def write_dead_letters(scenario: Scenario, worker: WorkerProcess) -> str:
    """Have the worker dead-letter three messages: an event that is not JSON, an
    event with one invalid output, and an input that the destination rejects.
    Return the key of the collector whose input was rejected."""
    collector = await put_collector(
        scenario.redis_url,
        user_id="owner",
        app_id="dataset",
        id="all",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=1.0,
    )
    scenario.destination.fail_with = 400
    worker.start()
    invalid_output = output("broken")
    del invalid_output["model"]["id"]
    unwatched = output("fine", ("someone", "else", "model"))
    messages = [
        (b"k-json", b"this is not json"),
        (b"e-mixed", event("e-mixed", [unwatched, invalid_output])),
        (b"e-rejected", event("e-rejected", [output("in-rejected", MODEL)])),
    ]
    await publish_events(
        scenario.bootstrap,
        scenario.input_topic,
        [(key.decode(), value) for key, value in messages],
    )

    async def dead_lettered() -> bool:
        assert_alive(worker)
        dead = await read_topic(scenario.bootstrap, f"{scenario.name}-predictions.dlq")
        return len(dead) >= 3 and await group_caught_up(
            scenario.bootstrap, scenario.name, scenario.topics
        )

    await wait_for(dead_lettered, "three dead letters")
    return collector.key


@pytest.mark.slow
async def test_dlq_list_prints_each_dead_letter(scenario: Scenario) -> None:
    worker = scenario.worker("a")
    collector_key = await write_dead_letters(scenario, worker)
    environment = worker.environment

    stdout, _ = await collectors_cli(environment, "dlq", "list")
    lines = stdout.splitlines()
    assert len(lines) == 3, stdout
    by_code = {line.split()[1]: line for line in lines}
    assert set(by_code) == {
        "INVALID_JSON",
        "INVALID_OUTPUT",
        "COLLECTOR_POST_INPUT_FAILED",
    }

    invalid_json = by_code["INVALID_JSON"]
    assert f"source={scenario.input_topic}:" in invalid_json
    assert "attempts=1" in invalid_json
    assert "first_failure_at=20" in invalid_json
    assert 'error="invalid JSON' in invalid_json
    assert invalid_json.endswith(" size=16")

    invalid_output = by_code["INVALID_OUTPUT"]
    assert "event_id=e-mixed" in invalid_output
    assert "output_index=1" in invalid_output
    assert "outputs.1.model.id" in invalid_output

    rejected = by_code["COLLECTOR_POST_INPUT_FAILED"]
    assert f"collector={collector_key}" in rejected
    assert f"source={scenario.name}-retry " in rejected
    assert "HTTP 400" in rejected

    stdout, _ = await collectors_cli(environment, "dlq", "list", "--limit", "1")
    assert len(stdout.splitlines()) == 1
    stdout, _ = await collectors_cli(
        environment, "dlq", "list", "--error-code", "INVALID_OUTPUT"
    )
    assert stdout.splitlines() == [invalid_output]
    assert await replay_group_offsets(scenario) == {}


@pytest.mark.slow
async def test_dlq_replay_publishes_each_dead_letter_once(scenario: Scenario) -> None:
    worker = scenario.worker("a")
    collector_key = await write_dead_letters(scenario, worker)
    environment = worker.environment
    input_topic = scenario.input_topic
    retry_topic = f"{scenario.name}-retry"
    ends_before = {
        topic: await end_offsets(scenario.bootstrap, topic)
        for topic in (input_topic, retry_topic)
    }

    # A dry run publishes and commits nothing.
    stdout, stderr = await collectors_cli(environment, "dlq", "replay", "--dry-run")
    assert len([n for n in stdout.splitlines() if n.startswith("would replay")]) == 3
    assert "would replay 3 dead letters" in stderr
    for topic, ends in ends_before.items():
        assert await end_offsets(scenario.bootstrap, topic) == ends
    assert await replay_group_offsets(scenario) == {}

    # The rejected input, once the destination accepts it again.
    scenario.destination.fail_with = None
    stdout, stderr = await collectors_cli(
        environment, "dlq", "replay", "--error-code", "COLLECTOR_POST_INPUT_FAILED"
    )
    assert len(stdout.splitlines()) == 1, stdout
    assert f"-> {retry_topic}" in stdout
    assert "replayed 1 dead letters" in stderr
    rejected_id = expected_input_id(collector_key, "e-rejected", "in-rejected")

    async def delivered() -> bool:
        assert_alive(worker)
        return rejected_id in scenario.destination.snapshot()

    await wait_for(delivered, "the replayed input at the destination")
    retried = [
        m
        for m in await read_topic(scenario.bootstrap, retry_topic)
        if "replayed_from" in headers_of(m)
    ]
    assert len(retried) == 1
    assert headers_of(retried[0])["attempts"] == "2"
    assert orjson.loads(retried[0].value)["collector"] == collector_key

    stdout, stderr = await collectors_cli(
        environment, "dlq", "replay", "--error-code", "COLLECTOR_POST_INPUT_FAILED"
    )
    assert stdout == ""
    assert "replayed 0 dead letters" in stderr

    # The remaining two go back to the input topic. The worker is stopped first,
    # so that it does not dead-letter them again while the test counts.
    worker.stop()
    stdout, stderr = await collectors_cli(environment, "dlq", "replay")
    assert len(stdout.splitlines()) == 2, stdout
    assert all(line.endswith(f"-> {input_topic}") for line in stdout.splitlines())
    assert "skipped 1 already replayed" in stderr
    stdout, stderr = await collectors_cli(environment, "dlq", "replay")
    assert stdout == ""
    assert "replayed 0 dead letters" in stderr

    replayed = [
        m
        for m in await read_topic(scenario.bootstrap, input_topic)
        if "replayed_from" in headers_of(m)
    ]
    assert sorted(m.key for m in replayed) == [b"e-mixed", b"k-json"]
    assert {m.value for m in replayed if m.key == b"k-json"} == {b"this is not json"}
    sources = [headers_of(m)["replayed_from"] for m in [*replayed, *retried]]
    assert len(set(sources)) == 3


def letter(offset: int, code: str) -> DeadLetterRecord:
    return DeadLetterRecord(0, offset, None, b"", (("error_code", code.encode()),))


def test_replay_position_filtered_then_all() -> None:
    position = ReplayPosition.parse(0, "")
    # A run for code A over offsets 0..9 covers only A's dead letters.
    assert position.start("A") == 0
    position.advance("A", 10)
    assert position.replayed(letter(3, "A"))
    assert not position.replayed(letter(3, "B"))
    assert position.start("A") == 10
    assert position.start(None) == 0

    # A run for every code over 0..14 then covers all of them, so the per-code
    # offset below the new position is dropped.
    position.advance(None, 15)
    assert position.by_code == {}
    assert position.replayed(letter(14, "B"))
    assert not position.replayed(letter(15, "A"))

    position.advance("B", 20)
    restored = ReplayPosition.parse(position.offset, position.metadata())
    assert restored == position
    assert restored.start("B") == 20
    assert restored.start("A") == 15


@pytest.mark.parametrize("metadata", ["not json", "[1, 2]", '{"A": "x"}'])
def test_replay_position_ignores_invalid_metadata(metadata: str) -> None:
    position = ReplayPosition.parse(7, metadata)
    assert position.offset == 7
    assert position.by_code == {}


def test_replay_headers_increment_attempts() -> None:
    record = DeadLetterRecord(
        2,
        41,
        b"k",
        b"v",
        (
            ("error_code", b"INVALID_JSON"),
            ("attempts", b"3"),
            ("replayed_from", b"0:1"),
        ),
    )
    headers = dict(record.replay_headers())
    assert headers["attempts"] == b"4"
    assert headers["replayed_from"] == b"2:41"
    assert headers["error_code"] == b"INVALID_JSON"
    assert len(record.replay_headers()) == 3
