"""Collectors RPCs: create, get, list, patch and delete, and the revision history.

Validation runs on every collector of a request before anything is written, so a
request creates or changes all its collectors or none. The post-inputs key is stored
encrypted and returned in plain text only to callers of the collector's app, which
every caller of these RPCs is once authenticated.

A collector's `metadata` object carries this service's own options, which
Clarifai's Collector message has no fields for: `sample_key` and
`collect_failed_predictions`. Only REST requests can set it (app/api/rest.py
passes it to the handlers); gRPC requests keep the stored options.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from app.api.auth import key_can_post_inputs, lookup_key
from app.api.context import RpcContext, check_id, parse_delete_ids, parse_paging
from app.api.errors import (
    COLLECTOR_MISSING,
    DATABASE_DUPLICATE_KEY,
    FAILURE,
    WORKFLOW_DOES_NOT_EXIST,
    ApiError,
    invalid_request,
)
from app.models import (
    COLLECTOR_ACTIVE,
    COLLECTOR_INACTIVE,
    ID_PATTERN,
    CollectorRecord,
    rfc3339,
    utc_now,
)
from app.store import AlreadyExists

MAX_COLLECTORS_PER_REQUEST = 128
MAX_PATCH_ATTEMPTS = 5
SOURCE = "collector_source.api_post_model_outputs_collector_source"
_REQUIRED_SOURCE_FIELDS = ("model_user_id", "model_app_id", "model_id")
_SOURCE_FIELDS = (
    *_REQUIRED_SOURCE_FIELDS,
    "model_version_id",
    "post_inputs_key_id",
    "caller_user_id",
)
OPTION_NAMES = ("sample_key", "collect_failed_predictions")
MAX_SAMPLE_KEY_LENGTH = 256
_REVISION_REQUEST_FIELDS = frozenset({"collector_id", "page", "per_page"})


# --- RPCs ---------------------------------------------------------------------


async def post_collectors(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    items = _collector_items(request)
    records = [
        await _build_record(ctx, item, f"collectors[{index}]", previous=None)
        for index, item in enumerate(items)
    ]
    _reject_repeated_ids([record.id for record in records])

    try:
        await ctx.store.create_collectors(records, actor=ctx.caller.actor)
    except AlreadyExists as error:
        raise ApiError(
            DATABASE_DUPLICATE_KEY,
            f"collectors already exist in this app: {', '.join(error.ids)}; choose"
            " other ids or use PatchCollectors",
        ) from error
    return {"collectors": [_to_api(ctx, record) for record in records]}


async def get_collector(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    collector_id = check_id(request.get("collector_id"), "collector_id")
    record = await ctx.store.get_collector(ctx.user_id, ctx.app_id, collector_id)
    if record is None:
        raise _missing([collector_id])
    return {"collector": _to_api(ctx, record)}


async def list_collectors(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    page, per_page = parse_paging(request)
    records = await ctx.store.list_collectors(ctx.user_id, ctx.app_id, page, per_page)
    return {"collectors": [_to_api(ctx, record) for record in records]}


async def patch_collectors(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    """Overwrite the given fields of existing collectors and keep the others.

    NOTE: over gRPC a field set to its default value (an empty string, 0, false)
    cannot be told from an absent one, so it keeps its stored value. Over REST a
    field present in the JSON body is applied even when empty, which is how a
    field is cleared.
    """
    action = request.get("action") or "overwrite"
    if action != "overwrite":
        raise invalid_request(
            f"action: {action!r} is not supported; use 'overwrite' or leave it empty"
        )
    items = _collector_items(request)
    ids = [
        check_id(item.get("id"), f"collectors[{i}].id") for i, item in enumerate(items)
    ]
    _reject_repeated_ids(ids)

    # Optimistic concurrency: replace_collectors fails when a collector changed
    # since it was read, and then the whole patch is recomputed.
    for _ in range(MAX_PATCH_ATTEMPTS):
        pairs = await _patched_pairs(ctx, items, ids)
        if await ctx.store.replace_collectors(pairs, actor=ctx.caller.actor):
            return {"collectors": [_to_api(ctx, updated) for _, updated in pairs]}
    raise ApiError(
        FAILURE,
        f"the collectors changed {MAX_PATCH_ATTEMPTS} times while being patched;"
        " retry the request",
        http_status=409,
    )


async def delete_collectors(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    """Delete the listed collectors, or all of the app's with `delete_all`.

    Nothing is deleted when an id is not found, so that a typo is reported.
    """
    ids = parse_delete_ids(request, "collector")
    if ids is not None:
        keys = [f"{ctx.user_id}/{ctx.app_id}/{collector_id}" for collector_id in ids]
        found = await ctx.store.get_collectors_by_key(keys)
        missing = [i for i, record in zip(ids, found) if record is None]
        if missing:
            raise _missing(missing)
    await ctx.store.delete_collectors(
        ctx.user_id, ctx.app_id, ids, actor=ctx.caller.actor
    )
    return {}


async def list_collector_revisions(
    ctx: RpcContext, request: dict[str, Any]
) -> dict[str, Any]:
    """List a collector's revisions, newest first: who changed what, and when.

    A deleted collector's revisions stay readable, and a collector created again
    with the same id continues the same history. An id that has neither a
    collector nor revisions raises 52000.
    """
    reject_unknown_fields(request, _REVISION_REQUEST_FIELDS)
    collector_id = check_id(request.get("collector_id"), "collector_id")
    page, per_page = parse_paging(request)
    entries = await ctx.store.list_revisions(
        ctx.user_id, ctx.app_id, collector_id, page, per_page
    )
    if not entries and not await _has_history(ctx, collector_id):
        raise _missing([collector_id])
    return {"revisions": [_revision_to_api(entry) for entry in entries]}


# --- building and checking records ---------------------------------------------


def reject_unknown_fields(request: dict[str, Any], known: frozenset[str]) -> None:
    """Raise 11102 naming the first field of a JSON request that is not in `known`.

    The RPCs of this service's own gRPC service have no protobuf message to check
    their fields, so their handlers call this.
    """
    for name in request:
        if name not in known:
            raise invalid_request(
                f"{name}: unknown field; expected {', '.join(sorted(known))}"
            )


def _collector_items(request: dict[str, Any]) -> list[dict[str, Any]]:
    items = request.get("collectors") or []
    if not 1 <= len(items) <= MAX_COLLECTORS_PER_REQUEST:
        raise invalid_request(
            f"collectors: expected 1 to {MAX_COLLECTORS_PER_REQUEST} collectors,"
            f" got {len(items)}"
        )
    return list(items)


def _reject_repeated_ids(ids: list[str]) -> None:
    seen: dict[str, int] = {}
    for index, collector_id in enumerate(ids):
        if collector_id in seen:
            raise invalid_request(
                f"collectors[{index}].id: {collector_id!r} repeats"
                f" collectors[{seen[collector_id]}].id; give each collector once"
            )
        seen[collector_id] = index


async def _patched_pairs(
    ctx: RpcContext, items: list[dict[str, Any]], ids: list[str]
) -> list[tuple[CollectorRecord, CollectorRecord]]:
    keys = [f"{ctx.user_id}/{ctx.app_id}/{collector_id}" for collector_id in ids]
    previous_records = await ctx.store.get_collectors_by_key(keys)
    missing = [i for i, record in zip(ids, previous_records) if record is None]
    if missing:
        raise _missing(missing)

    pairs = []
    for index, (item, previous) in enumerate(zip(items, previous_records)):
        assert previous is not None
        current = {**previous.to_api(), "metadata": _options_to_api(previous)}
        merged = _merge(current, item)
        updated = await _build_record(
            ctx, merged, f"collectors[{index}]", previous=previous
        )
        pairs.append((previous, updated))
    return pairs


def _merge(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Overlay the fields given in `patch` on a collector's API form.

    A given `metadata` object replaces all the options, so an option it leaves
    out returns to its default.
    """
    merged = {**current}
    for name, value in patch.items():
        if name in ("id", "created_at"):
            continue
        if name == "collector_source" and isinstance(value, dict):
            patched = value.get("api_post_model_outputs_collector_source") or {}
            source = current["collector_source"][
                "api_post_model_outputs_collector_source"
            ]
            merged[name] = {
                "api_post_model_outputs_collector_source": {**source, **patched}
            }
        else:
            merged[name] = value
    return merged


async def _build_record(
    ctx: RpcContext,
    item: dict[str, Any],
    path: str,
    previous: CollectorRecord | None,
) -> CollectorRecord:
    """Validate one collector's API form and turn it into a stored record.

    For a patch, `previous` is the stored record: its id, creation time and
    encrypted key are kept unless the patch sets a new key.
    """
    collector_id = previous.id if previous else check_id(item.get("id"), f"{path}.id")
    source = _check_source(item, path)
    sample = _check_random_sample(item.get("pre_queue_random_sample"), path)
    pre_workflow = _optional_id(item.get("pre_queue_workflow_id"), path, "pre_queue")
    post_workflow = _optional_id(item.get("post_queue_workflow_id"), path, "post_queue")
    if not (pre_workflow or post_workflow or sample):
        raise invalid_request(
            f"{path}: set pre_queue_workflow_id, post_queue_workflow_id or"
            " pre_queue_random_sample, so the collector knows what to collect"
        )
    await _require_workflows(ctx, path, pre_workflow, post_workflow)
    options = _check_options(item.get("metadata"), path, sample)

    key_encrypted = await _check_post_inputs_key(ctx, source, path, previous)
    return CollectorRecord(
        user_id=ctx.user_id,
        app_id=ctx.app_id,
        id=collector_id,
        description=str(item.get("description") or ""),
        created_at=previous.created_at if previous else utc_now(),
        modified_at=utc_now(),
        pre_queue_workflow_id=pre_workflow,
        pre_queue_random_sample=sample,
        post_queue_workflow_id=post_workflow,
        model_user_id=source["model_user_id"],
        model_app_id=source["model_app_id"],
        model_id=source["model_id"],
        model_version_id=source.get("model_version_id") or "",
        caller_user_id=_caller_user_id(ctx, source),
        post_inputs_key_encrypted=key_encrypted,
        status_code=_check_status(item.get("status"), path, previous),
        collect_outputs=bool(item.get("collect_outputs")),
        **options,
    )


def _check_source(item: dict[str, Any], path: str) -> dict[str, Any]:
    container = item.get("collector_source") or {}
    source = container.get("api_post_model_outputs_collector_source")
    if not source:
        raise invalid_request(
            f"{path}.{SOURCE}: missing; set the model to collect from"
            " (model_user_id, model_app_id, model_id) and post_inputs_key_id"
        )
    for name in _REQUIRED_SOURCE_FIELDS:
        value = source.get(name)
        if not value:
            raise invalid_request(f"{path}.{SOURCE}.{name}: missing")
        if not ID_PATTERN.match(value):
            raise invalid_request(
                f"{path}.{SOURCE}.{name}: invalid id {value!r}; use 1 to 48 letters,"
                " digits, '-' or '_'"
            )
    for name in ("model_version_id", "caller_user_id"):
        value = source.get(name)
        if value and not ID_PATTERN.match(value):
            raise invalid_request(f"{path}.{SOURCE}.{name}: invalid id {value!r}")
    return dict(source)


def _caller_user_id(ctx: RpcContext, source: dict[str, Any]) -> str:
    """Return whose predictions the collector may see.

    A collector collects other users' predict calls only from a model that its
    owner owns. For any other model, public ones included, it collects only the
    owner's own calls, whatever the request sets.
    """
    if source["model_user_id"] == ctx.user_id:
        return str(source.get("caller_user_id") or "")
    return ctx.user_id


def _check_random_sample(value: Any, path: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_request(
            f"{path}.pre_queue_random_sample: expected a number in (0, 1],"
            f" got {value!r}"
        )
    sample = float(value)
    if sample == 0.0:
        return 0.0
    if not (math.isfinite(sample) and 0.0 < sample <= 1.0):
        raise invalid_request(
            f"{path}.pre_queue_random_sample: expected a number in (0, 1] (0 leaves"
            f" it unset), got {sample!r}"
        )
    return sample


def _check_options(value: Any, path: str, sample: float) -> dict[str, Any]:
    """Return the options of a collector's `metadata` object as record fields.

    An absent or null object gives the defaults. Raises 11102 naming
    `{path}.metadata.<key>` for an unknown key or a value of the wrong type, and
    for a `sample_key` without a pre_queue_random_sample to apply it to.
    """
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise invalid_request(
            f"{path}.metadata: expected an object with {' and '.join(OPTION_NAMES)},"
            f" got {value!r}"
        )
    for name in value:
        if name not in OPTION_NAMES:
            raise invalid_request(
                f"{path}.metadata.{name}: unknown option; the options are"
                f" {', '.join(OPTION_NAMES)}"
            )
    sample_key = _check_sample_key(value.get("sample_key"), f"{path}.metadata")
    if sample_key and not sample:
        raise invalid_request(
            f"{path}.metadata.sample_key: applies only to pre_queue_random_sample,"
            " which is not set; set pre_queue_random_sample or remove sample_key"
        )
    collect_failed = value.get("collect_failed_predictions", False)
    if not isinstance(collect_failed, bool):
        raise invalid_request(
            f"{path}.metadata.collect_failed_predictions: expected true or false,"
            f" got {collect_failed!r}"
        )
    return {"sample_key": sample_key, "collect_failed_predictions": collect_failed}


def _check_sample_key(value: Any, path: str) -> str:
    """Return a dotted metadata path, or "" when `value` is absent or empty."""
    if value is None or value == "":
        return ""
    field = f"{path}.sample_key"
    if not isinstance(value, str):
        raise invalid_request(
            f"{field}: expected a dotted metadata path such as camera.id, got {value!r}"
        )
    if len(value) > MAX_SAMPLE_KEY_LENGTH:
        raise invalid_request(
            f"{field}: longer than {MAX_SAMPLE_KEY_LENGTH} characters"
        )
    if any(not part or part != part.strip() for part in value.split(".")):
        raise invalid_request(
            f"{field}: invalid path {value!r}; use metadata keys joined by '.',"
            " without empty parts or surrounding spaces, such as camera.id"
        )
    return value


def _options_to_api(record: CollectorRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in OPTION_NAMES}


def _optional_id(value: Any, path: str, stage: str) -> str:
    if not value:
        return ""
    return check_id(value, f"{path}.{stage}_workflow_id")


async def _require_workflows(
    ctx: RpcContext, path: str, pre_workflow: str, post_workflow: str
) -> None:
    workflow_ids = {"pre_queue": pre_workflow, "post_queue": post_workflow}
    found = await ctx.store.get_workflows(
        ctx.user_id, ctx.app_id, [i for i in workflow_ids.values() if i]
    )
    for stage, workflow_id in workflow_ids.items():
        if workflow_id and workflow_id not in found:
            raise ApiError(
                WORKFLOW_DOES_NOT_EXIST,
                f"{path}.{stage}_workflow_id: workflow {workflow_id!r} not found in"
                f" app {ctx.app_id!r}; create it first with PostWorkflows",
            )


async def _check_post_inputs_key(
    ctx: RpcContext,
    source: dict[str, Any],
    path: str,
    previous: CollectorRecord | None,
) -> str:
    """Return the encrypted post-inputs key after checking that it can POST /inputs.

    A patch that sets no key keeps the stored one.
    """
    field = f"{path}.{SOURCE}.post_inputs_key_id"
    key = source.get("post_inputs_key_id") or ""
    if not key and previous is not None:
        return previous.post_inputs_key_encrypted
    if not key:
        raise invalid_request(
            f"{field}: missing; give an API key of this app (or a personal access"
            " token of its user) with the Inputs:Add scope"
        )
    record = await lookup_key(ctx.store, key)
    if record is None:
        raise invalid_request(f"{field}: the key is not a known API key")
    reason = key_can_post_inputs(record, ctx.user_id, ctx.app_id)
    if reason:
        raise invalid_request(f"{field}: {reason}; it cannot post inputs to this app")
    return ctx.services.secret_box.encrypt(key)


def _check_status(status: Any, path: str, previous: CollectorRecord | None) -> int:
    code = (status or {}).get("code") if isinstance(status, dict) else None
    if not code:
        return previous.status_code if previous else COLLECTOR_ACTIVE
    if code not in (COLLECTOR_ACTIVE, COLLECTOR_INACTIVE):
        raise invalid_request(
            f"{path}.status.code: expected {COLLECTOR_ACTIVE} (COLLECTOR_ACTIVE) or"
            f" {COLLECTOR_INACTIVE} (COLLECTOR_INACTIVE), got {code!r}"
        )
    return int(code)


def _to_api(ctx: RpcContext, record: CollectorRecord) -> dict[str, Any]:
    key = ""
    if record.post_inputs_key_encrypted:
        try:
            key = ctx.services.secret_box.decrypt(record.post_inputs_key_encrypted)
        except ValueError as error:
            raise ApiError(FAILURE, f"collector {record.id!r}: {error}") from error
    return {
        **record.to_api(post_inputs_key=key),
        "metadata": _options_to_api(record),
    }


# --- revisions ------------------------------------------------------------------


async def _has_history(ctx: RpcContext, collector_id: str) -> bool:
    """Return whether the collector exists or has revisions (on any page)."""
    if await ctx.store.list_revisions(ctx.user_id, ctx.app_id, collector_id, 1, 1):
        return True
    record = await ctx.store.get_collector(ctx.user_id, ctx.app_id, collector_id)
    return record is not None


def _revision_to_api(entry: dict[str, Any]) -> dict[str, Any]:
    """Convert a stored revision to its API form, with the API's field paths.

    The store records the post-inputs key only as "(hidden)" and "(changed)".
    Encrypted fields are dropped here too, so no form of a key is ever returned.
    """
    changes = {}
    for name, change in (entry.get("changes") or {}).items():
        if name in ("user_id", "app_id") or name.endswith("_encrypted"):
            continue
        if name == "post_inputs_key_id":
            change = {"from": "(hidden)", "to": "(changed)"}
        changes[_api_field_path(name)] = {
            "from": change.get("from"),
            "to": change.get("to"),
        }
    at = entry.get("at")
    created_at = (
        rfc3339(datetime.fromtimestamp(at, UTC)) if isinstance(at, int | float) else ""
    )
    return {
        "action": entry.get("action", ""),
        "actor": entry.get("actor", ""),
        "created_at": created_at,
        "changes": changes,
    }


def _api_field_path(record_field: str) -> str:
    """Return the API path of a CollectorRecord field, such as `status.code`."""
    if record_field in _SOURCE_FIELDS:
        return f"{SOURCE}.{record_field}"
    if record_field == "status_code":
        return "status.code"
    if record_field in OPTION_NAMES:
        return f"metadata.{record_field}"
    return record_field


def _missing(ids: list[str]) -> ApiError:
    return ApiError(
        COLLECTOR_MISSING, f"collectors not found in this app: {', '.join(ids)}"
    )
