"""Workflow graphs: validation, compilation to a node order, and evaluation.

A node without `node_inputs` takes the workflow's input data. A node with several
takes the merge of its parents' outputs (see merge_outputs). A node whose input is
empty outputs empty data without running, so an item dropped by one node stays
dropped downstream. The workflow's result is the output of its leaf nodes (nodes no
other node takes input from) that are not suppressed, and the input passes when any
of them is non-empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rules.context import (
    CONTEXT_FREE_ATTRIBUTE,
    Data,
    EvalContext,
    Operator,
    Predicate,
)
from rules.errors import RuleConfigError
from rules.operators import compile_operator, is_remote_model
from rules.params import describe, invalid, missing


def has_content(data: Data) -> bool:
    """Return whether any field of the data is non-empty.

    Empty means proto3's default value: "", 0, false, null, [] or {}.
    """
    return any(data.values())


def merge_outputs(outputs: Sequence[Data]) -> Data:
    """Merge the outputs of a node's parents into its input.

    Empty outputs are ignored, the merge is empty when all are, and a single
    non-empty output is returned as it is. Otherwise concepts are de-duplicated by
    id (or name, without id), keeping the concept with the max value at the position
    where the id first appears. For every other field the first parent, in
    `node_inputs` order, with a non-empty value wins.
    """
    non_empty = [output for output in outputs if has_content(output)]
    if not non_empty:
        return {}
    if len(non_empty) == 1:
        return non_empty[0]

    merged: Data = {}
    concepts_by_key: dict[object, dict[str, Any]] = {}
    for output in non_empty:
        for field, value in output.items():
            if field == "concepts":
                for concept in value or ():
                    key = concept.get("id") or concept.get("name") or id(concept)
                    best = concepts_by_key.get(key)
                    if best is None or concept.get("value", 0.0) > best.get(
                        "value", 0.0
                    ):
                        concepts_by_key[key] = concept
            elif value and not merged.get(field):
                merged[field] = value
    if concepts_by_key:
        merged["concepts"] = list(concepts_by_key.values())
    return merged


class WorkflowResult(NamedTuple):
    """Outcome of one workflow run."""

    outputs: dict[str, Data]
    """Output data of every node by node id, suppressed nodes included (an API
    response should leave those out). Outputs may be the input objects themselves."""

    passed: bool
    """Whether the output of any non-suppressed leaf node is non-empty."""


class _Step(NamedTuple):
    node_id: str
    operator: Operator
    parent_ids: tuple[str, ...]


class CompiledWorkflow:
    """A validated workflow with its operators compiled and its nodes in
    topological order. Build it with compile_workflow and reuse it for every item.
    """

    __slots__ = (
        "_single_step",
        "_steps",
        "context_free_step",
        "nodes",
        "remote_node_ids",
        "result_node_ids",
        "suppressed_node_ids",
        "workflow_id",
    )

    def __init__(
        self,
        workflow_id: str,
        nodes: Mapping[str, dict[str, Any]],
        steps: tuple[_Step, ...],
        result_node_ids: tuple[str, ...],
    ) -> None:
        self.workflow_id = workflow_id
        self.nodes = nodes
        """The node dicts of the workflow by node id, in topological order."""
        self.result_node_ids = result_node_ids
        """Ids of the non-suppressed leaf nodes, whose outputs are the result."""
        self.suppressed_node_ids = frozenset(
            node_id for node_id, node in nodes.items() if node.get("suppress_output")
        )
        self.remote_node_ids = tuple(
            node_id for node_id, node in nodes.items() if is_remote_model(node["model"])
        )
        self._steps = steps
        self._single_step = steps[0] if len(steps) == 1 else None
        # (node id, predicate) of a one-node workflow whose operator reads no
        # EvalContext: for data with content, whether the workflow passes. The
        # route step calls it without building a context.
        self.context_free_step: tuple[str, Predicate] | None = None
        single = self._single_step
        passes = (
            getattr(single.operator, CONTEXT_FREE_ATTRIBUTE, None) if single else None
        )
        if single is not None and passes is not None:
            self.context_free_step = (single.node_id, passes)

    def run(self, data: Data, context: EvalContext) -> WorkflowResult:
        """Run the workflow on the input data and return each node's output.

        Raises RemoteOutputMissingError when a remote node runs without its output
        in `context.remote_outputs`.
        """
        single_step = self._single_step
        if single_step is not None:
            # The has_content checks are inlined here to save two calls per item.
            output = single_step.operator(data, context) if any(data.values()) else {}
            return WorkflowResult({single_step.node_id: output}, any(output.values()))

        outputs: dict[str, Data] = {}
        for node_id, operator, parent_ids in self._steps:
            if not parent_ids:
                node_input = data
            elif len(parent_ids) == 1:
                node_input = outputs[parent_ids[0]]
            else:
                node_input = merge_outputs([outputs[parent] for parent in parent_ids])
            outputs[node_id] = (
                operator(node_input, context) if has_content(node_input) else {}
            )
        passed = any(has_content(outputs[node_id]) for node_id in self.result_node_ids)
        return WorkflowResult(outputs, passed)


def remote_nodes(workflow: CompiledWorkflow) -> list[dict[str, Any]]:
    """Return the node dicts of the remote model nodes, in topological order.

    The caller sends the item's input (`EvalContext.input`) to each of these models
    and stores the output data under the node id in `EvalContext.remote_outputs`
    before running the workflow.
    """
    return [workflow.nodes[node_id] for node_id in workflow.remote_node_ids]


def compile_workflow(workflow: Any) -> CompiledWorkflow:
    """Validate a workflow and compile its nodes' operators.

    Raises RuleConfigError naming the path of the first invalid value. The checks
    cover the node list (present and non-empty), node ids (present and unique),
    `node_inputs` (naming other nodes of the workflow, without cycles), at least
    one leaf node without `suppress_output`, and each operator's parameters.
    """
    if not isinstance(workflow, dict):
        raise invalid("", "a workflow object", workflow)
    workflow_id = workflow.get("id") or ""
    if not isinstance(workflow_id, str):
        raise invalid("id", "a workflow id string", workflow_id)
    nodes = workflow.get("nodes")
    if nodes is None:
        raise missing("nodes", "a non-empty list of nodes")
    if not isinstance(nodes, list) or not nodes:
        raise invalid("nodes", "a non-empty list of nodes", nodes)

    indexes = _index_nodes(nodes)
    parents = {
        node_id: _parse_node_inputs(nodes[index], index, indexes)
        for node_id, index in indexes.items()
    }
    order = _topological_order(parents, indexes)
    result_node_ids = _result_node_ids(nodes, parents, order)

    steps = []
    for node_id in order:
        index = indexes[node_id]
        try:
            operator = compile_operator(nodes[index].get("model"), node_id)
        except RuleConfigError as error:
            raise error.with_prefix(f"nodes[{index}].model") from None
        steps.append(_Step(node_id, operator, parents[node_id]))

    ordered_nodes = {node_id: nodes[indexes[node_id]] for node_id in order}
    return CompiledWorkflow(workflow_id, ordered_nodes, tuple(steps), result_node_ids)


def _index_nodes(nodes: list[Any]) -> dict[str, int]:
    """Return each node's index by id, checking node shapes and id uniqueness."""
    indexes: dict[str, int] = {}
    for index, node in enumerate(nodes):
        path = f"nodes[{index}]"
        if not isinstance(node, dict):
            raise invalid(path, "a node object", node)
        node_id = node.get("id")
        if not isinstance(node_id, str) or not node_id:
            raise invalid(path + ".id", "a non-empty node id string", node_id)
        if node_id in indexes:
            raise RuleConfigError(
                path + ".id",
                f"duplicate node id {describe(node_id)},"
                f" also used by nodes[{indexes[node_id]}]",
            )
        suppress_output = node.get("suppress_output")
        if suppress_output is not None and not isinstance(suppress_output, bool):
            raise invalid(path + ".suppress_output", "true or false", suppress_output)
        if not isinstance(node.get("model"), dict):
            raise invalid(path + ".model", "a model object", node.get("model"))
        indexes[node_id] = index
    return indexes


def _parse_node_inputs(
    node: dict[str, Any], index: int, indexes: Mapping[str, int]
) -> tuple[str, ...]:
    node_inputs = node.get("node_inputs")
    path = f"nodes[{index}].node_inputs"
    if node_inputs is None:
        return ()
    if not isinstance(node_inputs, list):
        raise invalid(path, "a list of {node_id}", node_inputs)
    parent_ids: list[str] = []
    for input_index, node_input in enumerate(node_inputs):
        input_path = f"{path}[{input_index}]"
        if not isinstance(node_input, dict):
            raise invalid(input_path, "an object {node_id}", node_input)
        parent_id = node_input.get("node_id")
        if not isinstance(parent_id, str) or parent_id not in indexes:
            raise invalid(
                input_path + ".node_id", "the id of a node in this workflow", parent_id
            )
        if parent_id in parent_ids:
            raise RuleConfigError(
                input_path + ".node_id",
                f"node {describe(parent_id)} is listed more than once",
            )
        parent_ids.append(parent_id)
    return tuple(parent_ids)


def _topological_order(
    parents: Mapping[str, tuple[str, ...]], indexes: Mapping[str, int]
) -> list[str]:
    """Return node ids with every node after its parents, in declaration order
    where the graph allows it. Raises RuleConfigError naming a node on a cycle.
    """
    visiting: set[str] = set()
    done: set[str] = set()
    order: list[str] = []
    for root in parents:
        if root in done:
            continue
        # Iterative depth-first search over parent edges. Each stack entry is a node
        # and the index of its next parent to visit.
        stack: list[tuple[str, int]] = [(root, 0)]
        visiting.add(root)
        while stack:
            node_id, next_parent = stack[-1]
            node_parents = parents[node_id]
            if next_parent == len(node_parents):
                stack.pop()
                visiting.discard(node_id)
                done.add(node_id)
                order.append(node_id)
                continue
            stack[-1] = (node_id, next_parent + 1)
            parent_id = node_parents[next_parent]
            if parent_id in done:
                continue
            if parent_id in visiting:
                path = [entry[0] for entry in stack]
                cycle = path[path.index(parent_id) :]
                # The stack runs from child to parent, and data flow the other way.
                described = " -> ".join(reversed([*cycle, parent_id]))
                raise RuleConfigError(
                    f"nodes[{indexes[node_id]}].node_inputs",
                    f"expected no cycles, but node {describe(node_id)} is on the"
                    f" cycle {described}. Remove one of these node_inputs.",
                )
            visiting.add(parent_id)
            stack.append((parent_id, 0))
    return order


def _result_node_ids(
    nodes: list[dict[str, Any]],
    parents: Mapping[str, tuple[str, ...]],
    order: list[str],
) -> tuple[str, ...]:
    has_children = {
        parent for node_parents in parents.values() for parent in node_parents
    }
    leaves = [node_id for node_id in order if node_id not in has_children]
    by_id = {node["id"]: node for node in nodes}
    result_node_ids = tuple(
        node_id for node_id in leaves if not by_id[node_id].get("suppress_output")
    )
    if not result_node_ids:
        raise RuleConfigError(
            "nodes",
            "expected at least one leaf node (a node no other node takes input from)"
            " without suppress_output, but every leaf is suppressed: "
            + ", ".join(leaves),
        )
    return tuple(result_node_ids)
