"""Workflows RPCs: create, get, list, patch, delete, and PostWorkflowResults.

Every workflow is compiled with the rules package when it is created or patched, so
an invalid one is rejected with the node and field at fault. Remote model nodes must
use a base URL from COLLECTORS_MODEL_URL_ALLOWLIST, and their keys are stored
encrypted (see app.remote_models).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from pydantic import ValidationError

from app.api.context import RpcContext, check_id, parse_delete_ids, parse_paging
from app.api.errors import (
    DATABASE_DUPLICATE_KEY,
    FAILURE,
    MIXED_STATUS,
    SUCCESS,
    WORKFLOW_DOES_NOT_EXIST,
    WORKFLOW_INVALID_ARGUMENT,
    WORKFLOW_INVALID_GRAPH,
    ApiError,
    invalid_request,
)
from app.models import Workflow, describe_validation_error, rfc3339, utc_now
from app.remote_models import (
    RemoteModelError,
    decrypt_node_keys,
    encrypt_node_keys,
    predict_remote,
    strip_node_keys,
    url_allowed,
)
from app.store import AlreadyExists
from rules.context import EvalContext
from rules.errors import RuleConfigError
from rules.workflow import CompiledWorkflow, compile_workflow, remote_nodes

MAX_WORKFLOWS_PER_REQUEST = 128
MAX_RESULT_INPUTS = 32
# Errors in these paths concern the graph (nodes, their ids and their edges); the
# others concern a node's model and its parameters.
_GRAPH_ERROR_PATH = re.compile(
    r"^nodes(\[\d+\](\.(id|node_inputs.*|suppress_output))?)?$"
)
_WORKFLOW_FIELDS = ("id", "description", "nodes", "metadata")


# --- RPCs ---------------------------------------------------------------------


async def post_workflows(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    items = _workflow_items(request)
    now = utc_now()
    workflows = []
    for index, item in enumerate(items):
        path = f"workflows[{index}]"
        definition = {name: item[name] for name in _WORKFLOW_FIELDS if name in item}
        definition["id"] = check_id(item.get("id"), f"{path}.id")
        workflows.append(_check_workflow(ctx, definition, path, created_at=now))
    _reject_repeated_ids([workflow.id for workflow in workflows])

    try:
        await ctx.store.create_workflows(ctx.user_id, ctx.app_id, workflows)
    except AlreadyExists as error:
        raise ApiError(
            DATABASE_DUPLICATE_KEY,
            f"workflows already exist in this app: {', '.join(error.ids)}; choose"
            " other ids or use PatchWorkflows",
        ) from error
    return {"workflows": [_to_api(ctx, workflow) for workflow in workflows]}


async def get_workflow(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    workflow = await _load(ctx, check_id(request.get("workflow_id"), "workflow_id"))
    return {"workflow": _to_api(ctx, workflow)}


async def list_workflows(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    page, per_page = parse_paging(request)
    workflows = await ctx.store.list_workflows(ctx.user_id, ctx.app_id, page, per_page)
    return {"workflows": [_to_api(ctx, workflow) for workflow in workflows]}


async def patch_workflows(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    """Overwrite the given fields (`description`, `metadata`, `nodes` as a whole) of
    existing workflows and keep the others."""
    action = request.get("action") or "overwrite"
    if action != "overwrite":
        raise invalid_request(
            f"action: {action!r} is not supported; use 'overwrite' or leave it empty"
        )
    items = _workflow_items(request)
    ids = [
        check_id(item.get("id"), f"workflows[{i}].id") for i, item in enumerate(items)
    ]
    _reject_repeated_ids(ids)
    found = await ctx.store.get_workflows(ctx.user_id, ctx.app_id, ids)
    missing = [workflow_id for workflow_id in ids if workflow_id not in found]
    if missing:
        raise _missing(missing)

    updated = []
    for index, (item, workflow_id) in enumerate(zip(items, ids)):
        previous = found[workflow_id]
        definition = _api_definition(ctx, previous)
        definition.update(
            {name: item[name] for name in _WORKFLOW_FIELDS if name in item}
        )
        updated.append(
            _check_workflow(
                ctx, definition, f"workflows[{index}]", created_at=previous.created_at
            )
        )
    await ctx.store.put_workflows(ctx.user_id, ctx.app_id, updated)
    return {"workflows": [_to_api(ctx, workflow) for workflow in updated]}


async def delete_workflows(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    ids = parse_delete_ids(request, "workflow")
    await _delete(ctx, ids)
    return {}


async def delete_workflow(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    await _delete(ctx, [check_id(request.get("workflow_id"), "workflow_id")])
    return {}


async def post_workflow_results(
    ctx: RpcContext, request: dict[str, Any]
) -> dict[str, Any]:
    """Run a stored workflow on the given inputs and return every node's output.

    Nothing is stored. Remote model nodes are called once per input. A failed call
    gives that node an empty output, its output and result a failure status, and
    the response the status 10010 MIXED_STATUS.
    """
    workflow = await _load(ctx, check_id(request.get("workflow_id"), "workflow_id"))
    inputs = _result_inputs(request.get("inputs") or [])
    definition = decrypt_node_keys(_definition(workflow), ctx.services.secret_box)
    try:
        compiled = compile_workflow(definition)
    except RuleConfigError as error:
        raise _workflow_error(error, "workflow") from error
    relations = tuple(
        relation.model_dump()
        for relation in await ctx.store.list_relations(ctx.user_id, ctx.app_id)
    )

    results = await asyncio.gather(
        *(_run_one(ctx, compiled, item, relations) for item in inputs)
    )
    failed = any(result["status"]["code"] != SUCCESS for result in results)
    response: dict[str, Any] = {
        "workflow": _to_api(ctx, workflow),
        "results": results,
    }
    if failed:
        response["status"] = {
            "code": MIXED_STATUS,
            "description": "Mixed status: some remote model calls failed; see the"
            " status of each output",
        }
    return response


# --- checking and converting -----------------------------------------------------


def _workflow_items(request: dict[str, Any]) -> list[dict[str, Any]]:
    items = request.get("workflows") or []
    if not 1 <= len(items) <= MAX_WORKFLOWS_PER_REQUEST:
        raise invalid_request(
            f"workflows: expected 1 to {MAX_WORKFLOWS_PER_REQUEST} workflows,"
            f" got {len(items)}"
        )
    return list(items)


def _reject_repeated_ids(ids: list[str]) -> None:
    seen: dict[str, int] = {}
    for index, workflow_id in enumerate(ids):
        if workflow_id in seen:
            raise invalid_request(
                f"workflows[{index}].id: {workflow_id!r} repeats"
                f" workflows[{seen[workflow_id]}].id; give each workflow once"
            )
        seen[workflow_id] = index


def _check_workflow(
    ctx: RpcContext, definition: dict[str, Any], path: str, created_at: Any
) -> Workflow:
    """Compile a workflow definition with plain keys, check its remote model URLs,
    and return it ready for storage, with the keys encrypted."""
    try:
        compile_workflow(definition)
    except RuleConfigError as error:
        raise _workflow_error(error, path) from error
    for index, node in enumerate(definition["nodes"]):
        _check_remote_model(ctx, node["model"], f"{path}.nodes[{index}].model")

    sealed = encrypt_node_keys(definition, ctx.services.secret_box)
    try:
        return Workflow.model_validate(
            {**sealed, "created_at": created_at, "modified_at": utc_now()}
        )
    except ValidationError as error:
        raise ApiError(
            WORKFLOW_INVALID_ARGUMENT, describe_validation_error(error, path)
        ) from error


def _check_remote_model(ctx: RpcContext, model: dict[str, Any], path: str) -> None:
    params = (model.get("output_info") or {}).get("params") or {}
    base_url = params.get("base_url")
    if not base_url:
        return
    allowed = ctx.services.settings.allowed_model_urls
    if not url_allowed(str(base_url).rstrip("/"), allowed):
        hint = ", ".join(allowed) if allowed else "none are configured"
        raise ApiError(
            WORKFLOW_INVALID_ARGUMENT,
            f"{path}.output_info.params.base_url: {base_url!r} is not an allowed model"
            f" URL; allowed prefixes (COLLECTORS_MODEL_URL_ALLOWLIST): {hint}",
        )
    api_key = params.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise ApiError(
            WORKFLOW_INVALID_ARGUMENT,
            f"{path}.output_info.params.api_key: expected a string",
        )


def _workflow_error(error: RuleConfigError, path: str) -> ApiError:
    code = (
        WORKFLOW_INVALID_GRAPH
        if _GRAPH_ERROR_PATH.match(error.path)
        else WORKFLOW_INVALID_ARGUMENT
    )
    return ApiError(
        code,
        f"{path}.{error.path}: {error.detail}"
        if error.path
        else f"{path}: {error.detail}",
    )


def _definition(workflow: Workflow) -> dict[str, Any]:
    """Return the stored workflow as the dict the rules compiler takes."""
    return workflow.model_dump(
        mode="json",
        exclude_none=True,
        exclude_defaults=True,
        exclude={"created_at", "modified_at"},
    )


def _api_definition(ctx: RpcContext, workflow: Workflow) -> dict[str, Any]:
    try:
        return decrypt_node_keys(_definition(workflow), ctx.services.secret_box)
    except ValueError as error:
        raise ApiError(FAILURE, f"workflow {workflow.id!r}: {error}") from error


def _to_api(ctx: RpcContext, workflow: Workflow) -> dict[str, Any]:
    api = _api_definition(ctx, workflow)
    api["user_id"] = ctx.user_id
    api["app_id"] = ctx.app_id
    if workflow.created_at:
        api["created_at"] = rfc3339(workflow.created_at)
    if workflow.modified_at:
        api["modified_at"] = rfc3339(workflow.modified_at)
    return api


async def _load(ctx: RpcContext, workflow_id: str) -> Workflow:
    workflow = await ctx.store.get_workflow(ctx.user_id, ctx.app_id, workflow_id)
    if workflow is None:
        raise _missing([workflow_id])
    return workflow


async def _delete(ctx: RpcContext, ids: list[str] | None) -> None:
    """Delete workflows that no collector uses; nothing is deleted when an id is not
    found or a workflow is in use."""
    if ids is not None:
        found = await ctx.store.get_workflows(ctx.user_id, ctx.app_id, ids)
        missing = [workflow_id for workflow_id in ids if workflow_id not in found]
        if missing:
            raise _missing(missing)

    # NOTE: a collector created between this check and the delete keeps a
    # reference to the deleted workflow; the worker then reports it as broken.
    users: dict[str, list[str]] = {}
    for record in await ctx.store.list_app_collectors(ctx.user_id, ctx.app_id):
        for workflow_id in (
            record.pre_queue_workflow_id,
            record.post_queue_workflow_id,
        ):
            if workflow_id and (ids is None or workflow_id in ids):
                users.setdefault(workflow_id, []).append(record.id)
    if users:
        described = "; ".join(
            f"{workflow_id} (collectors {', '.join(sorted(set(collectors)))})"
            for workflow_id, collectors in sorted(users.items())
        )
        raise invalid_request(
            f"ids: workflows in use by collectors: {described}; delete those"
            " collectors or patch them to other workflows first"
        )
    await ctx.store.delete_workflows(ctx.user_id, ctx.app_id, ids)


def _missing(ids: list[str]) -> ApiError:
    return ApiError(
        WORKFLOW_DOES_NOT_EXIST, f"workflows not found in this app: {', '.join(ids)}"
    )


def _result_inputs(items: list[Any]) -> list[dict[str, Any]]:
    if not 1 <= len(items) <= MAX_RESULT_INPUTS:
        raise invalid_request(
            f"inputs: expected 1 to {MAX_RESULT_INPUTS} inputs, got {len(items)}"
        )
    inputs = []
    for index, item in enumerate(items):
        data = item.get("data") if isinstance(item, dict) else None
        if not isinstance(data, dict) or not any(data.values()):
            raise invalid_request(f"inputs[{index}].data: missing data")
        inputs.append({"id": item.get("id") or uuid.uuid4().hex, "data": data})
    return inputs


async def _run_one(
    ctx: RpcContext,
    compiled: CompiledWorkflow,
    item: dict[str, Any],
    relations: tuple[dict[str, Any], ...],
) -> dict[str, Any]:
    remote_outputs, failures = await _call_remote_models(ctx, compiled, item)
    context = EvalContext(
        input=item,
        seed_key=item["id"],
        relations=relations,
        remote_outputs=remote_outputs,
    )
    result = compiled.run(item["data"], context)

    created_at = rfc3339(utc_now())
    outputs = []
    for node_id, node in compiled.nodes.items():
        if node_id in compiled.suppressed_node_ids:
            continue
        output_status = (
            {"code": FAILURE, "description": failures[node_id]}
            if node_id in failures
            else {"code": SUCCESS, "description": "Ok"}
        )
        outputs.append(
            {
                "id": uuid.uuid4().hex,
                "status": output_status,
                "created_at": created_at,
                "model": strip_node_keys({"nodes": [node]})["nodes"][0]["model"],
                "input": item,
                "data": result.outputs.get(node_id, {}),
            }
        )
    status = {"code": SUCCESS, "description": "Ok"}
    if failures:
        # Suppressed nodes have no output in the response, so their failures show
        # here too.
        status = {
            "code": FAILURE,
            "description": "; ".join(
                f"node {node_id}: {reason}" for node_id, reason in failures.items()
            ),
        }
    return {
        "id": uuid.uuid4().hex,
        "status": status,
        "created_at": created_at,
        "input": item,
        "outputs": outputs,
    }


async def _call_remote_models(
    ctx: RpcContext, compiled: CompiledWorkflow, item: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Return each remote node's output data, and why the failed calls failed."""
    nodes = remote_nodes(compiled)
    if not nodes:
        return {}, {}
    settings = ctx.services.settings
    calls = [
        predict_remote(
            ctx.services.http_client(),
            node["model"],
            item,
            settings.model_timeout_s,
            allowed_urls=settings.allowed_model_urls,
        )
        for node in nodes
    ]
    outputs: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for node, result in zip(
        nodes, await asyncio.gather(*calls, return_exceptions=True)
    ):
        if isinstance(result, RemoteModelError):
            failures[node["id"]] = f"remote model failed: {result}"
            outputs[node["id"]] = {}
        elif isinstance(result, BaseException):
            raise result
        else:
            outputs[node["id"]] = result
    return outputs, failures
