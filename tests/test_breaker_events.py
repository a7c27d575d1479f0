"""Malformed and unusual prediction events through a real worker.

Every invalid event or output must reach the dead-letter topic with a reason that
names the field, the valid outputs next to it must be posted, and the worker must
keep consuming. Expected destination ids come from the documented formula.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from agents.topics import ensure_topics
from app.produce import EventPublisher
from app.security import SecretBox
from tests.conftest import KAFKA, free_port
from tests.harness import (
    TEST_SECRET,
    Destination,
    WorkerProcess,
    event,
    expected_input_id,
    group_caught_up,
    output,
    put_collector,
    read_topic,
    serve_destination,
    settings_for,
    wait_for,
    worker_environment,
)

pytest_plugins = ("api_fixtures",)

OWNER = "owner"
APP = "dataset"
MODEL = ("owner", "models", "classifier")
COLLECTOR_KEY = f"{OWNER}/{APP}/all"
# Deadline for outcomes that a healthy worker reaches within a few seconds. The
# failing cases use it too, so that they fail quickly.
SHORT_DEADLINE_S = 30.0
# orjson 3.x encodes at most 254 nested containers, and the queue item wraps the
# metadata in four more levels (item, input, data, metadata).
DEPTH_OVER_ENCODER_LIMIT = 300
# How long a worker may take to exit after SIGTERM.
EXIT_S = 15.0


# The default partition count of the input topic.
INPUT_PARTITIONS = 8

Messages = list[tuple[bytes | None, bytes | None]]


@pytest.fixture
def pipeline(
    tmp_path: Path, redis_url: str, unique_name: str
) -> Iterator[tuple[dict[str, str], Destination, WorkerProcess]]:
    with serve_destination() as destination:
        environment = worker_environment(
            unique_name, redis_url, destination.url, free_port()
        )
        worker = WorkerProcess(environment, tmp_path / "worker.log")
        asyncio.run(ensure_topics(settings_for(environment)))
        yield environment, destination, worker
        worker.kill()


async def add_collector(redis_url: str, post_inputs_key: str = "dest-key") -> None:
    await put_collector(
        redis_url,
        user_id=OWNER,
        app_id=APP,
        id="all",
        model_user_id=MODEL[0],
        model_app_id=MODEL[1],
        model_id=MODEL[2],
        pre_queue_random_sample=1.0,
        post_inputs_key_encrypted=SecretBox(TEST_SECRET).encrypt(post_inputs_key),
    )


async def publish(environment: dict[str, str], messages: Messages) -> None:
    async with EventPublisher(settings_for(environment)) as publisher:
        await publisher.publish_many_raw(messages)


def input_id(event_id: str, source_input_id: str) -> str:
    return expected_input_id(COLLECTOR_KEY, event_id, source_input_id)


def raw_event(event_id: str, outputs: Any, caller: str = "caller-1") -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "created_at": "2026-12-04T10:00:00Z",
            "caller": {"user_id": caller},
            "outputs": outputs,
        }
    )


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def with_metadata_json(document: bytes, metadata_json: str) -> bytes:
    """Replace the first output's empty metadata object with raw JSON text, for
    nesting deeper than the encoders accept."""
    marker = b'"metadata":{}'
    assert marker in document
    return document.replace(marker, b'"metadata":' + metadata_json.encode(), 1)


def headers_of(message: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in message.headers}


async def dead_letters(
    environment: dict[str, str], count: int, worker: WorkerProcess
) -> list[Any]:
    """Wait for at least `count` dead letters and return all of them."""
    found: list[Any] = []

    async def enough() -> bool:
        nonlocal found
        assert worker.process is not None and worker.process.poll() is None, (
            worker.log_text()[-3000:]
        )
        found = await read_topic(KAFKA, environment["COLLECTORS_DLQ_TOPIC"])
        return len(found) >= count

    await wait_for(enough, f"{count} dead letters", SHORT_DEADLINE_S)
    return found


async def posted(
    destination: Destination, expected: set[str], worker: WorkerProcess
) -> None:
    async def arrived() -> bool:
        assert worker.process is not None and worker.process.poll() is None, (
            worker.log_text()[-3000:]
        )
        return expected <= set(destination.snapshot())

    await wait_for(arrived, f"{len(expected)} inputs", SHORT_DEADLINE_S)


async def wait_settled(environment: dict[str, str], worker: WorkerProcess) -> None:
    """Wait until the group has committed every input and queue offset, or the
    route agent has given up on a batch (then nothing more will happen)."""
    group = environment["COLLECTORS_GROUP"]
    topics = [environment["COLLECTORS_INPUT_TOPIC"], f"{group}-queue"]

    async def settled() -> bool:
        if "stopping the agent uncommitted" in worker.log_text():
            return True
        return await group_caught_up(KAFKA, group, topics)

    await wait_for(settled, "the worker to commit or give up", SHORT_DEADLINE_S)


# --- events that already work ------------------------------------------------------


async def test_edge_events_routed_or_dead_lettered(pipeline, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, worker = pipeline
    await add_collector(redis_url)
    worker.start()

    unicode_event = "ünï-事件"
    unicode_input = "in-😀-é"
    both = output("both")
    both["input"]["data"]["text"] = {"raw": "hello"}
    too_big = output("gt1", concepts=[("cat", 1.5)])
    negative = output("neg", concepts=[("cat", -0.1)])
    model_id_int = output("model-int")
    model_id_int["model"]["id"] = 5
    blank_input = output(" ")
    huge_number = raw_event("huge", [output("huge")]).replace(
        b'"value":0.5', b'"value":1e999'
    )
    big_integer = raw_event("bigint", [output("bigint")]).replace(
        b'"value":0.5', b'"value":123456789012345678901234567890'
    )
    nan = raw_event("nan", [output("nan")]).replace(b'"value":0.5', b'"value":NaN')
    messages: Messages = [
        (b"k-unicode", event(unicode_event, [output(unicode_input)])),
        (b"k-128", event("o128", [output(f"o128-{n}") for n in range(128)])),
        (b"k-129", event("o129", [output(f"o129-{n}") for n in range(129)])),
        (b"k-dup-1", event("dup", [output("dup")])),
        (b"k-dup-2", event("dup", [output("dup")])),
        (b"k-both", event("both", [both])),
        (b"k-gt1", event("gt1", [too_big, output("gt1-ok")])),
        (b"k-neg", event("neg", [negative])),
        (b"k-model", event("model-int", [model_id_int, output("model-ok")])),
        (b"k-blank", event("blank", [blank_input])),
        (b"k-nan", nan),
        (b"k-huge", huge_number),
        (b"k-bigint", big_integer),
        (b"k-object", raw_event("object", {"0": output("object")})),
        (b"k-caller", event("caller", [output("caller")], caller="")),
        (b"k-deep", with_metadata_json(event("deep", [output("deep")]), nested(2000))),
        (b"k-utf8", b'\xff\xfe{"id": "x"}'),
        (b"\xff\xfe\x00", event("binary-key", [output("binary-key")])),
        (b"\xc3\x28", b"not json either"),
    ]
    await publish(environment, messages)

    expected = {input_id("o128", f"o128-{n}") for n in range(128)} | {
        input_id(unicode_event, unicode_input),
        input_id("dup", "dup"),
        input_id("both", "both"),
        input_id("gt1", "gt1-ok"),
        input_id("model-int", "model-ok"),
        input_id("binary-key", "binary-key"),
    }
    await posted(destination, expected, worker)
    dead = await dead_letters(environment, 13, worker)

    assert set(destination.snapshot()) == expected
    stored_both = destination.snapshot()[input_id("both", "both")]
    assert stored_both["data"]["text"] == {"raw": "hello"}
    assert stored_both["data"]["image"]["url"].endswith("/both.jpg")
    by_key = {message.key: message for message in dead}
    assert len(by_key) == 13, sorted(by_key)
    headers = {key: headers_of(message) for key, message in by_key.items()}
    expectations = {
        b"k-129": ("INVALID_EVENT", "outputs"),
        b"k-gt1": ("INVALID_OUTPUT", "outputs.0.data.concepts.0.value"),
        b"k-neg": ("INVALID_OUTPUT", "outputs.0.data.concepts.0.value"),
        b"k-model": ("INVALID_OUTPUT", "outputs.0.model.id"),
        b"k-blank": ("INVALID_OUTPUT", "outputs.0.input"),
        b"k-nan": ("INVALID_JSON", "invalid JSON"),
        b"k-huge": ("INVALID_JSON", "infinity"),
        b"k-bigint": ("INVALID_OUTPUT", "outputs.0.data.concepts.0.value"),
        b"k-object": ("INVALID_EVENT", "outputs"),
        b"k-caller": ("INVALID_EVENT", "caller.user_id"),
        b"k-deep": ("INVALID_JSON", "depth"),
        b"k-utf8": ("INVALID_JSON", "invalid JSON"),
        b"\xc3\x28": ("INVALID_JSON", "invalid JSON"),
    }
    for key, (code, fragment) in expectations.items():
        assert headers[key]["error_code"] == code, (key, headers[key])
        assert fragment in headers[key]["error"], (key, headers[key])
    for key in by_key:
        assert headers[key]["source_topic"] == environment["COLLECTORS_INPUT_TOPIC"]
        assert 0 <= int(headers[key]["source_partition"]) < INPUT_PARTITIONS
        assert int(headers[key]["source_offset"]) >= 0
        assert headers[key]["attempts"] == "1"
        assert headers[key]["first_failure_at"].endswith("Z")
    assert headers[b"k-gt1"]["output_index"] == "0"
    assert headers[b"k-gt1"]["event_id"] == "gt1"
    assert headers[b"k-model"]["output_index"] == "0"
    assert headers[b"k-129"]["event_id"] == "o129"
    assert "output_index" not in headers[b"k-129"]
    assert by_key[b"k-utf8"].value == b'\xff\xfe{"id": "x"}'
    assert by_key[b"\xc3\x28"].value == b"not json either"
    assert b"k-128" not in by_key
    assert b"k-dup-1" not in by_key
    assert worker.process is not None and worker.process.poll() is None


# --- bugs ---------------------------------------------------------------------------


async def test_string_concept_value_dead_lettered(pipeline, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """A concept value that pydantic would convert ("0.9", true) must be rejected.
    The rules read the raw output, where comparing "0.9" with 0.5 raises TypeError
    and crashes the route agent."""
    environment, destination, worker = pipeline
    await add_collector(redis_url)
    worker.start()

    string_value = output("str-value", concepts=[("cat", 0.5), ("dog", 0.2)])
    string_value["data"]["concepts"][0]["value"] = "0.9"
    bool_value = output("bool-value")
    bool_value["data"]["concepts"][0]["value"] = True
    messages: Messages = [
        (b"k", event("str", [string_value, output("str-ok")])),
        (b"k", event("bool", [bool_value, output("bool-ok")])),
        (b"k", event("after", [output("after")])),
    ]
    await publish(environment, messages)

    expected = {
        input_id("str", "str-ok"),
        input_id("bool", "bool-ok"),
        input_id("after", "after"),
    }
    await posted(destination, expected, worker)
    dead = await dead_letters(environment, 2, worker)

    assert set(destination.snapshot()) == expected
    by_event = {headers_of(m)["event_id"]: headers_of(m) for m in dead}
    assert set(by_event) == {"str", "bool"}
    for headers in by_event.values():
        assert headers["error_code"] == "INVALID_OUTPUT"
        assert headers["output_index"] == "0"
        assert "outputs.0.data.concepts.0.value" in headers["error"]
    assert "Crashed" not in worker.log_text()


async def test_non_object_outputs_keep_valid_ones(pipeline, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """An output that is not a JSON object is an invalid output. It is
    dead-lettered with its `output_index`, and the event's valid outputs are
    processed."""
    environment, destination, worker = pipeline
    await add_collector(redis_url)
    worker.start()

    outputs = [output("first"), "text", None, 7, output("last")]
    await publish(environment, [(b"k", raw_event("mixed", outputs))])

    expected = {input_id("mixed", "first"), input_id("mixed", "last")}
    await posted(destination, expected, worker)
    dead = await dead_letters(environment, 3, worker)

    headers = [headers_of(message) for message in dead]
    assert sorted(h["output_index"] for h in headers) == ["1", "2", "3"]
    for item in headers:
        assert item["error_code"] == "INVALID_OUTPUT"
        assert f"outputs.{item['output_index']}" in item["error"]


async def test_deep_metadata_output_dead_lettered(pipeline, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, destination, worker = pipeline
    await add_collector(redis_url)
    worker.start()

    deep = with_metadata_json(
        event("deep", [output("deep"), output("deep-ok")]),
        nested(DEPTH_OVER_ENCODER_LIMIT),
    )
    messages: Messages = [(b"k", deep), (b"k", event("after", [output("after")]))]
    await publish(environment, messages)
    await wait_settled(environment, worker)

    expected = {input_id("deep", "deep-ok"), input_id("after", "after")}
    assert set(destination.snapshot()) == expected
    (dead,) = await read_topic(KAFKA, environment["COLLECTORS_DLQ_TOPIC"])
    headers = headers_of(dead)
    assert headers["error_code"] == "INVALID_OUTPUT"
    assert headers["output_index"] == "0"
    assert "outputs.0.input.data.metadata" in headers["error"]


async def test_sigterm_after_failed_batch_exits(pipeline, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    environment, _destination, worker = pipeline
    await add_collector(redis_url)
    worker.start()
    deep = with_metadata_json(
        event("deep", [output("deep")]), nested(DEPTH_OVER_ENCODER_LIMIT)
    )
    await publish(environment, [(b"k", deep)])

    await wait_settled(environment, worker)
    assert worker.process is not None
    worker.process.terminate()
    started = time.monotonic()
    # Polls a child process, which has no event to await.
    while worker.process.poll() is None and time.monotonic() - started < EXIT_S:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    assert worker.process.poll() is not None, f"still running {EXIT_S} s after SIGTERM"


async def test_invalid_base64_spares_other_inputs(
    tmp_path: Path, redis_url: str, unique_name: str, api: Any
) -> None:
    """The service's own inputs API as the destination, which validates base64."""
    environment = worker_environment(unique_name, redis_url, api.base_url, free_port())
    await ensure_topics(settings_for(environment))
    key = api.key(user_id=OWNER, app_id=APP)
    await add_collector(redis_url, post_inputs_key=key)
    worker = WorkerProcess(environment, tmp_path / "worker.log").start()
    try:
        garbage = output("garbage")
        garbage["input"]["data"]["image"] = {"base64": "!!!not base64$$$"}
        messages: Messages = [
            (b"k", event("b64", [garbage, output("b64-ok")])),
            (b"k", event("neighbour", [output("neighbour")])),
        ]
        await publish(environment, messages)
        await wait_settled(environment, worker)
        (dead,) = await read_topic(KAFKA, environment["COLLECTORS_DLQ_TOPIC"])
        assert "base64" in headers_of(dead)["error"]

        async with httpx.AsyncClient(
            base_url=api.base_url, headers={"Authorization": f"Key {key}"}
        ) as client:
            for event_id, source_id in (("b64", "b64-ok"), ("neighbour", "neighbour")):
                path = f"/v2/users/{OWNER}/apps/{APP}/inputs/"
                response = await client.get(path + input_id(event_id, source_id))
                assert response.status_code == 200, (source_id, response.text)
    finally:
        worker.kill()
