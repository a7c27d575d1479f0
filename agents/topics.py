"""Creates the service's Kafka topics with explicit partition counts.

Automatic topic creation is off on the broker, so the worker creates what it needs
before it starts, and stops with a clear error when a topic exists with another
partition count than configured.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from app.settings import Settings

logger = logging.getLogger(__name__)


class TopicMismatchError(RuntimeError):
    pass


def wanted_topics(settings: Settings) -> dict[str, int]:
    """Return each topic the service uses with its partition count."""
    return {
        settings.input_topic: settings.input_partitions,
        settings.queue_topic: settings.internal_partitions,
        settings.retry_topic: settings.internal_partitions,
        settings.dlq_topic: settings.input_partitions,
    }


async def ensure_topics(settings: Settings, wait_s: float = 60.0) -> None:
    """Create missing topics; raise TopicMismatchError on a wrong partition count."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=30000
    )
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            logger.warning(
                "Kafka at %s not reachable yet; retrying",
                settings.kafka_bootstrap_servers,
            )
            await asyncio.sleep(1.0)
    try:
        await _create_missing(admin, settings)
        await _wait_for_leaders(admin, wanted_topics(settings), deadline)
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, wanted: dict[str, int], deadline: float
) -> None:
    """Wait until the broker's metadata lists every topic with a leader for each
    partition. A consumer that joins its group before that gets no partitions of
    the missing topic until a later metadata refresh: two workers started so on a
    loaded machine stayed idle for the 90 s that a test waited for them."""
    loop = asyncio.get_running_loop()
    while True:
        descriptions = await admin.describe_topics(list(wanted))
        waiting = sorted(
            set(wanted) - {d["topic"] for d in descriptions if _has_leaders(d)}
        )
        if not waiting:
            return
        if loop.time() > deadline:
            logger.warning(
                "topics %s have no leader for every partition yet; starting anyway",
                ", ".join(waiting),
            )
            return
        await asyncio.sleep(0.2)


def _has_leaders(description: dict[str, object]) -> bool:
    partitions = description.get("partitions")
    return (
        not description.get("error_code")
        and isinstance(partitions, list)
        and bool(partitions)
        and all(
            isinstance(partition, dict) and partition.get("leader", -1) >= 0
            for partition in partitions
        )
    )


async def _create_missing(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    wanted = wanted_topics(settings)
    existing = set(await admin.list_topics())
    config = {"max.message.bytes": str(settings.max_message_bytes)}
    missing = [
        NewTopic(name, num_partitions=count, replication_factor=1, topic_configs=config)
        for name, count in wanted.items()
        if name not in existing
    ]
    if missing:
        try:
            await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            pass  # another worker created them first
        logger.info("created topics %s", ", ".join(t.name for t in missing))

    descriptions = await admin.describe_topics(list(wanted))
    for description in descriptions:
        name = description["topic"]
        count = len(description["partitions"])
        if count and count != wanted[name]:
            raise TopicMismatchError(
                f"topic {name} has {count} partitions but {wanted[name]} are "
                "configured; set COLLECTORS_INPUT_PARTITIONS or "
                "COLLECTORS_INTERNAL_PARTITIONS to match, or recreate the topic"
            )
