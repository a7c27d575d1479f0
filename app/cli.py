"""The `collectors` command.

Subcommands: `worker` (agents/worker.py), `api` (app/api/server.py), `keys create`,
`produce` (app/produce.py), `lag` (app/lag.py), `status` (app/dashboard/status.py),
`dlq list` and `dlq replay` (app/dlq.py) and the collector management commands of
app/cli_manage.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from app.logs import configure_logging
from app.settings import Settings


@click.group()
def main() -> None:
    """Collect samples of a model's production predictions into a dataset app."""


@main.command()
@click.option(
    "--web-port",
    type=int,
    default=None,
    help="Port of this worker's health and metrics server (default 6066 or "
    "COLLECTORS_WORKER_WEB_PORT); give each worker on one host its own.",
)
@click.option(
    "--stages",
    default=None,
    help="Stages to run: route, deliver, or route,deliver (default, or "
    "COLLECTORS_WORKER_STAGES). Separate stages scale on their own.",
)
def worker(web_port: int | None, stages: str | None) -> None:
    """Run a stream worker; several workers form one Kafka consumer group."""
    settings = Settings()
    if web_port is not None:
        settings = settings.model_copy(update={"worker_web_port": web_port})
    if stages is not None:
        try:
            stages = Settings._check_stages(stages)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--stages") from error
        settings = settings.model_copy(update={"worker_stages": stages})
    configure_logging(settings.log_level)
    from agents.worker import run_worker

    run_worker(settings)


@main.command()
def api() -> None:
    """Serve the REST API, gRPC API, dashboard and /metrics."""
    settings = Settings()
    configure_logging(settings.log_level)
    from app.api.server import run_api

    run_api(settings)


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--user-id", required=True, help="User the key belongs to.")
@click.option("--app-id", default="", help="App the key is for (not with --pat).")
@click.option(
    "--scopes",
    default="All",
    show_default=True,
    help="Comma-separated scopes, for example Collectors:Add,Inputs:Add.",
)
@click.option("--pat", is_flag=True, help="Create a personal access token (no app).")
def keys_create(user_id: str, app_id: str, scopes: str, pat: bool) -> None:
    """Create an API key and print it (and nothing else) on stdout."""
    from app.keys import create_api_key

    settings = Settings()
    configure_logging(settings.log_level)
    if pat and app_id:
        raise click.UsageError("--pat creates a token for the user; omit --app-id")
    if not pat and not app_id:
        raise click.UsageError("--app-id is required unless --pat is given")
    scope_list = [scope.strip() for scope in scopes.split(",") if scope.strip()]
    try:
        key = asyncio.run(create_api_key(settings, user_id, app_id, scope_list, pat))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--scopes") from error
    click.echo(key)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--topic", default=None, help="Topic to publish to (default predictions)."
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar on stderr (default: for files of 1 MiB or more when "
    "stderr is a terminal).",
)
def produce(file: Path, topic: str | None, progress: bool | None) -> None:
    """Publish a JSON-lines file of prediction events, one event a line."""
    from app.produce import PROGRESS_MIN_BYTES, ProgressBar, produce_file

    settings = Settings()
    configure_logging(settings.log_level)
    size = file.stat().st_size
    if progress is None:
        progress = sys.stderr.isatty() and size >= PROGRESS_MIN_BYTES
    bar = ProgressBar(size, sys.stderr) if progress else None
    count = asyncio.run(
        produce_file(
            settings,
            file,
            topic or settings.input_topic,
            progress=bar.update if bar else None,
        )
    )
    if bar:
        bar.finish()
    click.echo(f"published {count} events", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the reading as JSON.")
def lag(as_json: bool) -> None:
    """Print the consumer group's lag per topic and partition, with totals."""
    from app.lag import KafkaUnavailable, format_lag_table, read_lag_once

    settings = Settings()
    configure_logging(settings.log_level)
    topics = (settings.input_topic, settings.queue_topic, settings.retry_topic)
    try:
        reading = asyncio.run(
            read_lag_once(
                settings.kafka_bootstrap_servers, settings.consumer_group, topics
            )
        )
    except KafkaUnavailable as error:
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(json.dumps(reading.to_dict(), indent=2))
    else:
        click.echo(format_lag_table(reading))


@main.command()
@click.argument("collector")
@click.option("--user-id", default="", help="User that owns the collector's app.")
@click.option("--app-id", default="", help="App of the collector.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(collector: str, user_id: str, app_id: str, as_json: bool) -> None:
    """Print one collector's configuration and funnel.

    COLLECTOR is `user/app/collector_id`, or a collector id with --user-id and
    --app-id.
    """
    from redis.exceptions import RedisError

    from app.dashboard.status import (
        CollectorStatus,
        format_collector_status,
        read_collector_status,
    )
    from app.store import Store, connect

    settings = Settings()
    configure_logging(settings.log_level)
    key = _collector_key(collector, user_id, app_id)

    async def read() -> CollectorStatus | None:
        store = Store(connect(settings.redis_url))
        try:
            return await read_collector_status(store, *key)
        finally:
            await store.close()

    try:
        found = asyncio.run(read())
    except (RedisError, OSError) as error:
        raise click.ClickException(f"cannot read Redis: {error}") from error
    if found is None:
        raise click.ClickException(f"collector {'/'.join(key)} not found")
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2))
    else:
        click.echo(format_collector_status(found))


def _collector_key(collector: str, user_id: str, app_id: str) -> tuple[str, str, str]:
    parts = collector.split("/")
    if len(parts) == 3 and all(parts):
        if (user_id and user_id != parts[0]) or (app_id and app_id != parts[1]):
            raise click.UsageError(
                f"{collector} names another user or app than --user-id/--app-id"
            )
        return parts[0], parts[1], parts[2]
    if len(parts) == 1 and collector and user_id and app_id:
        return user_id, app_id, collector
    raise click.UsageError(
        f"invalid collector {collector!r}: give user/app/collector_id, or the "
        "collector id with --user-id and --app-id"
    )


@main.group()
def dlq() -> None:
    """List and replay dead letters (topic COLLECTORS_DLQ_TOPIC, default
    predictions.dlq)."""


@dlq.command("list")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Print at most this many dead letters (default: all).",
)
@click.option(
    "--error-code",
    default=None,
    help="Print only dead letters with this error_code, for example INVALID_JSON.",
)
def dlq_list(limit: int | None, error_code: str | None) -> None:
    """Print one line per dead letter, oldest first in each partition.

    Reads the topic from the beginning and commits nothing.
    """
    from app.dlq import DeadLetterToolError, list_dead_letters

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        asyncio.run(list_dead_letters(settings, limit, error_code, click.echo))
    except DeadLetterToolError as error:
        raise click.ClickException(str(error)) from error


@dlq.command("replay")
@click.option(
    "--error-code",
    default=None,
    help="Replay only dead letters with this error_code; the others stay pending.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what would be replayed; publish and commit nothing.",
)
def dlq_replay(error_code: str | None, dry_run: bool) -> None:
    """Publish dead letters again to the topics they came from.

    The position is committed in the consumer group <group>-dlq-replay once the
    broker acknowledges the publishes, so a second run skips what the first
    replayed.
    """
    from app.dlq import DeadLetterToolError, replay_dead_letters

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        summary = asyncio.run(
            replay_dead_letters(settings, error_code, dry_run, click.echo)
        )
    except DeadLetterToolError as error:
        raise click.ClickException(str(error)) from error
    click.echo(summary.line(dry_run), err=True)


def _register_optional_groups() -> None:
    from app.cli_manage import register

    register(main)


_register_optional_groups()

if __name__ == "__main__":
    sys.exit(main())
