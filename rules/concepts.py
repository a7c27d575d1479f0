"""Operators on predicted concepts: concept-thresholder and concept-synonym-mapper.

A concept without `value` counts as 0.0, because proto3 JSON omits default values.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from rules.context import Data, EvalContext, Operator, Relation, context_free
from rules.errors import RuleConfigError
from rules.params import (
    describe,
    invalid,
    is_number,
    model_params,
    optional_object,
    param_path,
)

Comparator = Callable[[float, float], bool]

EQUAL_ABS_TOLERANCE = 1e-9
"""EQUAL keeps a concept when `math.isclose(value, threshold, abs_tol=1e-9)`, because
probabilities that went through float32 and JSON rarely match a threshold exactly."""


def _is_equal(value: float, threshold: float) -> bool:
    return math.isclose(value, threshold, abs_tol=EQUAL_ABS_TOLERANCE)


# Clarifai's ValueComparator enum (resources.proto). CONCEPT_THRESHOLD_NOT_SET (0)
# means the default, GREATER_THAN.
_COMPARATOR_NAMES: dict[int, str] = {
    1: "GREATER_THAN",
    2: "GREATER_THAN_OR_EQUAL",
    3: "LESS_THAN",
    4: "LESS_THAN_OR_EQUAL",
    5: "EQUAL",
}
_COMPARATORS: dict[str, Comparator] = {
    "GREATER_THAN": operator.gt,
    "GREATER_THAN_OR_EQUAL": operator.ge,
    "LESS_THAN": operator.lt,
    "LESS_THAN_OR_EQUAL": operator.le,
    "EQUAL": _is_equal,
}
# The comparators' codes in the C extension agents._stage_one.
_COMPARATOR_CODES: dict[Comparator, int] = {
    _COMPARATORS[name]: code for code, name in _COMPARATOR_NAMES.items()
}
_DEFAULT_COMPARATOR_NAME = "GREATER_THAN"
_NOT_SET_NAME = "CONCEPT_THRESHOLD_NOT_SET"
_COMPARATOR_EXPECTED = (
    "one of 1 GREATER_THAN, 2 GREATER_THAN_OR_EQUAL, 3 LESS_THAN,"
    " 4 LESS_THAN_OR_EQUAL, 5 EQUAL (the number or the name)"
)


def _parse_comparator(params: Mapping[str, Any]) -> Comparator:
    value = params.get("concept_threshold_type")
    if value is None:
        return _COMPARATORS[_DEFAULT_COMPARATOR_NAME]
    name: str | None = None
    if isinstance(value, bool):
        name = None
    elif isinstance(value, int):
        name = _DEFAULT_COMPARATOR_NAME if value == 0 else _COMPARATOR_NAMES.get(value)
    elif isinstance(value, str):
        name = _DEFAULT_COMPARATOR_NAME if value == _NOT_SET_NAME else value
    comparator = _COMPARATORS.get(name) if name is not None else None
    if comparator is None:
        raise invalid(param_path("concept_threshold_type"), _COMPARATOR_EXPECTED, value)
    return comparator


def _parse_thresholds(model: Mapping[str, Any]) -> dict[str, float]:
    """Return the threshold of each concept id (or name, for entries without id)."""
    output_info = optional_object(model, "output_info", "output_info")
    data = optional_object(output_info, "data", "output_info.data")
    path = "output_info.data.concepts"
    concepts = data.get("concepts")
    expected = "a non-empty list of concepts {id, value}"
    if concepts is None:
        raise RuleConfigError(path, f"expected {expected}, but the value is missing")
    if not isinstance(concepts, list) or not concepts:
        raise invalid(path, expected, concepts)

    thresholds: dict[str, float] = {}
    for index, concept in enumerate(concepts):
        item_path = f"{path}[{index}]"
        if not isinstance(concept, dict):
            raise invalid(item_path, "a concept {id, value}", concept)
        key = concept.get("id") or concept.get("name")
        if not isinstance(key, str) or not key:
            raise invalid(item_path + ".id", "a non-empty concept id", key)
        if key in thresholds:
            raise RuleConfigError(
                item_path + ".id", f"duplicate threshold for concept {describe(key)}"
            )
        value = concept.get("value", 0.0)
        if not is_number(value):
            raise invalid(item_path + ".value", "a finite number", value)
        thresholds[key] = float(value)
    return thresholds


def compile_concept_thresholder(model: dict[str, Any], node_id: str) -> Operator:
    """Compile a concept-thresholder node.

    The operator keeps the input concepts that have a threshold and whose value
    compares true against it. It looks a concept's threshold up by concept id, then
    by name. Concepts without a threshold are dropped, and the output is empty when
    no concept remains. The other data fields pass unchanged.
    """
    compare = _parse_comparator(model_params(model))
    thresholds = _parse_thresholds(model)

    def threshold_concepts(data: Data, context: EvalContext) -> Data:
        concepts = data.get("concepts")
        if not concepts:
            return {}
        kept_concepts = []
        for concept in concepts:
            threshold = thresholds.get(concept.get("id"))
            if threshold is None:
                threshold = thresholds.get(concept.get("name"))
            if threshold is not None and compare(concept.get("value", 0.0), threshold):
                kept_concepts.append(concept)
        if not kept_concepts:
            return {}
        if len(kept_concepts) == len(concepts):
            return data
        return {**data, "concepts": kept_concepts}

    def passes(data: Data) -> bool:
        # Whether threshold_concepts keeps any concept, stopping at the first.
        for concept in data.get("concepts") or ():
            threshold = thresholds.get(concept.get("id"))
            if threshold is None:
                threshold = thresholds.get(concept.get("name"))
            if threshold is not None and compare(concept.get("value", 0.0), threshold):
                return True
        return False

    native_rule = ("concept-thresholder", _COMPARATOR_CODES[compare], thresholds)
    return context_free(threshold_concepts, passes, native_rule)


class ConceptGraph:
    """Directed "maps to" edges between concept ids, built from concept relations.

    `A synonym B` adds A -> B and B -> A. `A hyponym B` (A is a kind of B) adds
    A -> B, and `A hypernym B` (A is more general than B) adds B -> A. Relations
    with another predicate, another knowledge graph or without concept ids are
    skipped.
    """

    __slots__ = ("_edges", "_reached", "names")

    def __init__(
        self, relations: tuple[Relation, ...], knowledge_graph_id: str
    ) -> None:
        self._edges: dict[str, list[str]] = {}
        self._reached: dict[str, tuple[str, ...]] = {}
        self.names: dict[str, str] = {}
        for relation in relations:
            if (relation.get("knowledge_graph_id") or "") != knowledge_graph_id:
                continue
            subject_id = self._concept_id(relation.get("subject_concept"))
            object_id = self._concept_id(relation.get("object_concept"))
            if subject_id is None or object_id is None:
                continue
            predicate = relation.get("predicate")
            if predicate == "synonym":
                self._add_edge(subject_id, object_id)
                self._add_edge(object_id, subject_id)
            elif predicate == "hyponym":
                self._add_edge(subject_id, object_id)
            elif predicate == "hypernym":
                self._add_edge(object_id, subject_id)

    def _concept_id(self, concept: Any) -> str | None:
        if not isinstance(concept, Mapping):
            return None
        concept_id = concept.get("id")
        if not isinstance(concept_id, str) or not concept_id:
            return None
        name = concept.get("name")
        if isinstance(name, str) and name:
            self.names.setdefault(concept_id, name)
        return concept_id

    def _add_edge(self, source: str, target: str) -> None:
        targets = self._edges.setdefault(source, [])
        if target not in targets:
            targets.append(target)

    def __bool__(self) -> bool:
        return bool(self._edges)

    def reached_from(self, concept_id: str) -> tuple[str, ...]:
        """Return the concepts reachable from `concept_id` by one or more edges.

        The start concept itself is left out, even when a cycle leads back to it.
        Results are cached per concept.
        """
        if concept_id not in self._edges:
            return ()
        reached = self._reached.get(concept_id)
        if reached is not None:
            return reached
        seen = {concept_id}
        order: list[str] = []
        stack = list(reversed(self._edges[concept_id]))
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            order.append(current)
            stack.extend(reversed(self._edges.get(current, ())))
        reached = tuple(order)
        self._reached[concept_id] = reached
        return reached


_GRAPH_CACHE_SIZE = 8


def compile_concept_synonym_mapper(model: dict[str, Any], node_id: str) -> Operator:
    """Compile a concept-synonym-mapper node.

    The operator replaces the input concepts with the concepts they reach in the
    knowledge graph (see ConceptGraph). An input concept also appears in the output
    only when another input concept reaches it. Each output concept gets the max
    value of the input concepts that reach it, or its own predicted value when that
    is larger, and the name from the relations or the input when one is known.
    Concepts are sorted by value, highest first, then by id. The output is empty
    when no concept is reached, and the other data fields pass unchanged.

    `knowledge_graph_id` selects the relations whose `knowledge_graph_id` equals it.
    The default "" is the app's graph, which contains relations without the field.
    """
    params = model_params(model)
    knowledge_graph_id = params.get("knowledge_graph_id") or ""
    if not isinstance(knowledge_graph_id, str):
        raise invalid(
            param_path("knowledge_graph_id"),
            'a knowledge graph id string ("" for the app\'s graph)',
            knowledge_graph_id,
        )

    # Relations tuples are immutable and replaced as a whole when they change, so the
    # tuple's identity is its version. Each entry keeps its tuple alive, which stops
    # Python from reusing the id for another tuple while the entry exists.
    graphs: dict[int, tuple[tuple[Relation, ...], ConceptGraph]] = {}

    def graph_for(relations: tuple[Relation, ...]) -> ConceptGraph:
        entry = graphs.get(id(relations))
        if entry is not None and entry[0] is relations:
            return entry[1]
        graph = ConceptGraph(relations, knowledge_graph_id)
        if len(graphs) >= _GRAPH_CACHE_SIZE:
            del graphs[next(iter(graphs))]
        graphs[id(relations)] = (relations, graph)
        return graph

    def map_concepts(data: Data, context: EvalContext) -> Data:
        concepts = data.get("concepts")
        if not concepts:
            return {}
        graph = graph_for(context.relations)
        if not graph:
            return {}

        reached_values: dict[str, float] = {}
        predicted_values: dict[str, float] = {}
        predicted_names: dict[str, str] = {}
        for concept in concepts:
            concept_id = concept.get("id") or concept.get("name")
            if not concept_id:
                continue
            value = concept.get("value", 0.0)
            previous = predicted_values.get(concept_id)
            if previous is None or value > previous:
                predicted_values[concept_id] = value
            name = concept.get("name")
            if name:
                predicted_names.setdefault(concept_id, name)
            for target in graph.reached_from(concept_id):
                previous = reached_values.get(target)
                if previous is None or value > previous:
                    reached_values[target] = value
        if not reached_values:
            return {}

        mapped = []
        for target, value in reached_values.items():
            own_value = predicted_values.get(target)
            if own_value is not None and own_value > value:
                value = own_value
            concept = {"id": target, "value": value}
            name = graph.names.get(target) or predicted_names.get(target)
            if name:
                concept["name"] = name
            mapped.append(concept)
        mapped.sort(key=_value_then_id)
        return {**data, "concepts": mapped}

    return map_concepts


def _value_then_id(concept: dict[str, Any]) -> tuple[float, str]:
    return (-concept["value"], concept["id"])
