"""Clarifai status codes, their HTTP statuses, and the error that handlers raise.

Every response carries a `status` object `{code, description, req_id}`; errors add
`details` and `http_status_code`. gRPC calls always return gRPC status OK with the
Clarifai status inside the message, as Clarifai's own API does.
"""

from __future__ import annotations

from typing import Any

SUCCESS = 10000
MIXED_STATUS = 10010
FAILURE = 10020
CONN_THROTTLED = 11005
CONN_INSUFFICIENT_SCOPES = 11007
CONN_KEY_INVALID = 11008
CONN_KEY_NOT_FOUND = 11009
CONN_BAD_REQUEST_FORMAT = 11100
CONN_DOES_NOT_EXIST = 11101
CONN_INVALID_REQUEST = 11102
WORKFLOW_DOES_NOT_EXIST = 22102
WORKFLOW_INVALID_ARGUMENT = 22104
WORKFLOW_INVALID_GRAPH = 22107
INPUT_SUCCESS = 30000
INPUT_DOES_NOT_EXIST = 30102
DATABASE_DUPLICATE_KEY = 40010
COLLECTOR_MISSING = 52000

HTTP_STATUS_BY_CODE = {
    SUCCESS: 200,
    MIXED_STATUS: 200,
    FAILURE: 500,
    CONN_THROTTLED: 429,
    CONN_INSUFFICIENT_SCOPES: 403,
    CONN_KEY_INVALID: 401,
    CONN_KEY_NOT_FOUND: 401,
    CONN_BAD_REQUEST_FORMAT: 400,
    CONN_DOES_NOT_EXIST: 404,
    CONN_INVALID_REQUEST: 400,
    WORKFLOW_DOES_NOT_EXIST: 404,
    WORKFLOW_INVALID_ARGUMENT: 400,
    WORKFLOW_INVALID_GRAPH: 400,
    INPUT_DOES_NOT_EXIST: 404,
    DATABASE_DUPLICATE_KEY: 409,
    COLLECTOR_MISSING: 404,
}

DESCRIPTIONS = {
    SUCCESS: "Ok",
    MIXED_STATUS: "Mixed status",
    FAILURE: "Failure",
    CONN_THROTTLED: "Too many requests",
    CONN_INSUFFICIENT_SCOPES: "Insufficient scopes",
    CONN_KEY_INVALID: "Invalid API key or Invalid API key/application pair",
    CONN_KEY_NOT_FOUND: "API key not found",
    CONN_BAD_REQUEST_FORMAT: "Bad request format",
    CONN_DOES_NOT_EXIST: "Resource does not exist",
    CONN_INVALID_REQUEST: "Invalid request",
    WORKFLOW_DOES_NOT_EXIST: "Workflow does not exist",
    WORKFLOW_INVALID_ARGUMENT: "Invalid workflow argument",
    WORKFLOW_INVALID_GRAPH: "Invalid workflow graph",
    INPUT_DOES_NOT_EXIST: "Input does not exist",
    DATABASE_DUPLICATE_KEY: "Duplicate key",
    COLLECTOR_MISSING: "Collector does not exist",
}


class ApiError(Exception):
    """A request failed with a Clarifai status code.

    `description` is the short standard text of the code unless given, and
    `details` describes what was wrong with which field and how to fix it.
    """

    def __init__(
        self,
        code: int,
        details: str,
        *,
        description: str = "",
        http_status: int | None = None,
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.description = description or DESCRIPTIONS.get(code, "Failure")
        self.http_status = http_status or HTTP_STATUS_BY_CODE.get(code, 400)


def invalid_request(details: str) -> ApiError:
    """Build the 11102 error for an invalid or missing field, named in `details`."""
    return ApiError(CONN_INVALID_REQUEST, details)


def success_status(req_id: str) -> dict[str, Any]:
    return {"code": SUCCESS, "description": DESCRIPTIONS[SUCCESS], "req_id": req_id}


def error_status(error: ApiError, req_id: str) -> dict[str, Any]:
    """Return the `status` object of an error response.

    The description includes the details, because many clients print only the
    description (the guide's examples do).
    """
    return {
        "code": error.code,
        "description": f"{error.description}: {error.details}",
        "details": error.details,
        "req_id": req_id,
        "http_status_code": error.http_status,
    }
