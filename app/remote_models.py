"""Calls to operator models served over HTTP, and their keys at rest.

A workflow node whose `model.output_info.params.base_url` is set runs on a
Clarifai-compatible server: `POST {base_url}/v2/users/{user_id}/apps/{app_id}/models/
{model_id}/outputs` with `{"inputs": [input]}` and `Authorization: Key <api_key>`.
The API server and the worker both call these models through `predict_remote`.

The node's `output_info.params.api_key` is a credential for that server. Redis stores
it encrypted as `output_info.params.api_key_encrypted`, and `encrypt_node_keys` and
`decrypt_node_keys` convert between the two forms.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from app.security import SecretBox

logger = logging.getLogger(__name__)

SUCCESS = 10000
_RETRIABLE_HTTP_STATUSES = frozenset({408, 425, 429})


class RemoteModelError(Exception):
    """A remote model call failed; `retriable` is true when a retry may succeed."""

    def __init__(self, message: str, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


def url_allowed(base_url: str, allowed_urls: Iterable[str]) -> bool:
    """Return whether `base_url` is one of the allowed prefixes or lies below one.

    A prefix matches only up to a path boundary, so `http://models.internal` does not
    allow `http://models.internal.example.com`. Prefixes carry no trailing slash.
    """
    return any(
        base_url == prefix or base_url.startswith(prefix + "/")
        for prefix in allowed_urls
    )


def outputs_url(model: Mapping[str, Any]) -> str:
    """Return the PostModelOutputs URL of a remote node's model."""
    params = model.get("output_info", {}).get("params", {})
    base_url = str(params.get("base_url", "")).rstrip("/")
    model_id = quote(str(model.get("id", "")), safe="")
    user_id = str(model.get("user_id") or "")
    app_id = str(model.get("app_id") or "")
    if user_id and app_id:
        owner = f"/users/{quote(user_id, safe='')}/apps/{quote(app_id, safe='')}"
        return f"{base_url}/v2{owner}/models/{model_id}/outputs"
    # Without an owner the short path relies on an app key of the model's app.
    return f"{base_url}/v2/models/{model_id}/outputs"


async def predict_remote(
    client: httpx.AsyncClient,
    node_model: Mapping[str, Any],
    input_dict: Mapping[str, Any],
    timeout_s: float,
    *,
    allowed_urls: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Run a remote model on one input and return the output's `data`.

    `node_model` is the node's `model` with its plain `api_key`; `input_dict` is a
    Clarifai Input (`{id, data}`). When `allowed_urls` is given, a base URL outside
    it is rejected before any request. Raises RemoteModelError.
    """
    params = node_model.get("output_info", {}).get("params", {})
    base_url = str(params.get("base_url", "")).rstrip("/")
    if allowed_urls is not None and not url_allowed(base_url, allowed_urls):
        raise RemoteModelError(
            f"model base URL {base_url!r} is not in COLLECTORS_MODEL_URL_ALLOWLIST",
            retriable=False,
        )
    url = outputs_url(node_model)
    headers = {"Content-Type": "application/json"}
    if params.get("api_key"):
        headers["Authorization"] = f"Key {params['api_key']}"
    body = {
        "inputs": [{"id": input_dict.get("id", ""), "data": input_dict.get("data", {})}]
    }

    try:
        response = await client.post(url, json=body, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException as error:
        raise RemoteModelError(
            f"model {url} timed out after {timeout_s} s", retriable=True
        ) from error
    except httpx.HTTPError as error:
        raise RemoteModelError(
            f"model {url} request failed: {type(error).__name__}", retriable=True
        ) from error
    return _output_data(url, response)


def _output_data(url: str, response: httpx.Response) -> dict[str, Any]:
    retriable = (
        response.status_code in _RETRIABLE_HTTP_STATUSES or response.status_code >= 500
    )
    try:
        payload = response.json()
    except ValueError as error:
        raise RemoteModelError(
            f"model {url} returned HTTP {response.status_code} without JSON",
            retriable=retriable,
        ) from error
    status = payload.get("status", {}) if isinstance(payload, dict) else {}
    if response.status_code >= 400 or status.get("code") != SUCCESS:
        raise RemoteModelError(
            f"model {url} returned HTTP {response.status_code}, status"
            f" {status.get('code')}: {status.get('description', '')}",
            retriable=retriable,
        )
    outputs = payload.get("outputs") or []
    if not outputs or not isinstance(outputs[0], dict):
        raise RemoteModelError(f"model {url} returned no outputs", retriable=False)
    output = outputs[0]
    output_status = output.get("status") or {}
    if output_status.get("code", SUCCESS) != SUCCESS:
        raise RemoteModelError(
            f"model {url} output failed with status {output_status.get('code')}:"
            f" {output_status.get('description', '')}",
            retriable=False,
        )
    data = output.get("data") or {}
    return data if isinstance(data, dict) else {}


def encrypt_node_keys(workflow: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    """Return a copy of a workflow dict whose model keys are encrypted for storage."""
    sealed = copy.deepcopy(workflow)
    for params in _node_params(sealed):
        api_key = params.pop("api_key", None)
        if api_key:
            params["api_key_encrypted"] = box.encrypt(str(api_key))
    return sealed


def decrypt_node_keys(workflow: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    """Return a copy of a stored workflow dict with plain model keys.

    Raises ValueError when a key was encrypted under another secret.
    """
    opened = copy.deepcopy(workflow)
    for params in _node_params(opened):
        token = params.pop("api_key_encrypted", None)
        if token:
            params["api_key"] = box.decrypt(str(token))
    return opened


def strip_node_keys(workflow: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a workflow dict without model keys, plain or encrypted."""
    stripped = copy.deepcopy(workflow)
    for params in _node_params(stripped):
        params.pop("api_key", None)
        params.pop("api_key_encrypted", None)
    return stripped


def _node_params(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for node in workflow.get("nodes") or []:
        model = node.get("model") if isinstance(node, dict) else None
        output_info = model.get("output_info") if isinstance(model, dict) else None
        params = output_info.get("params") if isinstance(output_info, dict) else None
        if isinstance(params, dict):
            found.append(params)
    return found
