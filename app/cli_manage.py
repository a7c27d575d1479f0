"""Management commands that call the REST API: `collectors collectors ...` and
`collectors workflows ...`.

They talk to COLLECTORS_API_URL (default http://127.0.0.1:<COLLECTORS_HTTP_PORT>)
with the key in COLLECTORS_API_KEY or CLARIFAI_PAT, print the JSON response on
stdout, and exit with status 1 and the response's status description on stderr when
the request fails. An app key works on its own; a personal access token needs
--app-id (and --user-id unless it is the token's own user).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import IO, Any

import click
import httpx

from app.settings import Settings

SUCCESS_CODES = (10000, 10010)
REQUEST_TIMEOUT_S = 30.0
# A preview reads up to 100,000 events from Kafka, for which the API allows 45 s.
PREVIEW_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class ApiTarget:
    base_url: str
    key: str
    user_id: str
    app_id: str

    def path(self, suffix: str) -> str:
        if self.app_id:
            return f"/v2/users/{self.user_id or 'me'}/apps/{self.app_id}{suffix}"
        return f"/v2{suffix}"


def register(group: click.Group) -> None:
    """Add the management subcommands to the `collectors` command."""
    group.add_command(collectors_group)
    group.add_command(workflows_group)


def _target_options(command: Any) -> Any:
    command = click.option(
        "--app-id",
        default="",
        help="App to manage; required with a personal access token.",
    )(command)
    command = click.option(
        "--user-id",
        default="",
        help="User that owns the app (default: the key's own user).",
    )(command)
    return command


def _target(user_id: str, app_id: str) -> ApiTarget:
    settings = Settings()
    key = settings.api_key.get_secret_value()
    if not key:
        raise click.UsageError("set COLLECTORS_API_KEY (or CLARIFAI_PAT) to an API key")
    base_url = settings.api_url or f"http://127.0.0.1:{settings.http_port}"
    return ApiTarget(base_url.rstrip("/"), key, user_id, app_id)


def _call(
    target: ApiTarget,
    method: str,
    suffix: str,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> None:
    """Send one request, print the JSON response, and exit 1 when it failed."""
    url = target.base_url + target.path(suffix)
    try:
        response = httpx.request(
            method,
            url,
            json=body,
            params=params,
            headers={"Authorization": f"Key {target.key}"},
            timeout=timeout_s,
        )
    except httpx.HTTPError as error:
        click.echo(f"error: cannot reach the API at {url}: {error}", err=True)
        sys.exit(1)
    try:
        payload = response.json()
    except ValueError:
        click.echo(
            f"error: HTTP {response.status_code} from {url} without a JSON body",
            err=True,
        )
        sys.exit(1)

    click.echo(json.dumps(payload, indent=2, sort_keys=True))
    status = payload.get("status", {}) if isinstance(payload, dict) else {}
    if status.get("code") not in SUCCESS_CODES:
        description = status.get("description") or f"HTTP {response.status_code}"
        click.echo(f"error: {description}", err=True)
        sys.exit(1)


def _read_items(file: IO[str], plural: str) -> list[dict[str, Any]]:
    """Read `{plural: [...]}`, a list, or a single object from a JSON file."""
    try:
        document = json.load(file)
    except json.JSONDecodeError as error:
        raise click.BadParameter(
            f"not valid JSON: {error}", param_hint="FILE"
        ) from error
    if isinstance(document, dict) and plural in document:
        document = document[plural]
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list) or not all(isinstance(i, dict) for i in document):
        raise click.BadParameter(
            f"expected an object, a list of objects or {{{plural!r}: [...]}}",
            param_hint="FILE",
        )
    return document


def _delete_body(ids: tuple[str, ...], delete_all: bool) -> dict[str, Any]:
    if bool(ids) == delete_all:
        raise click.UsageError("give the ids to delete, or --all (not both)")
    return {"delete_all": True} if delete_all else {"ids": list(ids)}


def _paging(page: int | None, per_page: int | None) -> dict[str, int]:
    params = {}
    if page is not None:
        params["page"] = page
    if per_page is not None:
        params["per_page"] = per_page
    return params


_FILE = click.argument("file", type=click.File("r"))
_PAGE = click.option("--page", type=int, default=None, help="Page number, from 1.")
_PER_PAGE = click.option(
    "--per-page", type=int, default=None, help="Items per page (default 128, max 1000)."
)


# --- collectors ---------------------------------------------------------------------


@click.group("collectors")
def collectors_group() -> None:
    """Create, list, get, patch, delete, preview collectors and show their history
    through the API."""


@collectors_group.command("create")
@_FILE
@_target_options
def collectors_create(file: IO[str], user_id: str, app_id: str) -> None:
    """Create the collectors in FILE (JSON; '-' reads stdin)."""
    items = _read_items(file, "collectors")
    _call(_target(user_id, app_id), "POST", "/collectors", {"collectors": items})


@collectors_group.command("list")
@_PAGE
@_PER_PAGE
@_target_options
def collectors_list(
    page: int | None, per_page: int | None, user_id: str, app_id: str
) -> None:
    """List the app's collectors in creation order."""
    target = _target(user_id, app_id)
    _call(target, "GET", "/collectors", params=_paging(page, per_page))


@collectors_group.command("get")
@click.argument("collector_id")
@_target_options
def collectors_get(collector_id: str, user_id: str, app_id: str) -> None:
    """Show one collector."""
    _call(_target(user_id, app_id), "GET", f"/collectors/{collector_id}")


@collectors_group.command("patch")
@_FILE
@click.option(
    "--action",
    default="overwrite",
    show_default=True,
    help="Patch action; only overwrite is supported.",
)
@_target_options
def collectors_patch(file: IO[str], action: str, user_id: str, app_id: str) -> None:
    """Overwrite the fields given in FILE of existing collectors (by id)."""
    body = {"collectors": _read_items(file, "collectors"), "action": action}
    _call(_target(user_id, app_id), "PATCH", "/collectors", body)


@collectors_group.command("delete")
@click.argument("collector_ids", nargs=-1)
@click.option("--all", "delete_all", is_flag=True, help="Delete every collector.")
@_target_options
def collectors_delete(
    collector_ids: tuple[str, ...], delete_all: bool, user_id: str, app_id: str
) -> None:
    """Delete the collectors with the given ids."""
    body = _delete_body(collector_ids, delete_all)
    _call(_target(user_id, app_id), "DELETE", "/collectors", body)


@collectors_group.command("preview")
@click.argument("collector_id")
@click.option(
    "--last",
    "last_n",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Replay the newest N events of the input topic (default 1000).",
)
@click.option(
    "--start",
    "start_time",
    default=None,
    help="Replay the events from this RFC 3339 time on, such as 2026-01-31T12:00:00Z.",
)
@click.option(
    "--end",
    "end_time",
    default=None,
    help="With --start: replay the events before this RFC 3339 time"
    " (default: up to the newest).",
)
@click.option(
    "--examples",
    type=click.IntRange(0, 50),
    default=None,
    help="How many inputs that would be posted to show (default 5).",
)
@_target_options
def collectors_preview(
    collector_id: str,
    last_n: int | None,
    start_time: str | None,
    end_time: str | None,
    examples: int | None,
    user_id: str,
    app_id: str,
) -> None:
    """Show what COLLECTOR_ID would collect from recent events, without posting."""
    body = _preview_body(last_n, start_time, end_time, examples)
    _call(
        _target(user_id, app_id),
        "POST",
        f"/collectors/{collector_id}/preview",
        body,
        timeout_s=PREVIEW_TIMEOUT_S,
    )


def _preview_body(
    last_n: int | None,
    start_time: str | None,
    end_time: str | None,
    examples: int | None,
) -> dict[str, Any]:
    if last_n is not None and (start_time or end_time):
        raise click.UsageError("give either --last or --start (and --end), not both")
    if end_time and not start_time:
        raise click.UsageError("--end needs --start")
    body: dict[str, Any] = {}
    if last_n is not None:
        body["last_n"] = last_n
    if start_time:
        body["start_time"] = start_time
    if end_time:
        body["end_time"] = end_time
    if examples is not None:
        body["examples"] = examples
    return body


@collectors_group.command("history")
@click.argument("collector_id")
@_PAGE
@_PER_PAGE
@_target_options
def collectors_history(
    collector_id: str,
    page: int | None,
    per_page: int | None,
    user_id: str,
    app_id: str,
) -> None:
    """List the revisions of COLLECTOR_ID, newest first: who changed what, when.

    A deleted collector's revisions stay readable.
    """
    _call(
        _target(user_id, app_id),
        "GET",
        f"/collectors/{collector_id}/revisions",
        params=_paging(page, per_page),
    )


# --- workflows ----------------------------------------------------------------------


@click.group("workflows")
def workflows_group() -> None:
    """Create, list, get and delete workflows through the API."""


@workflows_group.command("create")
@_FILE
@_target_options
def workflows_create(file: IO[str], user_id: str, app_id: str) -> None:
    """Create the workflows in FILE (JSON; '-' reads stdin)."""
    items = _read_items(file, "workflows")
    _call(_target(user_id, app_id), "POST", "/workflows", {"workflows": items})


@workflows_group.command("list")
@_PAGE
@_PER_PAGE
@_target_options
def workflows_list(
    page: int | None, per_page: int | None, user_id: str, app_id: str
) -> None:
    """List the app's workflows in creation order."""
    target = _target(user_id, app_id)
    _call(target, "GET", "/workflows", params=_paging(page, per_page))


@workflows_group.command("get")
@click.argument("workflow_id")
@_target_options
def workflows_get(workflow_id: str, user_id: str, app_id: str) -> None:
    """Show one workflow."""
    _call(_target(user_id, app_id), "GET", f"/workflows/{workflow_id}")


@workflows_group.command("delete")
@click.argument("workflow_ids", nargs=-1)
@click.option("--all", "delete_all", is_flag=True, help="Delete every workflow.")
@_target_options
def workflows_delete(
    workflow_ids: tuple[str, ...], delete_all: bool, user_id: str, app_id: str
) -> None:
    """Delete the workflows with the given ids (none may be in use)."""
    body = _delete_body(workflow_ids, delete_all)
    _call(_target(user_id, app_id), "DELETE", "/workflows", body)
