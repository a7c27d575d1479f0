"""The gRPC binding: clarifai_grpc's V2 service, serving the RPCs in RPCS.

Like Clarifai's API, every call returns a response message with gRPC status OK and
the Clarifai status inside. RPCs this service does not implement return the gRPC
status UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from clarifai_grpc.grpc.api import service_pb2_grpc
from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message

from app.api.context import Services
from app.api.errors import FAILURE, ApiError
from app.api.handlers import RPCS, Rpc, dispatch, error_reply, new_req_id
from app.api.protojson import message_to_request

logger = logging.getLogger(__name__)

Method = Callable[[Any, Message, grpc.aio.ServicerContext], Awaitable[Message]]


def build_servicer(services: Services) -> service_pb2_grpc.V2Servicer:
    """Return a V2Servicer whose implemented RPCs dispatch to the handlers."""
    methods = {name: _method(services, rpc) for name, rpc in RPCS.items()}
    servicer_class = type("CollectorsServicer", (service_pb2_grpc.V2Servicer,), methods)
    servicer: service_pb2_grpc.V2Servicer = servicer_class()
    return servicer


def add_servicer(server: grpc.aio.Server, services: Services) -> None:
    service_pb2_grpc.add_V2Servicer_to_server(build_servicer(services), server)


def _method(services: Services, rpc: Rpc) -> Method:
    async def method(
        self: Any, request: Message, context: grpc.aio.ServicerContext
    ) -> Message:
        metadata = {
            key.lower(): value for key, value in context.invocation_metadata() or ()
        }
        authorization = metadata.get("authorization")
        request_dict = message_to_request(request)
        user_app_id = request_dict.pop("user_app_id", None)
        reply = await dispatch(
            services,
            rpc,
            authorization if isinstance(authorization, str) else None,
            user_app_id,
            request_dict,
        )
        return _to_message(rpc, reply.body)

    method.__name__ = rpc.name
    return method


def _to_message(rpc: Rpc, body: dict[str, Any]) -> Message:
    try:
        return ParseDict(body, rpc.response_type(), ignore_unknown_fields=True)
    except Exception:
        req_id = body.get("status", {}).get("req_id") or new_req_id()
        logger.exception(
            "%s response does not fit its message (req_id %s)", rpc.name, req_id
        )
        reply = error_reply(
            ApiError(FAILURE, f"internal error; report req_id {req_id}"), req_id
        )
        return ParseDict(reply.body, rpc.response_type(), ignore_unknown_fields=True)
