"""Operator types whose decision needs state shared by every worker: quotas and
dedupe.

The pure workflow engine treats these nodes as pass-through and only validates their
parameters here. The deliver agent applies them (agents/stateful.py) to the inputs
that the rest of the collector's workflows passed, right before posting, in node
order, with Redis as the shared state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rules.context import Data, EvalContext, Operator
from rules.params import invalid, is_number, model_params, param_path

WINDOWS_S = {"minute": 60, "hour": 3600, "day": 86400}
DEFAULT_DEDUPE_WINDOW_S = 30 * 86400


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """At most `max_inputs` inputs per sliding `window_s`, per concept when
    `per_concept` (keyed by the output's top concept)."""

    node_id: str
    max_inputs: int
    window_s: int
    per_concept: bool


@dataclass(frozen=True, slots=True)
class DedupeRule:
    """Skip an input whose fingerprint was collected within `window_s`; `by` is
    `url` (the image or text URL) or `content` (a hash of the image bytes or text)."""

    node_id: str
    by: str
    window_s: int


StatefulRule = QuotaRule | DedupeRule


def pass_through(data: Data, context: EvalContext) -> Data:
    return data


def parse_quota(model: dict[str, Any], node_id: str) -> QuotaRule:
    params = model_params(model)
    max_inputs = params.get("max_inputs")
    if not is_number(max_inputs) or int(max_inputs) != max_inputs or max_inputs < 1:
        raise invalid(
            param_path("max_inputs"), "a whole number of at least 1", max_inputs
        )
    window = params.get("window", "hour")
    if window not in WINDOWS_S:
        raise invalid(param_path("window"), "minute, hour or day", window)
    per_concept = params.get("per_concept", False)
    if not isinstance(per_concept, bool):
        raise invalid(param_path("per_concept"), "true or false", per_concept)
    return QuotaRule(node_id, int(max_inputs), WINDOWS_S[window], per_concept)


def parse_dedupe(model: dict[str, Any], node_id: str) -> DedupeRule:
    params = model_params(model)
    by = params.get("by", "url")
    if by not in ("url", "content"):
        raise invalid(param_path("by"), "url or content", by)
    window_s = params.get("window_s", DEFAULT_DEDUPE_WINDOW_S)
    if not is_number(window_s) or window_s < 1:
        raise invalid(
            param_path("window_s"), "a number of seconds of at least 1", window_s
        )
    return DedupeRule(node_id, by, int(window_s))


def compile_quota(model: dict[str, Any], node_id: str) -> Operator:
    parse_quota(model, node_id)
    return pass_through


def compile_dedupe(model: dict[str, Any], node_id: str) -> Operator:
    parse_dedupe(model, node_id)
    return pass_through


STATEFUL_TYPES = {"quota": parse_quota, "dedupe": parse_dedupe}


def stateful_rules(nodes: Any) -> list[StatefulRule]:
    """Return the quota and dedupe rules of a workflow's node dicts, in node order."""
    rules: list[StatefulRule] = []
    for node in nodes:
        model = node.get("model") or {}
        parse = STATEFUL_TYPES.get(model.get("model_type_id", ""))
        if parse is not None:
            rules.append(parse(model, node["id"]))
    return rules
