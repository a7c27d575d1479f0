"""The context every RPC handler receives, and helpers for request fields."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.api.auth import Caller
from app.api.errors import invalid_request
from app.models import ID_PATTERN
from app.security import SecretBox
from app.settings import Settings
from app.store import Store

DEFAULT_PER_PAGE = 128
MAX_PER_PAGE = 1000
MAX_PAGE = 2**32 - 1  # the largest uint32, the type of `page` in the protos
_DIGITS = re.compile(r"^[0-9]{1,20}$")
ID_RULE = "1 to 48 letters, digits, '-' or '_'"  # the ids that ID_PATTERN matches


@dataclass
class Services:
    """Shared by the REST and gRPC servers: settings, storage and outbound HTTP."""

    settings: Settings
    store: Store
    secret_box: SecretBox
    _http: httpx.AsyncClient | None = field(default=None, repr=False)

    def http_client(self) -> httpx.AsyncClient:
        """Return the client for remote model calls, created on first use."""
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=False)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


@dataclass(frozen=True, slots=True)
class RpcContext:
    """One authenticated call: the services, the caller and the request id."""

    services: Services
    caller: Caller
    req_id: str

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def user_id(self) -> str:
        return self.caller.user_id

    @property
    def app_id(self) -> str:
        return self.caller.app_id


def parse_count(
    request: dict[str, Any], name: str, *, default: int, maximum: int
) -> int:
    """Return a positive integer field, given as a number (gRPC) or text (REST query).

    An absent field gets `default`; zero, negatives, non-integers and values above
    `maximum` raise 11102 naming the field.
    """
    value = request.get(name)
    if value is None:
        return default
    expected = f"an integer from 1 to {maximum}"
    if isinstance(value, str) and _DIGITS.match(value.strip()):
        number = int(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise invalid_request(f"{name}: expected {expected}, got {value!r}")
    if not 1 <= number <= maximum:
        raise invalid_request(f"{name}: expected {expected}, got {number}")
    return number


def parse_paging(request: dict[str, Any]) -> tuple[int, int]:
    """Return (page, per_page): page from 1, per_page 128 by default, at most 1000."""
    page = parse_count(request, "page", default=1, maximum=MAX_PAGE)
    per_page = parse_count(
        request, "per_page", default=DEFAULT_PER_PAGE, maximum=MAX_PER_PAGE
    )
    return page, per_page


def check_id(value: Any, path: str) -> str:
    """Return a resource id, or raise 11102 naming `path` when it is not valid.

    A JSON request may carry any JSON value here, so a value that is not a string
    gets its own message rather than being reported as missing.
    """
    if value is None or value == "":
        raise invalid_request(f"{path}: missing id; expected an id of {ID_RULE}")
    if not isinstance(value, str):
        raise invalid_request(
            f"{path}: expected a string id of {ID_RULE}, got {value!r}"
        )
    if not ID_PATTERN.match(value):
        raise invalid_request(f"{path}: invalid id {value!r}; use {ID_RULE}")
    return value


def parse_delete_ids(
    request: dict[str, Any],
    noun: str,
    check: Callable[[Any, str], str] = check_id,
) -> list[str] | None:
    """Return the `ids` to delete, or None for `delete_all`.

    Raises 11102 when neither or both are given, or when `check` rejects an id.
    """
    ids = request.get("ids") or []
    delete_all = bool(request.get("delete_all"))
    if not isinstance(ids, list):
        raise invalid_request(f"ids: expected a list of {noun} ids")
    if ids and delete_all:
        raise invalid_request("ids: set either ids or delete_all, not both")
    if delete_all:
        return None
    if not ids:
        raise invalid_request(f"ids: list the {noun} ids to delete, or set delete_all")
    return [check(value, f"ids[{index}]") for index, value in enumerate(ids)]
