"""The REST binding: FastAPI routes that turn HTTP requests into RPC dispatches.

Each RPC is served on Clarifai's paths: `/v2/users/{user_id}/apps/{app_id}/...` and,
for most, the short `/v2/...` form that relies on an app key. GET parameters come
from the query string; other methods take a JSON body (DELETE too). Every error,
from an unknown path to an unexpected exception, is a JSON body with a Clarifai
`status`.

The collector preview and revision routes serve this service's own RPCs (see
app/api/handlers.py), whose JSON bodies go to the handlers unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.context import Services
from app.api.errors import (
    CONN_BAD_REQUEST_FORMAT,
    CONN_DOES_NOT_EXIST,
    CONN_INVALID_REQUEST,
    FAILURE,
    ApiError,
)
from app.api.handlers import RPCS, Reply, dispatch, error_reply, new_req_id
from app.api.protojson import body_to_request
from app.api.schemas import REQUEST_SCHEMAS, RESPONSE_SCHEMAS, BaseResponse

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
APP_PREFIX = "/v2/users/{user_id}/apps/{app_id}"
USER_PREFIX = "/v2/users/{user_id}"
SHORT_PREFIX = "/v2"
REQUEST_ID_HEADER = "X-Request-ID"


@dataclass(frozen=True, slots=True)
class Binding:
    """The HTTP method and paths of one RPC.

    The RPC is served on `path` after each of `prefixes`. `query` lists the GET
    parameters, and `body_only` the REST body fields that the protobuf request
    lacks. `extensions` lists (repeated field, item field) pairs of fields that
    the protobuf items lack, passed to the handler unchecked.
    """

    rpc: str
    method: str
    path: str
    prefixes: tuple[str, ...] = (APP_PREFIX, SHORT_PREFIX)
    query: tuple[str, ...] = ()
    body_only: tuple[str, ...] = ()
    extensions: tuple[tuple[str, str], ...] = ()


_PAGING = ("page", "per_page")
# A collector's own options (sample_key, collect_failed_predictions), which
# Clarifai's Collector message has no field for.
_COLLECTOR_OPTIONS = (("collectors", "metadata"),)
BINDINGS = (
    Binding("PostCollectors", "POST", "/collectors", extensions=_COLLECTOR_OPTIONS),
    Binding("GetCollector", "GET", "/collectors/{collector_id}"),
    Binding("ListCollectors", "GET", "/collectors", query=_PAGING),
    Binding("PatchCollectors", "PATCH", "/collectors", extensions=_COLLECTOR_OPTIONS),
    Binding("DeleteCollectors", "DELETE", "/collectors"),
    Binding("PreviewCollector", "POST", "/collectors/{collector_id}/preview"),
    Binding(
        "ListCollectorRevisions",
        "GET",
        "/collectors/{collector_id}/revisions",
        query=_PAGING,
    ),
    Binding("PostInputs", "POST", "/inputs"),
    Binding("ListInputs", "GET", "/inputs", query=_PAGING),
    Binding("GetInput", "GET", "/inputs/{input_id}"),
    Binding("DeleteInputs", "DELETE", "/inputs", body_only=("delete_all",)),
    Binding("DeleteInput", "DELETE", "/inputs/{input_id}"),
    Binding("PostWorkflows", "POST", "/workflows"),
    Binding("GetWorkflow", "GET", "/workflows/{workflow_id}"),
    Binding("ListWorkflows", "GET", "/workflows", query=_PAGING),
    # clarifai_grpc's JSON channel sends a ListWorkflows without user_app_id to
    # /v2/users/me/workflows. Workflows belong to an app, so this lists the app
    # key's app.
    Binding("ListWorkflows", "GET", "/workflows", (USER_PREFIX,), query=_PAGING),
    Binding("PatchWorkflows", "PATCH", "/workflows"),
    Binding("DeleteWorkflows", "DELETE", "/workflows"),
    Binding("DeleteWorkflow", "DELETE", "/workflows/{workflow_id}"),
    Binding("PostWorkflowResults", "POST", "/workflows/{workflow_id}/results"),
    Binding(
        "PostWorkflowResults",
        "POST",
        "/workflows/{workflow_id}/versions/{version_id}/results",
        prefixes=(APP_PREFIX,),
    ),
    Binding(
        "PostConceptRelations",
        "POST",
        "/concepts/{concept_id}/relations",
        prefixes=(APP_PREFIX,),
    ),
    Binding(
        "ListConceptRelations",
        "GET",
        "/concepts/{concept_id}/relations",
        prefixes=(APP_PREFIX,),
        query=(*_PAGING, "predicate", "knowledge_graph_id"),
    ),
    Binding(
        "ListConceptRelations",
        "GET",
        "/concepts/relations",
        prefixes=(APP_PREFIX,),
        query=(*_PAGING, "predicate", "knowledge_graph_id"),
    ),
    Binding(
        "DeleteConceptRelations",
        "DELETE",
        "/concepts/{concept_id}/relations",
        prefixes=(APP_PREFIX,),
    ),
    Binding("MyScopes", "GET", "/myscopes"),
    Binding("MyScopes", "GET", "/my_scopes"),
)


def create_rest_app(services: Services) -> FastAPI:
    """Build the FastAPI app serving every binding.

    `app.state.services` contains the shared services, for routes mounted later
    (dashboard, /metrics).
    """
    app = FastAPI(
        title="Collectors API",
        version="1",
        description="Clarifai-compatible Collectors, Inputs, Workflows and concept"
        " relations. Authenticate with `Authorization: Key <API key or PAT>`.",
    )
    app.state.services = services
    for binding in BINDINGS:
        for path in _paths(binding):
            app.add_api_route(
                path,
                _endpoint(services, binding),
                methods=[binding.method],
                name=f"{binding.rpc} {path}",
                operation_id=_operation_id(binding, path),
                summary=binding.rpc,
                tags=[_tag(binding.rpc)],
                openapi_extra=_openapi_extra(binding, path),
                responses={
                    200: {"model": RESPONSE_SCHEMAS[binding.rpc]},
                    "4XX": {"model": BaseResponse},
                    "5XX": {"model": BaseResponse},
                },
            )
    _add_error_handlers(app)
    _add_openapi(app)
    return app


def _paths(binding: Binding) -> list[str]:
    return [prefix + binding.path for prefix in binding.prefixes]


def _operation_id(binding: Binding, path: str) -> str:
    if path.startswith(APP_PREFIX):
        suffix = "App"
    elif path.startswith(USER_PREFIX):
        suffix = "User"
    else:
        suffix = "Short"
    name = binding.path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
    return f"{binding.rpc}{suffix}_{name}"


def _tag(rpc_name: str) -> str:
    for word in ("Collector", "Input", "WorkflowResult", "Workflow", "ConceptRelation"):
        if word in rpc_name:
            return word + "s"
    return "Keys"


# --- endpoints ---------------------------------------------------------------------


def _endpoint(
    services: Services, binding: Binding
) -> Callable[[Request], Awaitable[Response]]:
    rpc = RPCS[binding.rpc]

    async def endpoint(request: Request) -> Response:
        req_id = new_req_id()
        try:
            body = await _request_dict(request, binding, rpc.request_type)
        except ApiError as error:
            return _json(error_reply(error, req_id), req_id)

        path_params = dict(request.path_params)
        body_user_app = body.pop("user_app_id", None)
        if "user_id" in path_params:
            user_app_id = {
                "user_id": path_params.pop("user_id"),
                "app_id": path_params.pop("app_id", ""),
            }
        else:
            user_app_id = body_user_app
        body.update(path_params)
        reply = await dispatch(
            services,
            rpc,
            request.headers.get("authorization"),
            user_app_id,
            body,
            req_id,
        )
        return _json(reply, req_id)

    endpoint.__name__ = binding.rpc
    return endpoint


async def _request_dict(
    request: Request, binding: Binding, request_type: Any
) -> dict[str, Any]:
    """Read the request's parameters: the query string for GET, else the JSON body.

    Without a protobuf `request_type` the JSON body is returned as it is.
    """
    if binding.method == "GET":
        return {
            name: request.query_params[name]
            for name in binding.query
            if name in request.query_params
        }
    raw = await _read_json(request)
    if request_type is None:
        return raw
    extra = {name: raw.pop(name) for name in binding.body_only if name in raw}
    for name, value in extra.items():
        if not isinstance(value, bool):
            raise ApiError(
                CONN_INVALID_REQUEST, f"{name}: expected true or false, got {value!r}"
            )
    return {**body_to_request(raw, request_type, binding.extensions), **extra}


async def _read_json(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    content = b"".join(chunks)
    if not content.strip():
        return {}
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError as error:
        raise ApiError(
            CONN_BAD_REQUEST_FORMAT, f"the request body is not valid JSON: {error}"
        ) from error
    if not isinstance(value, dict):
        raise ApiError(
            CONN_BAD_REQUEST_FORMAT,
            f"the request body must be a JSON object, got {type(value).__name__}",
        )
    return value


def _too_large() -> ApiError:
    return ApiError(
        CONN_BAD_REQUEST_FORMAT,
        f"the request body is larger than {MAX_BODY_BYTES} bytes; send fewer inputs"
        " a request or images by URL",
        http_status=413,
    )


def _json(reply: Reply, req_id: str) -> JSONResponse:
    return JSONResponse(
        reply.body, status_code=reply.http_status, headers={REQUEST_ID_HEADER: req_id}
    )


# --- errors outside the RPC routes -------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        req_id = new_req_id()
        headers = {REQUEST_ID_HEADER: req_id, **(error.headers or {})}
        if error.status_code == 404:
            api_error = ApiError(
                CONN_DOES_NOT_EXIST, f"no such path: {request.url.path}"
            )
        elif error.status_code == 405:
            allowed = _allowed_methods(request)
            headers.pop("allow", None)
            headers["Allow"] = allowed
            api_error = ApiError(
                CONN_DOES_NOT_EXIST,
                f"method {request.method} is not allowed on {request.url.path};"
                f" allowed: {allowed}",
                http_status=405,
            )
        else:
            api_error = ApiError(
                CONN_INVALID_REQUEST, str(error.detail), http_status=error.status_code
            )
        reply = error_reply(api_error, req_id)
        return JSONResponse(reply.body, status_code=reply.http_status, headers=headers)

    async def validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        req_id = new_req_id()
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        return _json(
            error_reply(ApiError(CONN_INVALID_REQUEST, problems), req_id), req_id
        )

    async def unexpected_error(request: Request, error: Exception) -> Response:
        req_id = new_req_id()
        logger.exception(
            "%s %s failed (req_id %s)", request.method, request.url.path, req_id
        )
        api_error = ApiError(FAILURE, f"internal error; report req_id {req_id}")
        return _json(error_reply(api_error, req_id), req_id)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)


def _allowed_methods(request: Request) -> str:
    """Return the methods of every route whose path matches, because Starlette's
    Allow header names only the first matching route's methods."""
    methods = {
        method
        for route in request.app.routes
        if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
        for method in route.methods or ()
    }
    return ", ".join(sorted(methods))


# --- OpenAPI --------------------------------------------------------------------------


def _openapi_extra(binding: Binding, path: str) -> dict[str, Any]:
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": r"^[^/]+$", "minLength": 1},
        }
        for name in _path_names(path)
    ]
    for name in binding.query:
        schema: dict[str, Any] = {"type": "string"}
        if name == "page":
            schema = {"type": "integer", "minimum": 1, "maximum": 2**32 - 1}
        elif name == "per_page":
            schema = {"type": "integer", "minimum": 1, "maximum": 1000}
        parameters.append(
            {"name": name, "in": "query", "required": False, "schema": schema}
        )
    extra: dict[str, Any] = {"parameters": parameters}
    schema_model = REQUEST_SCHEMAS.get(binding.rpc)
    if binding.method != "GET" and schema_model is not None:
        extra["requestBody"] = {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{schema_model.__name__}"}
                }
            },
        }
    return extra


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _add_openapi(app: FastAPI) -> None:
    """Serve an OpenAPI document that also describes the request bodies, which the
    endpoints read themselves rather than through FastAPI."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in REQUEST_SCHEMAS.values():
            definition = model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas.update(definition.pop("$defs", {}))
            schemas[model.__name__] = definition
        document["components"]["securitySchemes"] = {
            "ApiKey": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Key <API key or personal access token>`",
            }
        }
        document["security"] = [{"ApiKey": []}]
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented hook
