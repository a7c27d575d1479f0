"""Reading and validating operator parameters from a workflow node's `model`.

Every check raises RuleConfigError with the path of the value relative to the node's
`model`, for example `output_info.params.threshold`. The workflow compiler adds the
`nodes[i].model` prefix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rules.errors import RuleConfigError

_MAX_DESCRIBED_CHARS = 80


def describe(value: Any) -> str:
    """Format a configuration value as JSON for an error message, cut at 80 chars."""
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > _MAX_DESCRIBED_CHARS:
        text = text[: _MAX_DESCRIBED_CHARS - 3] + "..."
    return text


def invalid(path: str, expected: str, value: Any) -> RuleConfigError:
    """Build the error for a value that is present but invalid."""
    return RuleConfigError(path, f"expected {expected}, got {describe(value)}")


def missing(path: str, expected: str) -> RuleConfigError:
    """Build the error for a required value that is absent."""
    return RuleConfigError(path, f"expected {expected}, but the value is missing")


def is_number(value: Any) -> bool:
    """Return whether a JSON value is a finite number (JSON booleans are not)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def optional_object(
    container: Mapping[str, Any], key: str, path: str
) -> dict[str, Any]:
    """Return `container[key]` when it is a JSON object, `{}` when absent or null."""
    value = container.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(path, "an object", value)
    return value


def model_params(model: Mapping[str, Any]) -> dict[str, Any]:
    """Return `model.output_info.params`, `{}` when absent."""
    output_info = optional_object(model, "output_info", "output_info")
    return optional_object(output_info, "params", "output_info.params")


def param_path(name: str) -> str:
    """Return the path of a parameter relative to the node's model."""
    return "output_info.params." + name


def required_fraction(
    params: Mapping[str, Any],
    name: str,
    *,
    low_inclusive: bool,
) -> float:
    """Return a required number in [0, 1], or in (0, 1] unless low_inclusive."""
    expected = "a number in [0, 1]" if low_inclusive else "a number in (0, 1]"
    path = param_path(name)
    if name not in params or params[name] is None:
        raise missing(path, expected)
    value = params[name]
    if not is_number(value):
        raise invalid(path, expected, value)
    too_low = value < 0 if low_inclusive else value <= 0
    if too_low or value > 1:
        raise invalid(path, expected, value)
    return float(value)
