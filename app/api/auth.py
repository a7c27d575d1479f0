"""Authentication of API callers and the scopes each RPC requires.

A caller sends `Authorization: Key <token>` (gRPC metadata `authorization`). The
token's SHA-256 digest is looked up in Redis; the token itself is never stored or
logged. An app key is tied to one user and app, so it also works on the short
`/v2/...` paths. A personal access token (PAT) stands for a user and needs the app in
the path (`/v2/users/{user_id}/apps/{app_id}/...`) or in the request's `user_app_id`.
The user id `me` means the key's own user.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.api.errors import (
    CONN_INSUFFICIENT_SCOPES,
    CONN_INVALID_REQUEST,
    CONN_KEY_INVALID,
    CONN_KEY_NOT_FOUND,
    ApiError,
    invalid_request,
)
from app.models import ID_PATTERN, ApiKeyRecord
from app.security import digests_equal, expand_scopes, hash_api_key
from app.store import Store

_HEADER_PATTERN = re.compile(r"^Key ([^\s]{1,512})$")
CURRENT_USER_ALIAS = "me"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller and the app its request is about."""

    key: ApiKeyRecord
    user_id: str
    app_id: str

    @property
    def scopes(self) -> frozenset[str]:
        return expand_scopes(self.key.scopes)

    @property
    def actor(self) -> str:
        """Who made a change, for revision records: the user, the kind of key and
        the start of its SHA-256 digest, never the key itself."""
        return f"{self.key.user_id} ({self.key.kind} {self.key.key_hash[:12]})"


def parse_authorization(header: str | None) -> str:
    """Return the token of a `Key <token>` header, or raise 11102 (HTTP 401)."""
    if not header:
        raise ApiError(
            CONN_INVALID_REQUEST,
            "missing Authorization header; send 'Authorization: Key <your key>'",
            http_status=401,
        )
    match = _HEADER_PATTERN.match(header.strip())
    if match is None:
        raise ApiError(
            CONN_INVALID_REQUEST,
            "malformed Authorization header; expected 'Key <your key>'",
            http_status=401,
        )
    return match.group(1)


async def lookup_key(store: Store, token: str) -> ApiKeyRecord | None:
    """Return the stored record of a key, or None when no such key exists."""
    digest = hash_api_key(token)
    record = await store.get_api_key(digest)
    if record is None or not digests_equal(record.key_hash, digest):
        return None
    return record


async def authenticate(
    store: Store, header: str | None, user_app_id: dict[str, Any] | None
) -> Caller:
    """Check the caller's key and resolve the user and app the request is about.

    `user_app_id` comes from the path or from the request (`{user_id, app_id}`, both
    optional). Raises ApiError 11102, 11009 or 11008 as Clarifai does.
    """
    token = parse_authorization(header)
    record = await lookup_key(store, token)
    if record is None:
        raise ApiError(
            CONN_KEY_NOT_FOUND,
            "the key in the Authorization header is not a known API key; create"
            " one with 'collectors keys create'",
        )
    requested = user_app_id or {}
    user_id = str(requested.get("user_id") or "")
    app_id = str(requested.get("app_id") or "")
    if user_id == CURRENT_USER_ALIAS:
        user_id = record.user_id
    if record.kind == "pat":
        return _resolve_pat(record, user_id, app_id)
    return _resolve_app_key(record, user_id, app_id)


def _resolve_app_key(record: ApiKeyRecord, user_id: str, app_id: str) -> Caller:
    if (user_id and user_id != record.user_id) or (app_id and app_id != record.app_id):
        raise ApiError(
            CONN_KEY_INVALID,
            f"this app key is not valid for user {user_id or record.user_id!r}"
            f" and app {app_id or record.app_id!r}",
        )
    return Caller(key=record, user_id=record.user_id, app_id=record.app_id)


def _resolve_pat(record: ApiKeyRecord, user_id: str, app_id: str) -> Caller:
    if not app_id:
        raise invalid_request(
            "user_app_id: a personal access token needs the app: use the"
            " /v2/users/{user_id}/apps/{app_id}/... path or set user_app_id.app_id"
        )
    if user_id and user_id != record.user_id:
        raise ApiError(
            CONN_KEY_INVALID,
            f"this personal access token is not valid for user {user_id!r}",
        )
    if not ID_PATTERN.match(app_id):
        raise invalid_request(
            f"user_app_id.app_id: invalid app id {app_id!r}; use 1 to 48 letters,"
            " digits, '-' or '_'"
        )
    return Caller(key=record, user_id=record.user_id, app_id=app_id)


def require_scopes(caller: Caller, required: Iterable[str]) -> None:
    """Raise 11007 (HTTP 403) naming the scopes the caller's key lacks."""
    missing = sorted(set(required) - caller.scopes)
    if missing:
        raise ApiError(
            CONN_INSUFFICIENT_SCOPES,
            f"the key lacks the scopes {', '.join(missing)}",
        )


def key_can_post_inputs(record: ApiKeyRecord, user_id: str, app_id: str) -> str:
    """Return why a key cannot POST /inputs to the app, or "" when it can.

    A key can when it has the `Inputs:Add` scope (or `All`) and is an app key of
    that app or a personal access token of that app's user.
    """
    if record.user_id != user_id:
        return f"the key belongs to another user than {user_id!r}"
    if record.kind == "app_key" and record.app_id != app_id:
        return f"the key is an app key of another app than {app_id!r}"
    if "Inputs:Add" not in expand_scopes(record.scopes):
        return "the key lacks the Inputs:Add scope"
    return ""
