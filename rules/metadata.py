"""The metadata-filter operator, a type of this service (Clarifai documents none).

It reads the metadata of the Input in the EvalContext (`input.data.metadata`), not
the node's input data, so it works the same in pre-queue workflows (whose data are
the predicted concepts) and in post-queue workflows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules.context import Data, EvalContext, Operator
from rules.errors import RuleConfigError
from rules.params import invalid, model_params, param_path

_KEYS_EXPECTED = 'a list of dotted key paths such as "camera.site"'


def _parse_keys(params: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    keys = params.get("keys")
    if keys is None:
        return ()
    path = param_path("keys")
    if not isinstance(keys, list):
        raise invalid(path, _KEYS_EXPECTED, keys)
    parsed = []
    for index, key in enumerate(keys):
        if not isinstance(key, str) or not all(key.split(".")):
            raise invalid(f"{path}[{index}]", _KEYS_EXPECTED, key)
        parsed.append(tuple(key.split(".")))
    return tuple(parsed)


def compile_metadata_filter(model: dict[str, Any], node_id: str) -> Operator:
    """Compile a metadata-filter node.

    Params: `metadata`, a JSON object that the input's metadata must contain (see
    metadata_contains), and `keys`, dotted paths that must exist in it (a path
    cannot address a key that contains a dot, nor a list element). At least one of
    the two must be non-empty. The operator passes its data unchanged when the
    metadata match, and returns empty data otherwise.
    """
    params = model_params(model)
    expected = params.get("metadata")
    if expected is not None and not isinstance(expected, dict):
        raise invalid(param_path("metadata"), "a JSON object", expected)
    key_paths = _parse_keys(params)
    if not expected and not key_paths:
        raise RuleConfigError(
            "output_info.params",
            "expected a non-empty `metadata` object or a non-empty `keys` list,"
            " got neither",
        )

    def filter_metadata(data: Data, context: EvalContext) -> Data:
        metadata = input_metadata(context.input)
        for key_path in key_paths:
            if not has_key_path(metadata, key_path):
                return {}
        if expected and not metadata_contains(expected, metadata):
            return {}
        return data

    return filter_metadata


def input_metadata(input_: Mapping[str, Any]) -> dict[str, Any]:
    """Return `input.data.metadata`, `{}` when it is missing or not an object."""
    data = input_.get("data")
    metadata = data.get("metadata") if isinstance(data, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def has_key_path(metadata: dict[str, Any], key_path: tuple[str, ...]) -> bool:
    """Return whether nested objects contain each key of the path in turn."""
    current: Any = metadata
    for key in key_path:
        if not isinstance(current, dict) or key not in current:
            return False
        current = current[key]
    return True


def metadata_contains(expected: Any, actual: Any) -> bool:
    """Return whether the JSON value `actual` contains `expected`.

    Objects match when every expected key is present and its value matches
    recursively, so an expected object is a subset. An expected list matches a list
    that contains a match for each expected element. An expected scalar matches an
    equal scalar, or a list with an equal element. Scalars compare as JSON values:
    1 equals 1.0, but true never equals 1.
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        for key, expected_value in expected.items():
            if key not in actual or not metadata_contains(expected_value, actual[key]):
                return False
        return True
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return False
        return all(
            any(_element_matches(element, item) for item in actual)
            for element in expected
        )
    if isinstance(actual, list):
        return any(_scalars_equal(expected, item) for item in actual)
    return _scalars_equal(expected, actual)


def _element_matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict | list):
        return metadata_contains(expected, actual)
    return _scalars_equal(expected, actual)


def _scalars_equal(expected: Any, actual: Any) -> bool:
    # Python's True == 1, but JSON booleans and numbers are different types.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(actual, dict | list):
        return False
    return bool(expected == actual)
