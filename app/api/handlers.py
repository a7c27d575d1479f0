"""The transport-independent RPC layer: which RPCs exist, their scopes, and dispatch.

REST (app/api/rest.py) and gRPC (app/api/grpc_service.py) both turn a request into
a dict in Clarifai's JSON shape (see app/api/protojson.py) and call `dispatch`,
which authenticates the caller, checks the RPC's scopes, runs the handler and
returns the response dict with its `status`. The handlers live in collectors.py,
previews.py, inputs.py, workflows.py and relations.py.

Most RPCs belong to Clarifai's service `clarifai.api.V2`. The RPCs that Clarifai
never had (collector previews and revisions) belong to this service's own
`collectors.v1.Collectors`, which has no protobuf types: its requests and
responses are the JSON dicts themselves.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_pb2
from google.protobuf.message import Message
from redis.exceptions import RedisError

from app.api import collectors, inputs, previews, relations, workflows
from app.api.auth import authenticate, require_scopes
from app.api.context import RpcContext, Services
from app.api.errors import (
    FAILURE,
    ApiError,
    error_status,
    invalid_request,
    success_status,
)

logger = logging.getLogger(__name__)

Handler = Callable[[RpcContext, dict[str, Any]], Awaitable[dict[str, Any]]]
SERVICE_NAME = "clarifai.api.V2"
OWN_SERVICE_NAME = "collectors.v1.Collectors"

POST_COLLECTORS_SCOPES = (
    "Apps:Get",
    "Collectors:Add",
    "Inputs:Add",
    "Inputs:Get",
    "Annotations:Add",
    "Annotations:Get",
    "Concepts:Get",
    "Models:Get",
    "Predict",
    "Workflows:Get",
)


@dataclass(frozen=True, slots=True)
class Rpc:
    """One RPC: its handler, the scopes its key needs, and its protobuf types.

    The RPCs of OWN_SERVICE_NAME have no protobuf types (None): their request is
    the JSON object as sent, which the handler checks field by field.
    """

    name: str
    handler: Handler
    scopes: tuple[str, ...]
    request_type: type[Message] | None
    response_type: type[Message] | None
    service: str = SERVICE_NAME

    @property
    def full_name(self) -> str:
        return f"/{self.service}/{self.name}"


@dataclass(frozen=True, slots=True)
class Reply:
    http_status: int
    body: dict[str, Any]


def new_req_id() -> str:
    return uuid.uuid4().hex


async def my_scopes(ctx: RpcContext, request: dict[str, Any]) -> dict[str, Any]:
    """Return the key's scopes (implied ones included), its app and the RPCs it may
    call."""
    granted = ctx.caller.scopes
    return {
        "scopes": sorted(granted),
        "app": {"id": ctx.app_id, "user_id": ctx.user_id},
        "endpoints": sorted(
            rpc.full_name for rpc in RPCS.values() if set(rpc.scopes) <= granted
        ),
    }


def _rpc(
    name: str,
    handler: Handler,
    scopes: tuple[str, ...],
    response_type: type[Message],
) -> Rpc:
    request_type = getattr(service_pb2, f"{name}Request")
    return Rpc(name, handler, scopes, request_type, response_type)


_BASE = status_pb2.BaseResponse
_COLLECTOR_GET = ("Apps:Get", "Collectors:Get")
RPCS: dict[str, Rpc] = {
    rpc.name: rpc
    for rpc in (
        _rpc(
            "PostCollectors",
            collectors.post_collectors,
            POST_COLLECTORS_SCOPES,
            service_pb2.MultiCollectorResponse,
        ),
        _rpc(
            "GetCollector",
            collectors.get_collector,
            _COLLECTOR_GET,
            service_pb2.SingleCollectorResponse,
        ),
        _rpc(
            "ListCollectors",
            collectors.list_collectors,
            _COLLECTOR_GET,
            service_pb2.MultiCollectorResponse,
        ),
        _rpc(
            "PatchCollectors",
            collectors.patch_collectors,
            ("Apps:Get", "Collectors:Add", "Collectors:Get"),
            service_pb2.MultiCollectorResponse,
        ),
        _rpc(
            "DeleteCollectors",
            collectors.delete_collectors,
            ("Apps:Get", "Collectors:Add", "Collectors:Delete", "Collectors:Get"),
            _BASE,
        ),
        _rpc(
            "PostInputs",
            inputs.post_inputs,
            ("Inputs:Add",),
            service_pb2.MultiInputResponse,
        ),
        _rpc(
            "ListInputs",
            inputs.list_inputs,
            ("Inputs:Get",),
            service_pb2.MultiInputResponse,
        ),
        _rpc(
            "GetInput",
            inputs.get_input,
            ("Inputs:Get",),
            service_pb2.SingleInputResponse,
        ),
        _rpc("DeleteInputs", inputs.delete_inputs, ("Inputs:Delete",), _BASE),
        _rpc("DeleteInput", inputs.delete_input, ("Inputs:Delete",), _BASE),
        _rpc(
            "PostWorkflows",
            workflows.post_workflows,
            ("Workflows:Add",),
            service_pb2.MultiWorkflowResponse,
        ),
        _rpc(
            "GetWorkflow",
            workflows.get_workflow,
            ("Workflows:Get",),
            service_pb2.SingleWorkflowResponse,
        ),
        _rpc(
            "ListWorkflows",
            workflows.list_workflows,
            ("Workflows:Get",),
            service_pb2.MultiWorkflowResponse,
        ),
        _rpc(
            "PatchWorkflows",
            workflows.patch_workflows,
            ("Workflows:Add",),
            service_pb2.MultiWorkflowResponse,
        ),
        _rpc(
            "DeleteWorkflows",
            workflows.delete_workflows,
            ("Workflows:Delete",),
            _BASE,
        ),
        _rpc(
            "DeleteWorkflow",
            workflows.delete_workflow,
            ("Workflows:Delete",),
            _BASE,
        ),
        _rpc(
            "PostWorkflowResults",
            workflows.post_workflow_results,
            ("Workflows:Get", "Predict"),
            service_pb2.PostWorkflowResultsResponse,
        ),
        _rpc(
            "PostConceptRelations",
            relations.post_concept_relations,
            ("Concepts:Add",),
            service_pb2.MultiConceptRelationResponse,
        ),
        _rpc(
            "ListConceptRelations",
            relations.list_concept_relations,
            ("Concepts:Get",),
            service_pb2.MultiConceptRelationResponse,
        ),
        _rpc(
            "DeleteConceptRelations",
            relations.delete_concept_relations,
            ("Concepts:Delete",),
            _BASE,
        ),
        _rpc("MyScopes", my_scopes, (), service_pb2.MultiScopeResponse),
        Rpc(
            "PreviewCollector",
            previews.preview_collector,
            _COLLECTOR_GET,
            None,
            None,
            OWN_SERVICE_NAME,
        ),
        Rpc(
            "ListCollectorRevisions",
            collectors.list_collector_revisions,
            _COLLECTOR_GET,
            None,
            None,
            OWN_SERVICE_NAME,
        ),
    )
}


def error_reply(error: ApiError, req_id: str) -> Reply:
    return Reply(error.http_status, {"status": error_status(error, req_id)})


async def dispatch(
    services: Services,
    rpc: Rpc,
    authorization: str | None,
    user_app_id: dict[str, Any] | None,
    request: dict[str, Any],
    req_id: str | None = None,
) -> Reply:
    """Authenticate, check scopes, run the RPC's handler and build the response.

    Every failure becomes a response with a Clarifai status: ApiError as raised,
    Redis errors and unexpected exceptions as 10020 FAILURE, logged with the
    req_id.
    """
    req_id = req_id or new_req_id()
    try:
        _check_user_app_id(user_app_id)
        caller = await authenticate(services.store, authorization, user_app_id)
        require_scopes(caller, rpc.scopes)
        body = await rpc.handler(RpcContext(services, caller, req_id), request)
    except ApiError as error:
        logger.debug("%s rejected (req_id %s): %s", rpc.name, req_id, error.details)
        return error_reply(error, req_id)
    except RedisError as error:
        logger.error("%s failed on Redis (req_id %s): %r", rpc.name, req_id, error)
        return error_reply(
            ApiError(FAILURE, f"storage is unavailable; retry later (req_id {req_id})"),
            req_id,
        )
    except Exception:
        logger.exception("%s failed (req_id %s)", rpc.name, req_id)
        return error_reply(
            ApiError(FAILURE, f"internal error; report req_id {req_id}"), req_id
        )

    status = success_status(req_id)
    status.update(body.pop("status", {}))
    return Reply(200, {"status": status, **body})


def _check_user_app_id(user_app_id: Any) -> None:
    """Raise 11102 unless `user_app_id` is absent or an object of id strings.

    A protobuf request always satisfies this; a JSON request of OWN_SERVICE_NAME
    may carry any JSON value.
    """
    if user_app_id is None:
        return
    if not isinstance(user_app_id, dict):
        raise invalid_request(
            f"user_app_id: expected an object with user_id and app_id, got"
            f" {user_app_id!r}"
        )
    for name, value in user_app_id.items():
        if name not in ("user_id", "app_id"):
            raise invalid_request(f"user_app_id.{name}: unknown field")
        if not isinstance(value, str):
            raise invalid_request(
                f"user_app_id.{name}: expected a string, got {value!r}"
            )
