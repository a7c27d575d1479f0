"""Operator models by Clarifai `model_type_id`, compiled once per workflow node.

Each factory in OPERATORS takes the node's `model` dict and the node id, validates
`model.output_info` once and returns an Operator, a function from the node's input
data and the EvalContext to its output data. Invalid parameters raise
RuleConfigError with the parameter's path.

Clarifai documents random-sample, concept-thresholder, concept-synonym-mapper and
annotation-writer. max-probability-below, min-probability-above, metadata-filter,
sticky-sample, margin-below, entropy-above, least-confidence-above, quota and dedupe
are this service's own types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from rules.concepts import compile_concept_synonym_mapper, compile_concept_thresholder
from rules.context import Data, EvalContext, Operator, context_free
from rules.errors import RemoteOutputMissingError, RuleConfigError
from rules.metadata import compile_metadata_filter
from rules.params import (
    invalid,
    missing,
    model_params,
    param_path,
    required_fraction,
)
from rules.sampling import sample_fraction
from rules.stateful import compile_dedupe, compile_quota
from rules.uncertainty import (
    compile_entropy_above,
    compile_least_confidence_above,
    compile_margin_below,
    compile_sticky_sample,
)

__all__ = [
    "OPERATORS",
    "OperatorFactory",
    "RuleConfigError",
    "compile_operator",
    "is_remote_model",
]

OperatorFactory = Callable[[dict[str, Any], str], Operator]


def pass_through(data: Data, context: EvalContext) -> Data:
    """Return the input data unchanged."""
    return data


def compile_random_sample(model: dict[str, Any], node_id: str) -> Operator:
    """Compile a random-sample node (param `keep_fraction` in (0, 1]).

    The operator keeps the data when
    `sample_fraction(context.seed_key + "/" + node_id) < keep_fraction`, so the
    decision is the same every time for the same seed key and node.
    """
    keep_fraction = required_fraction(
        model_params(model), "keep_fraction", low_inclusive=False
    )
    if keep_fraction >= 1.0:
        return pass_through
    seed_suffix = "/" + node_id

    def random_sample(data: Data, context: EvalContext) -> Data:
        if sample_fraction(context.seed_key + seed_suffix) < keep_fraction:
            return data
        return {}

    return random_sample


def compile_max_probability_below(model: dict[str, Any], node_id: str) -> Operator:
    """Compile a max-probability-below node (param `threshold` in [0, 1]).

    The operator passes the data unchanged when every concept value is strictly
    below the threshold (the model is unsure), and returns empty data when a value
    reaches it or when there are no concepts.
    """
    threshold = required_fraction(model_params(model), "threshold", low_inclusive=True)

    def max_probability_below(data: Data, context: EvalContext) -> Data:
        concepts = data.get("concepts")
        if not concepts:
            return {}
        for concept in concepts:
            if concept.get("value", 0.0) >= threshold:
                return {}
        return data

    return context_free(
        max_probability_below, native_rule=("max-probability-below", threshold)
    )


def compile_min_probability_above(model: dict[str, Any], node_id: str) -> Operator:
    """Compile a min-probability-above node (param `threshold` in [0, 1]).

    The operator passes the data unchanged when every concept value is strictly
    above the threshold, and returns empty data when a value is at or below it or
    when there are no concepts.
    """
    threshold = required_fraction(model_params(model), "threshold", low_inclusive=True)

    def min_probability_above(data: Data, context: EvalContext) -> Data:
        concepts = data.get("concepts")
        if not concepts:
            return {}
        for concept in concepts:
            if concept.get("value", 0.0) <= threshold:
                return {}
        return data

    return context_free(
        min_probability_above, native_rule=("min-probability-above", threshold)
    )


# Clarifai status codes ANNOTATION_SUCCESS and ANNOTATION_PENDING (status_code.proto).
_ANNOTATION_STATUSES = {24150, 24151, "ANNOTATION_SUCCESS", "ANNOTATION_PENDING"}


def compile_annotation_writer(model: dict[str, Any], node_id: str) -> Operator:
    """Compile an annotation-writer node, which passes its data unchanged.

    The service writes the concepts as annotations itself when a collector sets
    `collect_outputs`, so the operator only validates `annotation_status`
    (24150 ANNOTATION_SUCCESS or 24151 ANNOTATION_PENDING) and `annotation_user_id`.
    """
    params = model_params(model)
    status = params.get("annotation_status")
    valid_type = isinstance(status, int | str) and not isinstance(status, bool)
    if status is not None and not (valid_type and status in _ANNOTATION_STATUSES):
        raise invalid(
            param_path("annotation_status"),
            "24150 ANNOTATION_SUCCESS or 24151 ANNOTATION_PENDING",
            status,
        )
    user_id = params.get("annotation_user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise invalid(param_path("annotation_user_id"), "a user id string", user_id)
    return pass_through


OPERATORS: Mapping[str, OperatorFactory] = MappingProxyType(
    {
        "random-sample": compile_random_sample,
        "concept-thresholder": compile_concept_thresholder,
        "concept-synonym-mapper": compile_concept_synonym_mapper,
        "annotation-writer": compile_annotation_writer,
        "max-probability-below": compile_max_probability_below,
        "min-probability-above": compile_min_probability_above,
        "metadata-filter": compile_metadata_filter,
        "sticky-sample": compile_sticky_sample,
        "margin-below": compile_margin_below,
        "entropy-above": compile_entropy_above,
        "least-confidence-above": compile_least_confidence_above,
        "quota": compile_quota,
        "dedupe": compile_dedupe,
    }
)
"""Operator factories by `model_type_id`."""


def is_remote_model(model: Mapping[str, Any]) -> bool:
    """Return whether the model is served over HTTP (`output_info.params.base_url`)."""
    output_info = model.get("output_info")
    params = output_info.get("params") if isinstance(output_info, dict) else None
    return isinstance(params, dict) and params.get("base_url") not in (None, "")


def compile_remote_model(model: dict[str, Any], node_id: str) -> Operator:
    """Compile a node whose model is served elsewhere over HTTP.

    The engine does no I/O, so the operator returns the output that the caller
    stored in `context.remote_outputs[node_id]`, and raises
    RemoteOutputMissingError when it is missing.
    """
    base_url = model_params(model).get("base_url")
    expected = "an http or https URL"
    if not isinstance(base_url, str):
        raise invalid(param_path("base_url"), expected, base_url)
    try:
        url = urlsplit(base_url)
    except ValueError:
        raise invalid(param_path("base_url"), expected, base_url) from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise invalid(param_path("base_url"), expected, base_url)

    def remote_output(data: Data, context: EvalContext) -> Data:
        output = context.remote_outputs.get(node_id)
        if output is None:
            raise RemoteOutputMissingError(node_id)
        return output

    return remote_output


def compile_operator(model: Any, node_id: str) -> Operator:
    """Compile a workflow node's `model` into an Operator.

    A model with `output_info.params.base_url` is a remote model (see
    compile_remote_model), whatever its `model_type_id`. Error paths are relative to
    the model, for example `model_type_id`.
    """
    if not isinstance(model, dict):
        raise invalid("", "a model object", model)
    if is_remote_model(model):
        return compile_remote_model(model, node_id)
    model_type_id = model.get("model_type_id")
    expected = "one of " + ", ".join(sorted(OPERATORS))
    if model_type_id is None:
        raise missing("model_type_id", expected)
    factory = OPERATORS.get(model_type_id) if isinstance(model_type_id, str) else None
    if factory is None:
        raise invalid("model_type_id", expected, model_type_id)
    return factory(model, node_id)
