"""The `collectors` command.

Subcommands: `worker` (agents/worker.py), `api` (app/api/server.py), `keys create`,
`produce` (app/produce.py) and the collector management commands of
app/cli_manage.py.
"""

from __future__ import annotations

import asyncio
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
def worker(web_port: int | None) -> None:
    """Run a stream worker; several workers form one Kafka consumer group."""
    settings = Settings()
    if web_port is not None:
        settings = settings.model_copy(update={"worker_web_port": web_port})
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
def produce(file: Path, topic: str | None) -> None:
    """Publish a JSON-lines file of prediction events, one event a line."""
    from app.produce import produce_file

    settings = Settings()
    configure_logging(settings.log_level)
    count = asyncio.run(produce_file(settings, file, topic or settings.input_topic))
    click.echo(f"published {count} events", err=True)


def _register_optional_groups() -> None:
    from app.cli_manage import register

    register(main)


_register_optional_groups()

if __name__ == "__main__":
    sys.exit(main())
