"""Errors of the services the agents depend on.

While they last, a batch is retried without end: dead-lettering events because
Kafka, Redis or the network is down would be wrong. Any other error is a bug or an
input that breaks the code, and is contained to the smallest part that shows it.
"""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

INFRASTRUCTURE_ERRORS = (KafkaError, RedisError, OSError, asyncio.TimeoutError)
