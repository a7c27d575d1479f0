"""The worker's queue topic on real Kafka: the route agent packs collectors into one
message per queue partition, and the deliver agent reads both message forms, sends
malformed messages to the dead-letter topic and contains one collector's failure.

One worker serves every test of this module. Tests that need a particular queue
message write it to the queue topic themselves.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from agents.queue_messages import unpack_queue_message
from tests.conftest import KAFKA
from tests.fault_fixtures import (
    MODEL,
    Scenario,
    assert_alive,
    publish_events,
    scenario_with_private_redis,
)
from tests.harness import (
    WorkerProcess,
    event,
    expected_input_id,
    output,
    put_collector,
    read_topic,
    settings_for,
    wait_for,
)


@dataclass
class Deployment:
    scenario: Scenario
    worker: WorkerProcess
    queue_topic: str
    dlq_topic: str
    queue_partitions: int
    # Two collectors whose keys share a queue partition, and one in another.
    first_key: str
    second_key: str
    other_key: str

    def partition(self, key: str) -> int:
        partitions = list(range(self.queue_partitions))
        return int(DefaultPartitioner()(key.encode(), partitions, partitions))


def collector_apps(partitions: int) -> tuple[str, str, str]:
    """Pick three app ids: the first two put collector "all" in the same queue
    partition, the third in another."""
    numbers = list(range(partitions))
    apps_by_partition: dict[int, list[str]] = {}
    for n in range(100):
        app_id = f"app{n}"
        key = f"owner/{app_id}/all".encode()
        partition = DefaultPartitioner()(key, numbers, numbers)
        apps_by_partition.setdefault(partition, []).append(app_id)
    shared = next(apps for apps in apps_by_partition.values() if len(apps) >= 2)
    other = next(apps[0] for apps in apps_by_partition.values() if apps != shared)
    return shared[0], shared[1], other


@pytest.fixture(scope="module")
async def deployment(
    services: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    name = f"qm{os.urandom(5).hex()}"
    tmp_path = tmp_path_factory.mktemp(name)
    with scenario_with_private_redis(tmp_path, name, KAFKA) as (scenario, _):
        await scenario.create_topics()
        settings = settings_for(scenario.environment(0))
        apps = collector_apps(settings.internal_partitions)
        keys = []
        for app_id in apps:
            record = await put_collector(
                scenario.redis_url,
                user_id="owner",
                app_id=app_id,
                id="all",
                model_user_id=MODEL[0],
                model_app_id=MODEL[1],
                model_id=MODEL[2],
                pre_queue_random_sample=1.0,
            )
            keys.append(record.key)
        worker = scenario.worker("a").start()
        yield Deployment(
            scenario=scenario,
            worker=worker,
            queue_topic=settings.queue_topic,
            dlq_topic=settings.dlq_topic,
            queue_partitions=settings.internal_partitions,
            first_key=keys[0],
            second_key=keys[1],
            other_key=keys[2],
        )


def queue_item(input_id: str) -> dict[str, Any]:
    """An item as the route agent queues it, with `input_id` in its destination id."""
    return {
        "id": f"direct-{input_id}",
        "event_id": f"e-{input_id}",
        "created_at": 1_780_000_000.0,
        "input": {
            "id": input_id,
            "data": {"image": {"url": f"https://images.example/{input_id}.jpg"}},
        },
    }


async def send_to_queue(
    deployment: Deployment, messages: list[tuple[bytes | None, bytes, int | None]]
) -> None:
    """Write (key, value, partition) messages to the queue topic, one after the
    other, so that messages to one partition keep their order."""
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
    await producer.start()
    try:
        for key, value, partition in messages:
            sent = await producer.send(
                deployment.queue_topic, value=value, key=key, partition=partition
            )
            await sent
    finally:
        await producer.stop()


async def wait_for_inputs(deployment: Deployment, ids: set[str], what: str) -> None:
    async def arrived() -> bool:
        assert_alive(deployment.worker)
        return ids <= set(deployment.scenario.destination.snapshot())

    await wait_for(arrived, what)


async def dead_letters_with(
    deployment: Deployment, error_code: str, count: int
) -> list[Any]:
    """Wait for `count` dead letters with this error code; return them."""
    found: list[Any] = []

    async def arrived() -> bool:
        assert_alive(deployment.worker)
        letters = await read_topic(KAFKA, deployment.dlq_topic)
        found[:] = [m for m in letters if headers_of(m)["error_code"] == error_code]
        return len(found) >= count

    await wait_for(arrived, f"{count} dead letters with {error_code}")
    return found


def headers_of(message: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in message.headers}


async def test_route_packs_collectors_by_partition(deployment: Deployment) -> None:
    keys = [deployment.first_key, deployment.second_key, deployment.other_key]
    await publish_events(
        KAFKA,
        deployment.scenario.input_topic,
        [("e-route", event("e-route", [output("in-route", MODEL)]))],
    )
    expected = {expected_input_id(key, "e-route", "in-route") for key in keys}
    await wait_for_inputs(deployment, expected, "the routed event's inputs")

    queued = [
        message
        for message in await read_topic(KAFKA, deployment.queue_topic)
        if b'"event_id":"e-route"' in message.value
    ]
    parts = {
        message.partition: unpack_queue_message(message.value) for message in queued
    }
    keys_by_message = {p: [key for key, _ in pairs] for p, pairs in parts.items()}
    shared = deployment.partition(deployment.first_key)
    assert len(queued) == 2, keys_by_message
    assert keys_by_message == {
        shared: [deployment.first_key, deployment.second_key],
        deployment.partition(deployment.other_key): [deployment.other_key],
    }
    message_keys = {message.partition: message.key for message in queued}
    assert message_keys[shared] is None
    other_partition = deployment.partition(deployment.other_key)
    assert message_keys[other_partition] == deployment.other_key.encode()


async def test_deliver_reads_one_collector_form(deployment: Deployment) -> None:
    key = deployment.other_key
    items = [queue_item("old-form-1"), queue_item("old-form-2")]
    value = orjson.dumps({"collector": key, "items": items})
    await send_to_queue(deployment, [(key.encode(), value, None)])

    ids = {item["id"] for item in items}
    await wait_for_inputs(deployment, ids, "the one-collector message's inputs")
    received = deployment.scenario.destination.snapshot()
    assert {received[i]["app"] for i in ids} == {"owner/" + key.split("/")[1]}


async def test_invalid_queue_message_is_dead_lettered(
    deployment: Deployment,
) -> None:
    key = deployment.first_key
    partition = deployment.partition(key)
    malformed = [
        b"not json",
        b'{"batches": [{"collector": 5, "items": []}]}',
        b'{"batches": {}}',
    ]
    after = orjson.dumps({"collector": key, "items": [queue_item("after-invalid")]})
    await send_to_queue(
        deployment,
        [*((None, value, partition) for value in malformed), (None, after, partition)],
    )

    # The valid message after the malformed ones, in the same partition, arrives.
    await wait_for_inputs(
        deployment, {"direct-after-invalid"}, "the message after the malformed ones"
    )
    letters = await dead_letters_with(deployment, "INVALID_QUEUE_MESSAGE", 3)
    assert sorted(m.value for m in letters) == sorted(malformed)
    for letter in letters:
        headers = headers_of(letter)
        assert headers["source_topic"] == deployment.queue_topic
        assert headers["source_partition"] == str(partition)
        assert headers["error"].startswith("invalid queue message")
        assert "collector" not in headers


async def test_broken_collector_fails_alone(deployment: Deployment) -> None:
    healthy_key = deployment.first_key
    broken_key = deployment.second_key
    # An item without "input" makes the deliver agent raise KeyError for that
    # collector only.
    broken_items = [queue_item("broken-1"), queue_item("broken-2")]
    del broken_items[1]["input"]
    healthy_items = [queue_item("healthy-1"), queue_item("healthy-2")]
    value = orjson.dumps(
        {
            "batches": [
                {"collector": broken_key, "items": broken_items},
                {"collector": healthy_key, "items": healthy_items},
            ]
        }
    )
    partition = deployment.partition(healthy_key)
    await send_to_queue(deployment, [(None, value, partition)])

    healthy_ids = {item["id"] for item in healthy_items}
    await wait_for_inputs(deployment, healthy_ids, "the healthy collector's inputs")
    (letter,) = await dead_letters_with(deployment, "PROCESSING_FAILED", 1)
    headers = headers_of(letter)
    # A dead letter without `collector` is the whole queue message, failed after
    # the batch was retried and then tried alone.
    assert headers.get("collector") == broken_key, headers
    assert headers.get("source_topic") == deployment.queue_topic
    assert headers.get("attempts") == "1"
    assert "KeyError" in headers.get("error", "")
    assert letter.key == broken_key.encode()
    # The payload is a one-collector queue message, so `collectors dlq replay` can
    # put it back on the queue topic.
    assert unpack_queue_message(letter.value) == [(broken_key, broken_items)]
    received = deployment.scenario.destination.snapshot()
    assert not {item["id"] for item in broken_items} & set(received)


async def test_worker_shortens_fetch_wait(deployment: Deployment) -> None:
    # Faust creates the consumer with a 1.5 s fetch wait; the worker lowers it to
    # COLLECTORS_FETCH_MAX_WAIT_MS (100 ms by default) once the consumer runs, and
    # sets the fetch minimum to COLLECTORS_FETCH_MIN_BYTES (1 by default).
    async def logged() -> bool:
        line = "consumer fetch wait set to 100 ms, fetch minimum to 1 bytes"
        return line in deployment.worker.log_text()

    await wait_for(logged, "the worker to log its fetch wait")
