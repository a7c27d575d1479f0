"""The Faust floor: an agent that only decodes each event with orjson.

Run as `python -m bench.faust_floor worker` with BENCH_TOPIC, BENCH_GROUP,
BENCH_EVENTS and BENCH_DATA_DIR set, and BENCH_CONSUMER set to "lean" for the
worker's consumer and batches (agents/consumer.py, agents/lean_streams.py) or
"faust" for faust-streaming's consumer and `take_events`. It
reads the topic with the consumer settings of the worker (agents/app.py) and prints
one line `RESULT events=<n> predictions=<n> seconds=<s>` for the events after its
first batch, once it has seen BENCH_EVENTS events. It measures how much of the gap
between the raw consumer rate and stage one is Faust's own cost per message.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import faust
import orjson

from agents.consumer import use_lean_consumer
from agents.lean_streams import RawSchema, take_batches
from app.settings import Settings
from bench.kafka_io import worker_fetch_bytes

settings = Settings()
app = faust.App(
    os.environ["BENCH_GROUP"],
    broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}",
    autodiscover=False,
    topic_allow_declare=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    consumer_max_fetch_size=worker_fetch_bytes(),
    stream_buffer_maxsize=settings.route_batch_max * 2,
    web_enabled=False,
    datadir=os.environ["BENCH_DATA_DIR"],
)
lean = os.environ.get("BENCH_CONSUMER", "lean") == "lean"
if lean:
    use_lean_consumer(app)
    topic = app.topic(os.environ["BENCH_TOPIC"], schema=RawSchema())
else:
    topic = app.topic(
        os.environ["BENCH_TOPIC"], key_serializer="raw", value_serializer="raw"
    )
expected_events = int(os.environ["BENCH_EVENTS"])
# Counts after the first batch, whose end starts the clock.
seen = {"events": 0, "predictions": 0, "first_batch": 0}
started: list[float] = []


@app.agent(topic, concurrency=1)
async def decode(stream: Any) -> None:
    batches = (
        take_batches(stream, settings.route_batch_max, settings.batch_within_s)
        if lean
        else stream.take_events(
            settings.route_batch_max, within=settings.batch_within_s
        )
    )
    async for events in batches:
        predictions = sum(
            len(orjson.loads(event.message.value)["outputs"]) for event in events
        )
        if not started:
            started.append(time.perf_counter())
            seen["first_batch"] = len(events)
            continue
        seen["predictions"] += predictions
        seen["events"] += len(events)
        if seen["events"] + seen["first_batch"] >= expected_events:
            elapsed_s = time.perf_counter() - started[0]
            print(
                f"RESULT events={seen['events']} predictions={seen['predictions']} "
                f"seconds={elapsed_s:.3f}",
                flush=True,
            )
            # The measurement is done; stopping Faust cleanly takes seconds.
            os._exit(0)


if __name__ == "__main__":
    sys.exit(app.main())
