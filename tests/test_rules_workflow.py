from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.context import EvalContext
from rules.errors import RemoteOutputMissingError, RuleConfigError
from rules.workflow import compile_workflow, merge_outputs, remote_nodes

CONTEXT = EvalContext(input={"id": "input-1", "data": {}}, seed_key="c/input-1")


def node(
    node_id: str,
    model_type_id: str = "annotation-writer",
    inputs: tuple[str, ...] = (),
    params: dict[str, Any] | None = None,
    thresholds: list[dict[str, Any]] | None = None,
    suppress: bool | None = None,
) -> dict[str, Any]:
    output_info: dict[str, Any] = {"params": params or {}}
    if thresholds is not None:
        output_info["data"] = {"concepts": thresholds}
    entry: dict[str, Any] = {
        "id": node_id,
        "model": {"id": f"model-{node_id}", "model_type_id": model_type_id},
    }
    entry["model"]["output_info"] = output_info
    if inputs:
        entry["node_inputs"] = [{"node_id": parent} for parent in inputs]
    if suppress is not None:
        entry["suppress_output"] = suppress
    return entry


def above(
    node_id: str, concept_id: str, inputs: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A thresholder node keeping `concept_id` above 0.5."""
    return node(
        node_id,
        "concept-thresholder",
        inputs,
        thresholds=[{"id": concept_id, "value": 0.5}],
    )


def remote(node_id: str, inputs: tuple[str, ...] = ()) -> dict[str, Any]:
    return node(
        node_id, "visual-classifier", inputs, {"base_url": "http://127.0.0.1:9"}
    )


def concepts(*pairs: tuple[str, float]) -> dict[str, Any]:
    return {"concepts": [{"id": cid, "value": value} for cid, value in pairs]}


# graphs that run


def test_single_node_passes() -> None:
    workflow = compile_workflow({"id": "w", "nodes": [above("t", "cat")]})
    data = concepts(("cat", 0.9), ("dog", 0.9))
    result = workflow.run(data, CONTEXT)
    assert result.outputs == {"t": concepts(("cat", 0.9))}
    assert result.passed is True


def test_single_node_drops() -> None:
    workflow = compile_workflow({"id": "w", "nodes": [above("t", "cat")]})
    result = workflow.run(concepts(("cat", 0.1)), CONTEXT)
    assert result.outputs == {"t": {}}
    assert result.passed is False


@pytest.mark.parametrize(
    "data", [{}, {"concepts": []}, {"concepts": [], "metadata": {}}]
)
def test_empty_input_not_run(data: dict[str, Any]) -> None:
    # A remote node without its output would raise if it ran.
    workflow = compile_workflow({"nodes": [remote("r")]})
    result = workflow.run(data, CONTEXT)
    assert result.outputs == {"r": {}}
    assert result.passed is False


def test_chain_first_node_drops() -> None:
    workflow = compile_workflow({"nodes": [above("t", "cat"), remote("r", ("t",))]})
    result = workflow.run(concepts(("cat", 0.2)), CONTEXT)
    assert result.outputs == {"t": {}, "r": {}}
    assert result.passed is False


def test_chain_both_run() -> None:
    workflow = compile_workflow(
        {"nodes": [above("t", "cat"), above("u", "dog", ("t",))]}
    )
    result = workflow.run(concepts(("cat", 0.9), ("dog", 0.9)), CONTEXT)
    assert result.outputs == {"t": concepts(("cat", 0.9)), "u": {}}
    assert result.passed is False


DIAMOND = {
    "id": "diamond",
    "nodes": [
        node("root"),
        above("cats", "cat", ("root",)),
        above("dogs", "dog", ("root",)),
        node("join", inputs=("cats", "dogs")),
    ],
}


@pytest.mark.parametrize(
    ("data", "cats", "dogs", "join"),
    [
        (
            concepts(("cat", 0.9), ("dog", 0.8), ("cow", 0.7)),
            concepts(("cat", 0.9)),
            concepts(("dog", 0.8)),
            concepts(("cat", 0.9), ("dog", 0.8)),
        ),
        (
            concepts(("cat", 0.9), ("dog", 0.1)),
            concepts(("cat", 0.9)),
            {},
            concepts(("cat", 0.9)),
        ),
        (
            concepts(("cat", 0.1), ("dog", 0.8)),
            {},
            concepts(("dog", 0.8)),
            concepts(("dog", 0.8)),
        ),
        (concepts(("cat", 0.1), ("dog", 0.1)), {}, {}, {}),
    ],
)
def test_diamond_cases(
    data: dict[str, Any],
    cats: dict[str, Any],
    dogs: dict[str, Any],
    join: dict[str, Any],
) -> None:
    result = compile_workflow(DIAMOND).run(data, CONTEXT)
    assert result.outputs == {"root": data, "cats": cats, "dogs": dogs, "join": join}
    assert result.passed is bool(join)


def test_suppressed_leaf_ignored() -> None:
    workflow = compile_workflow(
        {
            "nodes": [
                node("root"),
                above("cats", "cat", ("root",)) | {"suppress_output": True},
                above("dogs", "dog", ("root",)),
            ]
        }
    )
    assert workflow.result_node_ids == ("dogs",)
    assert workflow.suppressed_node_ids == frozenset({"cats"})
    result = workflow.run(concepts(("cat", 0.9), ("dog", 0.1)), CONTEXT)
    assert result.outputs["cats"] == concepts(("cat", 0.9))
    assert result.outputs["dogs"] == {}
    assert result.passed is False


def test_suppressed_middle_node_feeds() -> None:
    workflow = compile_workflow(
        {"nodes": [node("a", suppress=True), above("b", "cat", ("a",))]}
    )
    result = workflow.run(concepts(("cat", 0.9)), CONTEXT)
    assert result.outputs["b"] == concepts(("cat", 0.9))
    assert result.passed is True


@pytest.mark.parametrize(
    ("data", "passed"),
    [
        (concepts(("cat", 0.9)), True),
        (concepts(("dog", 0.9)), True),
        (concepts(("cow", 0.9)), False),
    ],
)
def test_two_leaves_any_passes(data: dict[str, Any], passed: bool) -> None:
    workflow = compile_workflow({"nodes": [above("cats", "cat"), above("dogs", "dog")]})
    assert workflow.result_node_ids == ("cats", "dogs")
    assert workflow.run(data, CONTEXT).passed is passed


def test_nodes_declared_out_of_order() -> None:
    workflow = compile_workflow(
        {
            "nodes": [
                node("c", inputs=("b",)),
                node("b", inputs=("a",)),
                above("a", "cat"),
            ]
        }
    )
    assert list(workflow.nodes) == ["a", "b", "c"]
    result = workflow.run(concepts(("cat", 0.9)), CONTEXT)
    assert result.outputs["c"] == concepts(("cat", 0.9))
    assert result.passed is True


def test_pre_queue_sampling_chain() -> None:
    workflow = compile_workflow(
        {
            "nodes": [
                node("site", "metadata-filter", params={"metadata": {"site": "n"}}),
                node("unsure", "max-probability-below", ("site",), {"threshold": 0.6}),
                node("sample", "random-sample", ("unsure",), {"keep_fraction": 1}),
            ]
        }
    )
    data = concepts(("cat", 0.55), ("dog", 0.3))
    north = EvalContext(input={"data": {"metadata": {"site": "n"}}}, seed_key="k")
    south = EvalContext(input={"data": {"metadata": {"site": "s"}}}, seed_key="k")
    assert workflow.run(data, north).passed is True
    assert workflow.run(data, south).passed is False
    assert workflow.run(concepts(("cat", 0.7)), north).passed is False


def test_remote_nodes_listed() -> None:
    nodes = [remote("r1"), above("t", "cat", ("r1",)), remote("r2", ("t",))]
    workflow = compile_workflow({"nodes": nodes})
    assert remote_nodes(workflow) == [nodes[0], nodes[2]]
    assert remote_nodes(compile_workflow({"nodes": [above("t", "cat")]})) == []


def test_remote_outputs_used() -> None:
    workflow = compile_workflow({"nodes": [remote("r1"), above("t", "cat", ("r1",))]})
    context = EvalContext(
        input={"id": "i"},
        seed_key="k",
        remote_outputs={"r1": concepts(("cat", 0.7), ("dog", 0.9))},
    )
    result = workflow.run({"image": {"url": "u"}}, context)
    assert result.outputs["t"] == concepts(("cat", 0.7))
    assert result.passed is True


def test_remote_output_missing_raises() -> None:
    workflow = compile_workflow({"nodes": [remote("r1"), above("t", "cat", ("r1",))]})
    with pytest.raises(RemoteOutputMissingError):
        workflow.run({"image": {"url": "u"}}, CONTEXT)


# merge_outputs


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ([], {}),
        ([{}, {"concepts": []}], {}),
        (
            [concepts(("a", 0.2), ("b", 0.9)), concepts(("a", 0.5), ("c", 0.1))],
            concepts(("a", 0.5), ("b", 0.9), ("c", 0.1)),
        ),
        (
            [concepts(("a", 0.5)), concepts(("a", 0.2))],
            concepts(("a", 0.5)),
        ),
        (
            [
                {"concepts": [{"id": "a", "value": 0.1}], "metadata": {"x": 1}},
                {"metadata": {"x": 2}, "image": {"url": "u"}},
            ],
            {
                "concepts": [{"id": "a", "value": 0.1}],
                "metadata": {"x": 1},
                "image": {"url": "u"},
            },
        ),
        (
            [{"metadata": {}}, {"metadata": {"x": 2}}, {"metadata": {"x": 3}}],
            {"metadata": {"x": 2}},
        ),
        (
            [
                {"concepts": [{"name": "cat", "value": 0.3}]},
                {"concepts": [{"name": "cat", "value": 0.6}]},
            ],
            {"concepts": [{"name": "cat", "value": 0.6}]},
        ),
    ],
)
def test_merge_outputs_cases(
    outputs: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    assert merge_outputs(outputs) == expected


def test_merge_outputs_single_no_copy() -> None:
    only = concepts(("a", 0.5))
    assert merge_outputs([{}, only, {"concepts": []}]) is only


# Each parent has unique concept ids, as model outputs do.
parent_concepts = st.dictionaries(
    st.sampled_from("abcdef"), st.floats(min_value=0, max_value=1), max_size=6
)


@given(st.lists(parent_concepts, max_size=4))
def test_merge_outputs_max_values(parents: list[dict[str, float]]) -> None:
    expected: dict[str, float] = {}
    for parent in parents:
        for concept_id, value in parent.items():
            expected[concept_id] = max(value, expected.get(concept_id, value))
    merged = merge_outputs([concepts(*parent.items()) for parent in parents])
    got = {c["id"]: c["value"] for c in merged.get("concepts", [])}
    assert got == expected
    assert len(merged.get("concepts", [])) == len(expected)


# invalid graphs


def annotation(node_id: str, inputs: tuple[str, ...] = ()) -> dict[str, Any]:
    return node(node_id, inputs=inputs)


INVALID_GRAPHS: list[tuple[Any, str]] = [
    ([], "nodes: expected a non-empty list of nodes, got []"),
    (None, "nodes: expected a non-empty list of nodes, but the value is missing"),
    ({"a": 1}, 'nodes: expected a non-empty list of nodes, got {"a": 1}'),
    (["a"], 'nodes[0]: expected a node object, got "a"'),
    ([{"model": {}}], "nodes[0].id: expected a non-empty node id string, got null"),
    ([{"id": ""}], 'nodes[0].id: expected a non-empty node id string, got ""'),
    (
        [annotation("a"), annotation("a")],
        'nodes[1].id: duplicate node id "a", also used by nodes[0]',
    ),
    ([{"id": "a"}], "nodes[0].model: expected a model object, got null"),
    (
        [annotation("a") | {"suppress_output": "yes"}],
        'nodes[0].suppress_output: expected true or false, got "yes"',
    ),
    (
        [annotation("a") | {"node_inputs": "b"}],
        'nodes[0].node_inputs: expected a list of {node_id}, got "b"',
    ),
    (
        [annotation("a") | {"node_inputs": ["b"]}],
        'nodes[0].node_inputs[0]: expected an object {node_id}, got "b"',
    ),
    (
        [annotation("a"), annotation("b", ("a", "zz"))],
        "nodes[1].node_inputs[1].node_id: expected the id of a node in this workflow,"
        ' got "zz"',
    ),
    (
        [annotation("a"), annotation("b") | {"node_inputs": [{}]}],
        "nodes[1].node_inputs[0].node_id: expected the id of a node in this workflow,"
        " got null",
    ),
    (
        [annotation("a"), annotation("b", ("a", "a"))],
        'nodes[1].node_inputs[1].node_id: node "a" is listed more than once',
    ),
    (
        [annotation("a", ("a",))],
        'nodes[0].node_inputs: expected no cycles, but node "a" is on the cycle'
        " a -> a. Remove one of these node_inputs.",
    ),
    (
        [annotation("a", ("b",)), annotation("b", ("a",))],
        'nodes[1].node_inputs: expected no cycles, but node "b" is on the cycle'
        " a -> b -> a. Remove one of these node_inputs.",
    ),
    (
        [annotation("root"), annotation("x", ("root", "z")), annotation("z", ("x",))],
        'nodes[2].node_inputs: expected no cycles, but node "z" is on the cycle'
        " x -> z -> x. Remove one of these node_inputs.",
    ),
    (
        [
            annotation("a", ("c",)),
            annotation("b", ("a",)),
            annotation("c", ("b",)),
            annotation("d", ("c",)),
        ],
        'nodes[1].node_inputs: expected no cycles, but node "b" is on the cycle'
        " a -> b -> c -> a. Remove one of these node_inputs.",
    ),
    (
        [node("a", suppress=True)],
        "nodes: expected at least one leaf node (a node no other node takes input"
        " from) without suppress_output, but every leaf is suppressed: a",
    ),
    (
        [
            annotation("a"),
            node("b", inputs=("a",), suppress=True),
            node("c", suppress=True),
        ],
        "nodes: expected at least one leaf node (a node no other node takes input"
        " from) without suppress_output, but every leaf is suppressed: b, c",
    ),
    (
        [annotation("a"), node("b", "random-sample", ("a",), {"keep_fraction": -2})],
        "nodes[1].model.output_info.params.keep_fraction: expected a number in"
        " (0, 1], got -2",
    ),
    (
        [annotation("a"), node("b", "nope", ("a",))],
        "nodes[1].model.model_type_id: expected one of annotation-writer,"
        " concept-synonym-mapper, concept-thresholder, dedupe, entropy-above,"
        " least-confidence-above, margin-below, max-probability-below,"
        " metadata-filter, min-probability-above, quota, random-sample,"
        ' sticky-sample, got "nope"',
    ),
    (
        [node("a", "concept-thresholder")],
        "nodes[0].model.output_info.data.concepts: expected a non-empty list of"
        " concepts {id, value}, but the value is missing",
    ),
]


@pytest.mark.parametrize(("nodes", "message"), INVALID_GRAPHS)
def test_compile_workflow_invalid(nodes: Any, message: str) -> None:
    with pytest.raises(RuleConfigError) as error:
        compile_workflow({"id": "w", "nodes": nodes})
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("workflow", "message"),
    [
        ([], "expected a workflow object, got []"),
        (
            {"id": 5, "nodes": [annotation("a")]},
            "id: expected a workflow id string, got 5",
        ),
        ({}, "nodes: expected a non-empty list of nodes, but the value is missing"),
    ],
)
def test_compile_workflow_invalid_shape(workflow: Any, message: str) -> None:
    with pytest.raises(RuleConfigError) as error:
        compile_workflow(workflow)
    assert str(error.value) == message


# One-node workflows of each operator that reads no context, which the route step
# runs as predicates.
CONTEXT_FREE_NODES = [
    ("max-probability-below", {"threshold": 0.6}, None),
    ("min-probability-above", {"threshold": 0.3}, None),
    ("margin-below", {"threshold": 0.2}, None),
    ("entropy-above", {"threshold": 0.5}, None),
    ("least-confidence-above", {"threshold": 0.4}, None),
    (
        "concept-thresholder",
        {"concept_threshold_type": "GREATER_THAN"},
        {"concepts": [{"id": "a", "value": 0.5}, {"id": "b", "value": 0.2}]},
    ),
]

concept_lists = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["a", "b", "c"]),
            "value": st.floats(min_value=0.0, max_value=1.0),
        }
    ),
    max_size=5,
)


def _one_node_workflow(
    model_type_id: str, params: dict[str, Any], data: dict[str, Any] | None
) -> dict[str, Any]:
    output_info: dict[str, Any] = {"params": params}
    if data is not None:
        output_info["data"] = data
    model = {"id": model_type_id, "model_type_id": model_type_id}
    model["output_info"] = output_info
    return {"id": "wf", "nodes": [{"id": "only", "model": model}]}


@pytest.mark.parametrize(("model_type_id", "params", "data"), CONTEXT_FREE_NODES)
@given(concepts=concept_lists)
def test_context_free_step_matches_run(
    model_type_id: str,
    params: dict[str, Any],
    data: dict[str, Any] | None,
    concepts: list[dict[str, Any]],
) -> None:
    workflow = compile_workflow(_one_node_workflow(model_type_id, params, data))
    assert workflow.context_free_step is not None
    node_id, passes = workflow.context_free_step
    assert node_id == "only"
    item = {"concepts": concepts}
    context = EvalContext(input={"id": "i"}, seed_key="k")
    fast = any(item.values()) and passes(item)
    assert fast == workflow.run(item, context).passed


@pytest.mark.parametrize(
    "workflow",
    [
        _one_node_workflow("random-sample", {"keep_fraction": 0.5}, None),
        {
            "id": "two",
            "nodes": [
                {
                    "id": "first",
                    "model": {
                        "model_type_id": "max-probability-below",
                        "output_info": {"params": {"threshold": 0.5}},
                    },
                },
                {
                    "id": "second",
                    "node_inputs": [{"node_id": "first"}],
                    "model": {
                        "model_type_id": "max-probability-below",
                        "output_info": {"params": {"threshold": 0.4}},
                    },
                },
            ],
        },
    ],
)
def test_context_free_step_absent(workflow: dict[str, Any]) -> None:
    assert compile_workflow(workflow).context_free_step is None
