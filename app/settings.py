"""Service configuration, read once from the environment at start-up.

Every process builds one frozen `Settings` object in its entry point and passes it
down; no other module reads the environment.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.http1 import Origin

MIB = 1024 * 1024
WORKER_STAGES = ("route", "deliver")
REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Environment-backed settings; see the README for each variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    http_host: str = Field("127.0.0.1", validation_alias="COLLECTORS_HTTP_HOST")
    http_port: int = Field(8080, validation_alias="COLLECTORS_HTTP_PORT")
    grpc_host: str = Field("127.0.0.1", validation_alias="COLLECTORS_GRPC_HOST")
    grpc_port: int = Field(18080, validation_alias="COLLECTORS_GRPC_PORT")
    destination_url: str = Field(
        "http://127.0.0.1:8080", validation_alias="COLLECTORS_DESTINATION_URL"
    )

    # Encryption of credentials for other services (post-inputs keys, model keys).
    secret_key: str = Field("", validation_alias="COLLECTORS_SECRET_KEY")
    secret_key_file: Path = Field(
        REPO_ROOT / ".data" / "secret.key",
        validation_alias="COLLECTORS_SECRET_KEY_FILE",
    )

    # Kafka names.
    consumer_group: str = Field("collectors", validation_alias="COLLECTORS_GROUP")
    input_topic: str = Field("predictions", validation_alias="COLLECTORS_INPUT_TOPIC")
    input_partitions: int = Field(8, validation_alias="COLLECTORS_INPUT_PARTITIONS")
    dlq_topic: str = Field("predictions.dlq", validation_alias="COLLECTORS_DLQ_TOPIC")
    internal_partitions: int = Field(
        8, validation_alias="COLLECTORS_INTERNAL_PARTITIONS"
    )

    # Sizes. The broker accepts up to 24 MiB per message so that an event just over
    # the 16 MiB event limit still reaches the worker and the dead-letter topic.
    max_event_bytes: int = Field(
        16 * MIB, validation_alias="COLLECTORS_MAX_EVENT_BYTES"
    )
    max_message_bytes: int = Field(
        24 * MIB, validation_alias="COLLECTORS_MAX_MESSAGE_BYTES"
    )
    queue_batch_max_bytes: int = Field(
        4 * MIB, validation_alias="COLLECTORS_QUEUE_BATCH_MAX_BYTES"
    )

    # Faust's data directory, with a folder per consumer group. Faust keeps nothing
    # there that the worker needs, because the worker has no tables.
    faust_data_dir: Path = Field(
        REPO_ROOT / ".data" / "faust", validation_alias="COLLECTORS_FAUST_DATA_DIR"
    )

    # Worker. The stages it runs: "route" (stage one, reading the input topic),
    # "deliver" (stage two, reading the queue and retry topics), or both. Workers
    # with different stages can share a consumer group.
    worker_stages: str = Field(
        "route,deliver", validation_alias="COLLECTORS_WORKER_STAGES"
    )
    # How long the broker may hold a fetch that finds no new records (Faust's
    # default of 1.5 s delays records on the other topics by as much).
    fetch_max_wait_ms: int = Field(
        100, validation_alias="COLLECTORS_FETCH_MAX_WAIT_MS", ge=1
    )
    # Bytes of new records that complete a fetch before its wait ends. Above 1,
    # fetches come less often under light, steady traffic, at the price of up to
    # the fetch wait per hop (see docs/benchmarks.md).
    fetch_min_bytes: int = Field(1, validation_alias="COLLECTORS_FETCH_MIN_BYTES", ge=1)
    # "lean" hands fetched messages to the streams without a task per message
    # (agents/consumer.py); "faust" keeps faust-streaming's own consumer.
    consumer: Literal["lean", "faust"] = Field(
        "lean", validation_alias="COLLECTORS_CONSUMER"
    )
    # The destination's HTTP client: "lean" (app/http1.py) or "aiohttp".
    http_client: Literal["lean", "aiohttp"] = Field(
        "lean", validation_alias="COLLECTORS_HTTP_CLIENT"
    )
    # Stage one's per-output work: "c" (the extension agents._stage_one, or Python
    # when it is not built) or "python".
    stage_one: Literal["c", "python"] = Field(
        "c", validation_alias="COLLECTORS_STAGE_ONE"
    )
    worker_web_port: int = Field(6066, validation_alias="COLLECTORS_WORKER_WEB_PORT")
    route_batch_max: int = Field(
        500, validation_alias="COLLECTORS_ROUTE_BATCH_MAX", ge=1
    )
    deliver_batch_max: int = Field(
        200, validation_alias="COLLECTORS_DELIVER_BATCH_MAX", ge=1
    )
    # The maximum time an agent waits for a batch to fill. It must be above 0,
    # because take_batches (agents/lean_streams.py) divides by it. Under load,
    # batches fill while the previous one is processed, so a short window costs
    # CPU only under light traffic (docs/benchmarks.md, point 28).
    batch_within_s: float = Field(
        0.005, validation_alias="COLLECTORS_BATCH_WITHIN_S", gt=0
    )
    # Stage two's window while stage one, in the same worker, is behind by more
    # than COLLECTORS_ROUTE_BATCH_MAX events and requests are small
    # (agents/backlog.py). Set it to the window above to turn this off. At most
    # 10 s, far below the stall check's default of 60 s.
    deliver_window_behind_s: float = Field(
        0.25, validation_alias="COLLECTORS_DELIVER_WINDOW_BEHIND_S", gt=0, le=10
    )
    # The worker's event loop: "uvloop" (when installed) or "asyncio". The
    # benchmark measured no difference between them beyond its noise.
    event_loop: str = Field("uvloop", validation_alias="COLLECTORS_EVENT_LOOP")
    config_poll_interval_s: float = Field(
        0.25, validation_alias="COLLECTORS_CONFIG_POLL_INTERVAL_S"
    )
    summary_interval_s: float = Field(
        30.0, validation_alias="COLLECTORS_SUMMARY_INTERVAL_S"
    )
    # How often a worker adds its counters to the statistics in Redis.
    stats_flush_interval_s: float = Field(
        2.0, validation_alias="COLLECTORS_STATS_FLUSH_INTERVAL_S"
    )
    # A worker reports itself unhealthy at /healthz when a partition it consumes
    # has had records waiting (lag above 0) for this long without its committed
    # offset moving. The retry topic gets COLLECTORS_RETRY_BACKOFF_MAX_S more,
    # because its agent waits that long between attempts on purpose.
    stall_after_s: float = Field(60.0, validation_alias="COLLECTORS_STALL_AFTER_S")

    # Destination and remote models.
    destination_timeout_s: float = Field(
        10.0, validation_alias="COLLECTORS_DESTINATION_TIMEOUT_S"
    )
    # POSTs to the destination in flight at once per worker. Further requests wait
    # for a free slot.
    destination_max_in_flight: int = Field(
        16, validation_alias="COLLECTORS_DESTINATION_MAX_IN_FLIGHT", ge=1
    )
    # Whether the inputs of collectors that post to the same app with the same key
    # share POST requests (up to 128 inputs each). Turn it off to send each
    # collector's inputs in requests of their own.
    destination_merge_posts: bool = Field(
        True, validation_alias="COLLECTORS_DESTINATION_MERGE_POSTS"
    )
    destination_give_up_s: float = Field(
        120.0, validation_alias="COLLECTORS_DESTINATION_GIVE_UP_S"
    )
    # How long the deliver agent retries a failing POST before it moves the inputs
    # to the retry topic, which bounds how long one failing destination holds up
    # the other collectors' deliveries.
    destination_inline_retry_s: float = Field(
        5.0, validation_alias="COLLECTORS_DESTINATION_INLINE_RETRY_S"
    )
    retry_backoff_max_s: float = Field(
        30.0, validation_alias="COLLECTORS_RETRY_BACKOFF_MAX_S"
    )
    model_timeout_s: float = Field(5.0, validation_alias="COLLECTORS_MODEL_TIMEOUT_S")
    model_url_allowlist: str = Field(
        "", validation_alias="COLLECTORS_MODEL_URL_ALLOWLIST"
    )

    # Management commands (`collectors collectors ...`, `collectors workflows ...`):
    # the REST API they call (empty means http://127.0.0.1:<COLLECTORS_HTTP_PORT>)
    # and the key they send.
    api_url: str = Field("", validation_alias="COLLECTORS_API_URL")
    api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("COLLECTORS_API_KEY", "CLARIFAI_PAT"),
    )

    log_level: str = Field("INFO", validation_alias="COLLECTORS_LOG_LEVEL")

    @field_validator("destination_url")
    @classmethod
    def _check_destination_url(cls, value: str) -> str:
        try:
            Origin.parse(value)
        except ValueError as error:
            raise ValueError(
                f"COLLECTORS_DESTINATION_URL is invalid: {error}; set it to the "
                "destination API's base URL, such as http://127.0.0.1:8080"
            ) from None
        return value.rstrip("/")

    @field_validator("worker_stages")
    @classmethod
    def _check_stages(cls, value: str) -> str:
        stages = {item.strip() for item in value.split(",") if item.strip()}
        unknown = stages - set(WORKER_STAGES)
        if not stages or unknown:
            raise ValueError(
                f"worker stages {value!r} are invalid: expected a "
                "comma-separated list of route and deliver (COLLECTORS_WORKER_STAGES "
                "or --stages)"
            )
        return ",".join(stage for stage in WORKER_STAGES if stage in stages)

    @property
    def stages(self) -> frozenset[str]:
        """The worker stages to run: "route", "deliver" or both."""
        return frozenset(self.worker_stages.split(","))

    @cached_property
    def allowed_model_urls(self) -> tuple[str, ...]:
        """Base URL prefixes that remote model nodes may call."""
        items = (
            item.strip().rstrip("/") for item in self.model_url_allowlist.split(",")
        )
        return tuple(item for item in items if item)

    @property
    def queue_topic(self) -> str:
        return f"{self.consumer_group}-queue"

    @property
    def retry_topic(self) -> str:
        return f"{self.consumer_group}-retry"
