"""Operators that keep the outputs a model is least sure about, and sticky sampling.

Uncertainty scores over an output's concept values (the predicted probabilities):

- margin: the top value minus the second (the top value alone when there is one
  concept). `margin-below` keeps an output whose margin is strictly below the
  threshold.
- entropy: the Shannon entropy of the values normalised to sum to 1, divided by
  log(n) so that it lies in [0, 1] (1 when all n values are equal). One concept has
  entropy 0. `entropy-above` keeps an output whose entropy is strictly above the
  threshold.
- least confidence: 1 minus the top value. `least-confidence-above` keeps an output
  whose score is strictly above the threshold.

An output without concepts, or whose values sum to 0, is dropped by all three.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rules.context import Data, EvalContext, Operator, context_free
from rules.params import invalid, model_params, param_path, required_fraction
from rules.sampling import sample_fraction


def _values(data: Data) -> list[float]:
    return [float(concept.get("value", 0.0)) for concept in data.get("concepts") or ()]


def margin(values: list[float]) -> float:
    top = sorted(values, reverse=True)[:2]
    return top[0] - (top[1] if len(top) > 1 else 0.0)


def normalised_entropy(values: list[float]) -> float:
    total = sum(values)
    if len(values) < 2 or total <= 0:
        return 0.0
    # A share can underflow to 0.0 for a tiny value (5e-324), so the check is on
    # the share, not on the value.
    shares = [v / total for v in values]
    entropy = -sum(share * math.log(share) for share in shares if share > 0)
    return entropy / math.log(len(values))


def least_confidence(values: list[float]) -> float:
    return 1.0 - max(values)


def compile_margin_below(model: dict[str, Any], node_id: str) -> Operator:
    """Compile a margin-below node (param `threshold` in [0, 1])."""
    threshold = required_fraction(model_params(model), "threshold", low_inclusive=True)

    def margin_below(data: Data, context: EvalContext) -> Data:
        values = _values(data)
        return data if values and margin(values) < threshold else {}

    return context_free(margin_below)


def compile_entropy_above(model: dict[str, Any], node_id: str) -> Operator:
    """Compile an entropy-above node (param `threshold` in [0, 1])."""
    threshold = required_fraction(model_params(model), "threshold", low_inclusive=True)

    def entropy_above(data: Data, context: EvalContext) -> Data:
        values = _values(data)
        if not values or sum(values) <= 0:
            return {}
        return data if normalised_entropy(values) > threshold else {}

    return context_free(entropy_above)


def compile_least_confidence_above(model: dict[str, Any], node_id: str) -> Operator:
    """Compile a least-confidence-above node (param `threshold` in [0, 1])."""
    threshold = required_fraction(model_params(model), "threshold", low_inclusive=True)

    def least_confidence_above(data: Data, context: EvalContext) -> Data:
        values = _values(data)
        return data if values and least_confidence(values) > threshold else {}

    return context_free(least_confidence_above)


def metadata_value(input_document: Any, path: str) -> Any:
    """Return the value at a dotted path of the input's metadata (or `input.id` for
    the input id), or None when it is missing."""
    if path == "input.id":
        return input_document.get("id")
    value: Any = (input_document.get("data") or {}).get("metadata") or {}
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def sticky_fraction(collector_key: str, key_value: Any) -> float:
    """Return `sample_fraction(f"{collector}/{value}")` for a key value, with
    strings as they are and other JSON values in compact JSON."""
    if not isinstance(key_value, str):
        key_value = json.dumps(key_value, separators=(",", ":"), sort_keys=True)
    return sample_fraction(f"{collector_key}/{key_value}")


def compile_sticky_sample(model: dict[str, Any], node_id: str) -> Operator:
    """Compile a sticky-sample node: keeps all inputs with the same key value, or
    none of them.

    Params: `keep_fraction` in (0, 1]; `key`, a dotted path into the input's
    metadata such as `camera.id` (or `input.id`); `missing`, what to do with an input
    without the key: `drop` (the default) or `keep`.
    """
    params = model_params(model)
    keep_fraction = required_fraction(params, "keep_fraction", low_inclusive=False)
    key = params.get("key")
    if not isinstance(key, str) or not key.strip():
        raise invalid(param_path("key"), "a metadata path such as camera.id", key)
    on_missing = params.get("missing", "drop")
    if on_missing not in ("drop", "keep"):
        raise invalid(param_path("missing"), "drop or keep", on_missing)

    def sticky_sample(data: Data, context: EvalContext) -> Data:
        value = metadata_value(context.input, key)
        if value is None:
            return data if on_missing == "keep" else {}
        if sticky_fraction(context.collector_key, value) < keep_fraction:
            return data
        return {}

    return sticky_sample
