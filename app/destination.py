"""Client that posts collected inputs to a Clarifai-compatible destination app.

`POST {base}/v2/users/{user_id}/apps/{app_id}/inputs` with `Authorization: Key
<post_inputs_key>`, at most 128 inputs a request. Connection errors, timeouts and
HTTP 408, 425, 429 and 5xx are retried with exponential backoff and full jitter,
honouring `Retry-After`, until `give_up_s` has passed. Other responses are final,
except that inputs the destination already holds count as delivered: input ids are
derived from the collector and the event, so a repeated POST changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from app.http1 import AiohttpClient, HttpClient, HttpError

logger = logging.getLogger(__name__)

MAX_INPUTS_PER_REQUEST = 128
RETRIABLE_HTTP_STATUSES = frozenset({408, 425, 429})
# Clarifai status codes that mean "this input id is already there".
ALREADY_PRESENT_CODES = frozenset({30100, 40010})
SUCCESS = 10000
MIXED_STATUS = 10010
# Per-input codes of a mixed response that count as delivered: already present,
# success, and Clarifai's INPUT_DOWNLOAD_SUCCESS and INPUT_DOWNLOAD_PENDING.
PRESENT_OR_SUCCESS_CODES = ALREADY_PRESENT_CODES | {SUCCESS, 30000, 30001}


class DeliveryError(Exception):
    """A POST /inputs failed; `retriable` tells whether trying again may help."""

    def __init__(
        self,
        message: str,
        retriable: bool,
        http_status: int | None = None,
        retry_after_s: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.retriable = retriable
        self.http_status = http_status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    posted: int
    already_present: int
    attempts: int
    latency_s: float
    # The ids of the inputs that the destination already held, as far as its
    # response names them: the deliverer's funnel counts them per collector.
    present_ids: frozenset[str] = frozenset()


class Destination:
    """Posts inputs to one base URL through a shared HTTP connection pool."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 10.0,
        give_up_s: float = 120.0,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 10.0,
        max_in_flight: int = 16,
        http_client: str = "lean",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.give_up_s = give_up_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self._in_flight = asyncio.Semaphore(max_in_flight)
        client_class = AiohttpClient if http_client == "aiohttp" else HttpClient
        self._http: HttpClient | AiohttpClient = client_class(
            self.base_url, connect_timeout_s=min(timeout_s, 3.0)
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post_inputs(
        self,
        user_id: str,
        app_id: str,
        key: str,
        inputs: Sequence[dict[str, Any]],
        give_up_s: float | None = None,
    ) -> DeliveryResult:
        """Post all inputs, in requests of at most 128; raise DeliveryError when a
        request fails for good or retries run out of time (`give_up_s`, by default
        the client's)."""
        posted = attempts = 0
        present_ids: set[str] = set()
        started = time.monotonic()
        for start in range(0, len(inputs), MAX_INPUTS_PER_REQUEST):
            chunk = inputs[start : start + MAX_INPUTS_PER_REQUEST]
            chunk_posted, chunk_present, chunk_attempts = await self._post_with_retries(
                user_id, app_id, key, chunk, give_up_s or self.give_up_s
            )
            posted += chunk_posted
            present_ids.update(chunk_present)
            attempts += chunk_attempts
        return DeliveryResult(
            posted,
            len(present_ids),
            attempts,
            time.monotonic() - started,
            frozenset(present_ids),
        )

    async def _post_with_retries(
        self,
        user_id: str,
        app_id: str,
        key: str,
        chunk: Sequence[dict[str, Any]],
        give_up_s: float,
    ) -> tuple[int, set[str], int]:
        deadline = time.monotonic() + give_up_s
        attempt = 0
        while True:
            attempt += 1
            try:
                posted, present = await self._post_once(user_id, app_id, key, chunk)
                return posted, present, attempt
            except DeliveryError as error:
                delay = self._backoff_s(attempt, error)
                if not error.retriable or time.monotonic() + delay > deadline:
                    raise DeliveryError(
                        f"{error} (after {attempt} attempts)",
                        error.retriable,
                        error.http_status,
                        attempts=attempt,
                    ) from error
                logger.warning(
                    "POST /inputs to %s/%s failed (attempt %d), retrying in %.2f s: %s",
                    user_id,
                    app_id,
                    attempt,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)

    def _backoff_s(self, attempt: int, error: DeliveryError) -> float:
        if error.retry_after_s is not None:
            return min(error.retry_after_s, self.backoff_max_s * 3)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)

    async def _post_once(
        self, user_id: str, app_id: str, key: str, chunk: Sequence[dict[str, Any]]
    ) -> tuple[int, set[str]]:
        path = f"/v2/users/{user_id}/apps/{app_id}/inputs"
        url = self.base_url + path
        body = orjson.dumps({"inputs": list(chunk)})
        headers = {"Authorization": f"Key {key}", "Content-Type": "application/json"}
        try:
            async with self._in_flight:
                response = await self._http.post(path, headers, body, self.timeout_s)
        except TimeoutError as error:
            raise DeliveryError(
                f"timed out posting to {url} after {self.timeout_s} s", retriable=True
            ) from error
        except HttpError as error:
            raise DeliveryError(
                f"cannot reach {url}: {error}", retriable=True
            ) from error
        return _interpret(
            response.status,
            response.reason,
            response.headers.get("retry-after"),
            response.body,
            url,
            chunk,
        )


def _interpret(
    http_status: int,
    reason: str,
    retry_after: str | None,
    content: bytes,
    url: str,
    chunk: Sequence[dict[str, Any]],
) -> tuple[int, set[str]]:
    """Return the number of inputs posted and the ids of those already present for
    a response, or raise DeliveryError."""
    document = _json_object(content)
    status, items = _status_and_items(document)
    code = status.get("code")
    description = status.get("description") or reason

    if 200 <= http_status < 300 and document is None:
        # A proxy's or a web server's page, not the API: the inputs may not be
        # stored, so they are not counted as delivered.
        raise DeliveryError(
            f"POST {url} returned HTTP {http_status} with a body that is not a JSON "
            "object; check that COLLECTORS_DESTINATION_URL is a Clarifai-compatible "
            "API",
            retriable=False,
            http_status=http_status,
        )
    if 200 <= http_status < 300 and code in (SUCCESS, None):
        return _count_inputs(items, chunk)
    if code in ALREADY_PRESENT_CODES or _all_have(items, ALREADY_PRESENT_CODES):
        if not items:
            return 0, {str(posted["id"]) for posted in chunk}
        return 0, _ids(items, range(len(items)), chunk)
    if code == MIXED_STATUS and _all_have(items, PRESENT_OR_SUCCESS_CODES):
        return _count_inputs(items, chunk)

    message = f"POST {url} returned HTTP {http_status}, status {code}: {description}"
    retriable = http_status >= 500 or http_status in RETRIABLE_HTTP_STATUSES
    raise DeliveryError(
        message,
        retriable=retriable,
        http_status=http_status,
        retry_after_s=_retry_after_s(retry_after),
    )


def _json_object(content: bytes) -> dict[str, Any] | None:
    """Return the response body as a JSON object, or None when it is not one."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _status_and_items(
    document: dict[str, Any] | None,
) -> tuple[dict[str, Any], list[Any]]:
    """Return a response's status object and its inputs, each empty when missing
    or of another type."""
    if document is None:
        return {}, []
    status = document.get("status")
    items = document.get("inputs")
    return (
        status if isinstance(status, dict) else {},
        items if isinstance(items, list) else [],
    )


def _item_code(item: Any) -> Any:
    status = item.get("status") if isinstance(item, dict) else None
    return status.get("code") if isinstance(status, dict) else None


def _count_inputs(
    items: list[Any], chunk: Sequence[dict[str, Any]]
) -> tuple[int, set[str]]:
    """Count a delivered request's inputs: those that the response names as
    already present, and the rest of the request as posted, also when the
    response lists fewer inputs or none."""
    present = [
        index
        for index, item in enumerate(items)
        if _item_code(item) in ALREADY_PRESENT_CODES
    ]
    present_ids = _ids(items, present, chunk)
    return max(0, len(chunk) - len(present_ids)), present_ids


def _ids(
    items: list[Any], indexes: Sequence[int], chunk: Sequence[dict[str, Any]]
) -> set[str]:
    """Return the ids of the response's inputs at `indexes`. The response lists the
    inputs in the order of the request, so an input without an id takes that of
    the posted input at its position."""
    ids = set()
    for index in indexes:
        item = items[index]
        if isinstance(item, dict) and item.get("id"):
            ids.add(str(item["id"]))
        elif index < len(chunk):
            ids.add(str(chunk[index]["id"]))
    return ids


def _all_have(items: list[Any], codes: frozenset[int]) -> bool:
    return bool(items) and all(_item_code(item) in codes for item in items)


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
