"""Inputs RPCs: the destination app that collectors post into by default.

An input is stored as `{id, data, created_at}` and returned with a per-input status.
Posting an id that the app already contains leaves the stored input unchanged and
counts as success, so that a worker can repeat a POST after a crash.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from app.api.context import RpcContext, parse_delete_ids, parse_paging
from app.api.errors import (
    INPUT_DOES_NOT_EXIST,
    INPUT_SUCCESS,
    ApiError,
    invalid_request,
)
from app.models import rfc3339, utc_now

MAX_INPUTS_PER_REQUEST = 128
INPUT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")


def check_input_id(value: Any, path: str) -> str:
    if not isinstance(value, str) or not INPUT_ID_PATTERN.match(value):
        raise invalid_request(
            f"{path}: invalid input id {value!r}; use 1 to 255 letters, digits,"
            " '-', '_', '.' or ':'"
        )
    return value


def _check_data(data: Any, path: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise invalid_request(f"{path}: missing data")
    image = data.get("image") or {}
    text = data.get("text") or {}
    if not (
        image.get("url") or image.get("base64") or text.get("raw") or text.get("url")
    ):
        raise invalid_request(
            f"{path}: expected image.url, image.base64, text.raw or text.url"
        )
    for index, concept in enumerate(data.get("concepts") or []):
        if not concept.get("id"):
            raise invalid_request(f"{path}.concepts[{index}].id: missing concept id")
    return data


def _prepare_input(item: Any, path: str, created_at: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise invalid_request(f"{path}: expected an input object")
    input_id = item.get("id") or uuid.uuid4().hex
    return {
        "id": check_input_id(input_id, f"{path}.id"),
        "data": _check_data(item.get("data"), f"{path}.data"),
        "created_at": created_at,
    }


def _with_status(stored: dict[str, Any], description: str) -> dict[str, Any]:
    return {**stored, "status": {"code": INPUT_SUCCESS, "description": description}}


async def post_inputs(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    items = request.get("inputs") or []
    if not 1 <= len(items) <= MAX_INPUTS_PER_REQUEST:
        raise invalid_request(
            f"inputs: expected 1 to {MAX_INPUTS_PER_REQUEST} inputs, got {len(items)}"
        )
    created_at = rfc3339(utc_now())
    prepared = [
        _prepare_input(item, f"inputs[{index}]", created_at)
        for index, item in enumerate(items)
    ]

    created = await ctx.store.add_inputs(ctx.user_id, ctx.app_id, prepared)

    existing_ids = [item["id"] for item, new in zip(prepared, created) if not new]
    existing = await ctx.store.get_inputs(ctx.user_id, ctx.app_id, existing_ids)
    stored_by_id = {i: v for i, v in zip(existing_ids, existing) if v is not None}
    results = []
    for item, is_new in zip(prepared, created):
        if is_new:
            results.append(_with_status(item, "Input stored"))
        else:
            stored = stored_by_id.get(item["id"], item)
            results.append(
                _with_status(stored, "Input id already exists; left unchanged")
            )
    return {"inputs": results}


async def list_inputs(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    page, per_page = parse_paging(request)
    stored = await ctx.store.list_inputs(ctx.user_id, ctx.app_id, page, per_page)
    return {"inputs": [_with_status(item, "Download complete") for item in stored]}


async def get_input(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    input_id = check_input_id(request.get("input_id"), "input_id")
    stored = await ctx.store.get_input(ctx.user_id, ctx.app_id, input_id)
    if stored is None:
        raise ApiError(INPUT_DOES_NOT_EXIST, f"input {input_id!r} not found")
    return {"input": _with_status(stored, "Download complete")}


async def delete_inputs(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    """Delete the listed inputs (or all, with `delete_all`, REST only).

    Nothing is deleted when an id is not found, so that a typo is reported.
    """
    ids = parse_delete_ids(request, "input", check_input_id)
    if ids is not None:
        await _require_inputs(ctx, ids)
    await ctx.store.delete_inputs(ctx.user_id, ctx.app_id, ids)
    return {}


async def delete_input(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    input_id = check_input_id(request.get("input_id"), "input_id")
    await _require_inputs(ctx, [input_id])
    await ctx.store.delete_inputs(ctx.user_id, ctx.app_id, [input_id])
    return {}


async def _require_inputs(ctx: RpcContext, ids: list[str]) -> None:
    missing = await ctx.store.missing_inputs(ctx.user_id, ctx.app_id, ids)
    if missing:
        raise ApiError(INPUT_DOES_NOT_EXIST, f"inputs not found: {', '.join(missing)}")
