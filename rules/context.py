"""Data types shared by the operators and the workflow engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

Data = dict[str, Any]
"""A Clarifai `Data` message as decoded JSON, with snake_case field names.

For example `{"concepts": [{"id": "cat", "name": "cat", "value": 0.9}],
"metadata": {...}}` or `{"image": {"url": "..."}, "metadata": {...}}`.
"""

Relation = Mapping[str, Any]
"""A Clarifai ConceptRelation as decoded JSON: `{"subject_concept": {"id", "name"},
"object_concept": {"id", "name"}, "predicate", "knowledge_graph_id"}`."""

_NO_REMOTE_OUTPUTS: Mapping[str, Data] = MappingProxyType({})


def _no_remote_outputs() -> Mapping[str, Data]:
    return _NO_REMOTE_OUTPUTS


@dataclass(frozen=True, slots=True)
class EvalContext:
    """Per-item state that operators may read besides their input data.

    Operators do not mutate the context or anything it refers to.
    """

    input: Mapping[str, Any]
    """The Clarifai Input the prediction was made on (`{"id", "data": {"image" |
    "text", "metadata", ...}}`). Metadata filters read `input["data"]["metadata"]`."""

    seed_key: str
    """Key for deterministic sampling, unique per collector and input. A
    random-sample node keeps the item when
    `sample_fraction(seed_key + "/" + node_id) < keep_fraction`, so the same key
    always gets the same decision."""

    relations: tuple[Relation, ...] = ()
    """Concept relations of the app's knowledge graphs, read by concept-synonym-mapper
    nodes. Pass the same tuple object for as long as the relations are unchanged,
    because mappers cache their precomputed mapping by the tuple's identity."""

    remote_outputs: Mapping[str, Data] = field(default_factory=_no_remote_outputs)
    """Output data of each remote model node (see `remote_nodes`), by node id,
    computed by the caller before the workflow runs."""

    collector_key: str = ""
    """`user/app/collector` of the collector the workflow runs for; sticky-sample
    nodes hash it with the chosen key value."""


Operator = Callable[[Data, EvalContext], Data]
"""Compiled node, a function from its input data and the context to its output data.

An empty output (no non-empty field) drops the item. Operators may return their
input object unchanged, so callers must not mutate outputs they did not create.
"""


# Attribute of an operator function that reads only its input data, never the
# EvalContext. Its value is a predicate on the input data: whether the operator's
# output has content. A workflow of one such node can then run as that predicate.
CONTEXT_FREE_ATTRIBUTE = "passes"

# The context given to operators that never read it.
NO_CONTEXT = EvalContext(input={}, seed_key="")

Predicate = Callable[[Data], bool]

# Attribute of a `passes` predicate that the C extension agents._stage_one can
# evaluate itself: a tuple naming the operator type and its parameters, read by
# `agents.routing._plan`.
NATIVE_RULE_ATTRIBUTE = "native_rule"


def context_free(
    operator: Operator,
    passes: Predicate | None = None,
    native_rule: tuple[Any, ...] | None = None,
) -> Operator:
    """Mark an operator that never reads its EvalContext, with `passes`, a faster
    equivalent of `has_content(operator(data, context))` for data with content,
    and optionally the `native_rule` that describes it to the C extension."""
    if passes is None:

        def passes(data: Data) -> bool:
            return any(operator(data, NO_CONTEXT).values())

    if native_rule is not None:
        setattr(passes, NATIVE_RULE_ATTRIBUTE, native_rule)
    setattr(operator, CONTEXT_FREE_ATTRIBUTE, passes)
    return operator
