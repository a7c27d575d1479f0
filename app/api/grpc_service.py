"""The gRPC binding: clarifai_grpc's V2 service, serving the RPCs in RPCS, and this
service's own `collectors.v1.Collectors`.

Like Clarifai's API, every call returns a response message with gRPC status OK and
the Clarifai status inside. RPCs this service does not implement return the gRPC
status UNIMPLEMENTED.

`collectors.v1.Collectors` (PreviewCollector, ListCollectorRevisions) has no .proto
file: each request and response body is a JSON object in UTF-8, the same dicts as
over REST, with `collector_id` and, for a personal access token, `user_app_id` in
the request. Callers authenticate with the metadata `authorization: Key ...`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
from google.protobuf.json_format import ParseDict
from google.protobuf.message import DecodeError, Message

from app.api.context import Services
from app.api.errors import CONN_BAD_REQUEST_FORMAT, FAILURE, ApiError
from app.api.handlers import (
    OWN_SERVICE_NAME,
    RPCS,
    SERVICE_NAME,
    Rpc,
    dispatch,
    error_reply,
    new_req_id,
)
from app.api.protojson import message_to_request

logger = logging.getLogger(__name__)

Method = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]


def build_v2_service(services: Services) -> grpc.GenericRpcHandler:
    """Return the handler of the implemented `clarifai.api.V2` RPCs.

    The generated `add_V2Servicer_to_server` decodes each request before the handler
    runs, so a request that fails to decode ends with gRPC status UNKNOWN. These
    handlers decode the raw bytes themselves. Bytes that are not the request message
    get a response with status 11100 rather than gRPC INVALID_ARGUMENT, because
    clarifai_grpc callers check `response.status` for every other request error.
    The server returns gRPC status UNIMPLEMENTED for the V2 RPCs missing here.
    """
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _method(services, rpc),
            request_deserializer=None,
            response_serializer=_response_type(rpc).SerializeToString,
        )
        for name, rpc in RPCS.items()
        if rpc.service == SERVICE_NAME
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def build_own_service(services: Services) -> grpc.GenericRpcHandler:
    """Return the handler of `collectors.v1.Collectors`, whose bodies are JSON."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _json_method(services, rpc),
            request_deserializer=None,
            response_serializer=orjson.dumps,
        )
        for name, rpc in RPCS.items()
        if rpc.service == OWN_SERVICE_NAME
    }
    return grpc.method_handlers_generic_handler(OWN_SERVICE_NAME, handlers)


def add_servicer(server: grpc.aio.Server, services: Services) -> None:
    """Register both services on the server."""
    server.add_generic_rpc_handlers(
        (build_v2_service(services), build_own_service(services))
    )


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    metadata = {
        key.lower(): value for key, value in context.invocation_metadata() or ()
    }
    authorization = metadata.get("authorization")
    return authorization if isinstance(authorization, str) else None


def _method(services: Services, rpc: Rpc) -> Method:
    async def method(request: bytes, context: grpc.aio.ServicerContext) -> Message:
        req_id = new_req_id()
        try:
            message = _decode(rpc, request)
        except ApiError as error:
            logger.debug("%s rejected (req_id %s): %s", rpc.name, req_id, error.details)
            return _to_message(rpc, error_reply(error, req_id).body)
        request_dict = message_to_request(message)
        user_app_id = request_dict.pop("user_app_id", None)
        reply = await dispatch(
            services, rpc, _authorization(context), user_app_id, request_dict, req_id
        )
        return _to_message(rpc, reply.body)

    method.__name__ = rpc.name
    return method


def _decode(rpc: Rpc, content: bytes) -> Message:
    """Parse the request message of a V2 RPC, or raise 11100 naming its type."""
    request_type = rpc.request_type
    assert request_type is not None, f"{rpc.name} has no protobuf request type"
    try:
        return request_type.FromString(content)
    except DecodeError as error:
        type_name = request_type.DESCRIPTOR.full_name
        raise ApiError(
            CONN_BAD_REQUEST_FORMAT,
            f"the request body could not be decoded as {type_name}; send a"
            f" serialized {type_name} message",
        ) from error


def _response_type(rpc: Rpc) -> type[Message]:
    response_type = rpc.response_type
    assert response_type is not None, f"{rpc.name} has no protobuf response type"
    return response_type


def _json_method(
    services: Services, rpc: Rpc
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[dict[str, Any]]]:
    """Return the behaviour of one JSON RPC: it takes the raw request bytes, so
    that a body that is not a JSON object gets a 11100 response, not a gRPC
    error."""

    async def method(
        request: bytes, context: grpc.aio.ServicerContext
    ) -> dict[str, Any]:
        req_id = new_req_id()
        try:
            request_dict = _json_object(request)
        except ApiError as error:
            return error_reply(error, req_id).body
        user_app_id = request_dict.pop("user_app_id", None)
        reply = await dispatch(
            services, rpc, _authorization(context), user_app_id, request_dict, req_id
        )
        return reply.body

    method.__name__ = rpc.name
    return method


def _json_object(content: bytes) -> dict[str, Any]:
    """Decode a JSON request body; an empty body is an empty object."""
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


def _to_message(rpc: Rpc, body: dict[str, Any]) -> Message:
    response_type = _response_type(rpc)
    try:
        return ParseDict(body, response_type(), ignore_unknown_fields=True)
    except Exception:
        req_id = body.get("status", {}).get("req_id") or new_req_id()
        logger.exception(
            "%s response does not fit its message (req_id %s)", rpc.name, req_id
        )
        reply = error_reply(
            ApiError(FAILURE, f"internal error; report req_id {req_id}"), req_id
        )
        return ParseDict(reply.body, response_type(), ignore_unknown_fields=True)
