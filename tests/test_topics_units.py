"""The check that `ensure_topics` waits for: every partition of a topic has a
leader in the broker's metadata, as `AIOKafkaAdminClient.describe_topics`
returns it."""

from __future__ import annotations

from typing import Any

import pytest

from agents.topics import _has_leaders


def partition(number: int, leader: int) -> dict[str, Any]:
    return {"error_code": 0, "partition": number, "leader": leader}


@pytest.mark.parametrize(
    ("description", "ready"),
    [
        ({"error_code": 0, "topic": "t", "partitions": [partition(0, 1)]}, True),
        (
            {
                "error_code": 0,
                "topic": "t",
                "partitions": [partition(0, 1), partition(1, -1)],
            },
            False,
        ),
        ({"error_code": 3, "topic": "t", "partitions": []}, False),
        ({"error_code": 0, "topic": "t", "partitions": []}, False),
        ({"error_code": 0, "topic": "t"}, False),
        ({"error_code": 0, "topic": "t", "partitions": [{"partition": 0}]}, False),
    ],
    ids=[
        "every-leader",
        "one-without-leader",
        "unknown-topic",
        "no-partitions",
        "partitions-missing",
        "leader-missing",
    ],
)
def test_topic_ready_needs_every_leader(
    description: dict[str, Any], ready: bool
) -> None:
    assert _has_leaders(description) is ready
