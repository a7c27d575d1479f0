import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.context import EvalContext
from rules.errors import RemoteOutputMissingError, RuleConfigError
from rules.operators import OPERATORS, compile_operator, is_remote_model


def make_model(
    model_type_id: str,
    params: dict[str, Any] | None = None,
    thresholds: list[Any] | None = None,
) -> dict[str, Any]:
    output_info: dict[str, Any] = {}
    if params is not None:
        output_info["params"] = params
    if thresholds is not None:
        output_info["data"] = {"concepts": thresholds}
    return {"id": "m", "model_type_id": model_type_id, "output_info": output_info}


def make_context(
    metadata: Any = None,
    seed_key: str = "user/app/collector/input-1",
    relations: tuple[dict[str, Any], ...] = (),
    remote_outputs: dict[str, dict[str, Any]] | None = None,
) -> EvalContext:
    input_: dict[str, Any] = {"id": "input-1", "data": {"image": {"url": "u"}}}
    if metadata is not None:
        input_["data"]["metadata"] = metadata
    if remote_outputs is None:
        return EvalContext(input=input_, seed_key=seed_key, relations=relations)
    return EvalContext(
        input=input_,
        seed_key=seed_key,
        relations=relations,
        remote_outputs=remote_outputs,
    )


def concepts_data(*pairs: tuple[str, float]) -> dict[str, Any]:
    return {"concepts": [{"id": cid, "value": value} for cid, value in pairs]}


def reference_fraction(seed: str) -> float:
    return int(hashlib.sha256(seed.encode("utf-8")).hexdigest()[:16], 16) / 2**64


def test_registry_known_types() -> None:
    assert set(OPERATORS) == {
        "random-sample",
        "concept-thresholder",
        "concept-synonym-mapper",
        "annotation-writer",
        "max-probability-below",
        "min-probability-above",
        "metadata-filter",
        "sticky-sample",
        "margin-below",
        "entropy-above",
        "least-confidence-above",
        "quota",
        "dedupe",
    }


# random-sample


@pytest.mark.parametrize(
    ("seed_key", "node_id", "keep_fraction"),
    [
        (f"collector/input-{n}", node_id, keep_fraction)
        for n in range(8)
        for node_id in ("sample", "other-node")
        for keep_fraction in (0.1, 0.5, 0.9)
    ],
)
def test_random_sample_decision(
    seed_key: str, node_id: str, keep_fraction: float
) -> None:
    operator = compile_operator(
        make_model("random-sample", {"keep_fraction": keep_fraction}), node_id
    )
    data = concepts_data(("cat", 0.9))
    expected_kept = reference_fraction(f"{seed_key}/{node_id}") < keep_fraction
    output = operator(data, make_context(seed_key=seed_key))
    if expected_kept:
        assert output is data
    else:
        assert output == {}


@given(st.text())
def test_random_sample_full_fraction_keeps(seed_key: str) -> None:
    operator = compile_operator(make_model("random-sample", {"keep_fraction": 1}), "n")
    data = concepts_data(("cat", 0.9))
    assert operator(data, make_context(seed_key=seed_key)) is data


@given(st.text(), st.floats(min_value=0.01, max_value=1.0))
def test_random_sample_deterministic(seed_key: str, keep_fraction: float) -> None:
    operator = compile_operator(
        make_model("random-sample", {"keep_fraction": keep_fraction}), "n"
    )
    context = make_context(seed_key=seed_key)
    data = concepts_data(("cat", 0.9))
    assert operator(data, context) == operator(data, context)


# concept-thresholder

AT_THRESHOLD_CASES = [
    # (concept_threshold_type, value, kept), threshold 0.5
    (None, 0.5, False),
    (0, 0.5, False),
    ("CONCEPT_THRESHOLD_NOT_SET", 0.5, False),
    (1, 0.5, False),
    ("GREATER_THAN", 0.5, False),
    (2, 0.5, True),
    ("GREATER_THAN_OR_EQUAL", 0.5, True),
    (3, 0.5, False),
    ("LESS_THAN", 0.5, False),
    (4, 0.5, True),
    ("LESS_THAN_OR_EQUAL", 0.5, True),
    (5, 0.5, True),
    ("EQUAL", 0.5, True),
    (None, 0.51, True),
    (1, 0.49, False),
    (2, 0.49, False),
    (3, 0.49, True),
    (4, 0.51, False),
    (5, 0.5 + 1e-10, True),
    (5, 0.5 - 1e-10, True),
    (5, 0.5 + 1e-8, False),
    (5, 0.49, False),
]


@pytest.mark.parametrize(("threshold_type", "value", "kept"), AT_THRESHOLD_CASES)
def test_thresholder_comparators(threshold_type: Any, value: float, kept: bool) -> None:
    params = (
        {} if threshold_type is None else {"concept_threshold_type": threshold_type}
    )
    model = make_model("concept-thresholder", params, [{"id": "cat", "value": 0.5}])
    operator = compile_operator(model, "t")
    data = concepts_data(("cat", value))
    expected = data if kept else {}
    assert operator(data, make_context()) == expected


@pytest.mark.parametrize(
    ("thresholds", "data", "expected"),
    [
        # Concepts without a threshold are dropped.
        (
            [{"id": "cat", "value": 0.5}],
            concepts_data(("cat", 0.9), ("dog", 0.99)),
            concepts_data(("cat", 0.9)),
        ),
        # No concepts at all.
        ([{"id": "cat", "value": 0.5}], {"concepts": []}, {}),
        ([{"id": "cat", "value": 0.5}], {}, {}),
        ([{"id": "cat", "value": 0.5}], {"metadata": {"a": 1}}, {}),
        # None remain.
        ([{"id": "cat", "value": 0.5}], concepts_data(("cat", 0.1)), {}),
        # Matched by name when the id has no threshold.
        (
            [{"id": "cat", "value": 0.5}],
            {"concepts": [{"id": "ai_1", "name": "cat", "value": 0.7}]},
            {"concepts": [{"id": "ai_1", "name": "cat", "value": 0.7}]},
        ),
        # A threshold entry with only a name.
        (
            [{"name": "cat", "value": 0.5}],
            {"concepts": [{"id": "ai_1", "name": "cat", "value": 0.7}]},
            {"concepts": [{"id": "ai_1", "name": "cat", "value": 0.7}]},
        ),
        # The id wins over the name.
        (
            [{"id": "ai_1", "value": 0.9}, {"id": "cat", "value": 0.1}],
            {"concepts": [{"id": "ai_1", "name": "cat", "value": 0.7}]},
            {},
        ),
        # Missing values count as 0.0.
        ([{"id": "cat"}], {"concepts": [{"id": "cat", "value": 0.1}]}, None),
        ([{"id": "cat", "value": 0.5}], {"concepts": [{"id": "cat"}]}, {}),
        # Other fields pass unchanged, order is kept.
        (
            [{"id": "a", "value": 0.5}, {"id": "c", "value": 0.5}],
            {
                "concepts": [
                    {"id": "c", "value": 0.6},
                    {"id": "b", "value": 0.9},
                    {"id": "a", "value": 0.7},
                ],
                "metadata": {"k": "v"},
            },
            {
                "concepts": [{"id": "c", "value": 0.6}, {"id": "a", "value": 0.7}],
                "metadata": {"k": "v"},
            },
        ),
    ],
)
def test_thresholder_cases(
    thresholds: list[dict[str, Any]],
    data: dict[str, Any],
    expected: dict[str, Any] | None,
) -> None:
    operator = compile_operator(make_model("concept-thresholder", {}, thresholds), "t")
    output = operator(data, make_context())
    assert output == (data if expected is None else expected)


def test_thresholder_all_kept_no_copy() -> None:
    model = make_model("concept-thresholder", {}, [{"id": "cat", "value": 0.5}])
    operator = compile_operator(model, "t")
    data = concepts_data(("cat", 0.9))
    assert operator(data, make_context()) is data


concept_ids = st.sampled_from(["a", "b", "c", "d", "e"])
unit_values = st.floats(min_value=0.0, max_value=1.0)


@given(
    thresholds=st.dictionaries(concept_ids, unit_values, min_size=1),
    predicted=st.lists(st.tuples(concept_ids, unit_values)),
    threshold_type=st.integers(min_value=1, max_value=5),
)
def test_thresholder_output_subset(
    thresholds: dict[str, float],
    predicted: list[tuple[str, float]],
    threshold_type: int,
) -> None:
    model = make_model(
        "concept-thresholder",
        {"concept_threshold_type": threshold_type},
        [{"id": cid, "value": value} for cid, value in thresholds.items()],
    )
    operator = compile_operator(model, "t")
    data = concepts_data(*predicted)
    output = operator(data, make_context())
    output_concepts = output.get("concepts", [])
    assert all(
        any(kept is original for original in data["concepts"])
        for kept in output_concepts
    )
    positions = [
        next(i for i, c in enumerate(data["concepts"]) if c is kept)
        for kept in output_concepts
    ]
    assert positions == sorted(positions)
    assert all(concept["id"] in thresholds for concept in output_concepts)
    if output:
        assert output_concepts


# max-probability-below and min-probability-above


@pytest.mark.parametrize(
    ("threshold", "data", "passes"),
    [
        (0.5, concepts_data(("a", 0.4), ("b", 0.49)), True),
        (0.5, concepts_data(("a", 0.5)), False),
        (0.5, concepts_data(("a", 0.2), ("b", 0.6)), False),
        (0.5, {"concepts": [{"id": "a"}]}, True),
        (0.5, {"concepts": []}, False),
        (0.5, {"metadata": {"k": 1}}, False),
        (0, concepts_data(("a", 0.0)), False),
        (1, concepts_data(("a", 0.999)), True),
        (1, concepts_data(("a", 1.0)), False),
    ],
)
def test_max_probability_below_cases(
    threshold: float, data: dict[str, Any], passes: bool
) -> None:
    model = make_model("max-probability-below", {"threshold": threshold})
    output = compile_operator(model, "n")(data, make_context())
    if passes:
        assert output is data
    else:
        assert output == {}


@pytest.mark.parametrize(
    ("threshold", "data", "passes"),
    [
        (0.5, concepts_data(("a", 0.6), ("b", 0.51)), True),
        (0.5, concepts_data(("a", 0.5)), False),
        (0.5, concepts_data(("a", 0.6), ("b", 0.4)), False),
        (0.5, {"concepts": [{"id": "a"}]}, False),
        (0.5, {"concepts": []}, False),
        (0.5, {}, False),
        (0, concepts_data(("a", 0.001)), True),
        (0, concepts_data(("a", 0.0)), False),
        (1, concepts_data(("a", 1.0)), False),
    ],
)
def test_min_probability_above_cases(
    threshold: float, data: dict[str, Any], passes: bool
) -> None:
    model = make_model("min-probability-above", {"threshold": threshold})
    output = compile_operator(model, "n")(data, make_context())
    if passes:
        assert output is data
    else:
        assert output == {}


# metadata-filter

CAMERA = {"camera": {"site": "north", "id": 3}, "tags": ["day", "rain"], "n": 1}


@pytest.mark.parametrize(
    ("params", "metadata", "passes"),
    [
        ({"metadata": {"n": 1}}, CAMERA, True),
        ({"metadata": {"n": 1.0}}, CAMERA, True),
        ({"metadata": {"n": 2}}, CAMERA, False),
        ({"metadata": {"n": True}}, {"n": 1}, False),
        ({"metadata": {"flag": 1}}, {"flag": True}, False),
        ({"metadata": {"flag": True}}, {"flag": True}, True),
        ({"metadata": {"missing": 1}}, CAMERA, False),
        ({"metadata": {"k": None}}, {"k": None}, True),
        ({"metadata": {"k": None}}, {"k": 0}, False),
        ({"metadata": {"k": None}}, {}, False),
        ({"metadata": {"n": "1"}}, CAMERA, False),
        # Nested objects match as subsets.
        ({"metadata": {"camera": {"site": "north"}}}, CAMERA, True),
        ({"metadata": {"camera": {"site": "south"}}}, CAMERA, False),
        ({"metadata": {"camera": {}}}, CAMERA, True),
        ({"metadata": {"camera": {"site": "north"}}}, {"camera": "north"}, False),
        ({"metadata": {"a": {"b": {"c": 1}}}}, {"a": {"b": {"c": 1, "d": 2}}}, True),
        ({"metadata": {"a": {"b": {"c": 1}}}}, {"a": {"b": {"d": 2}}}, False),
        # Lists: every filter element must be in the metadata list.
        ({"metadata": {"tags": ["rain", "day"]}}, CAMERA, True),
        ({"metadata": {"tags": ["rain", "night"]}}, CAMERA, False),
        ({"metadata": {"tags": []}}, CAMERA, True),
        ({"metadata": {"tags": ["day"]}}, {"tags": "day"}, False),
        ({"metadata": {"ids": [1]}}, {"ids": [True]}, False),
        (
            {"metadata": {"boxes": [{"label": "cat"}]}},
            {"boxes": [{"label": "dog"}, {"label": "cat", "score": 0.9}]},
            True,
        ),
        (
            {"metadata": {"boxes": [{"label": "cow"}]}},
            {"boxes": [{"label": "dog"}]},
            False,
        ),
        # A scalar filter value must be an element of a metadata list.
        ({"metadata": {"tags": "rain"}}, CAMERA, True),
        ({"metadata": {"tags": "snow"}}, CAMERA, False),
        # Key paths must exist.
        ({"keys": ["camera.site"]}, CAMERA, True),
        ({"keys": ["camera"]}, CAMERA, True),
        ({"keys": ["camera.site", "tags"]}, CAMERA, True),
        ({"keys": ["camera.lens"]}, CAMERA, False),
        ({"keys": ["camera.site.x"]}, CAMERA, False),
        ({"keys": ["tags.0"]}, CAMERA, False),
        ({"keys": ["k"]}, {"k": None}, True),
        ({"keys": ["camera.site"]}, {}, False),
        # Both must hold.
        ({"metadata": {"n": 1}, "keys": ["camera.site"]}, CAMERA, True),
        ({"metadata": {"n": 1}, "keys": ["camera.lens"]}, CAMERA, False),
        ({"metadata": {"n": 2}, "keys": ["camera.site"]}, CAMERA, False),
        # No metadata on the input.
        ({"metadata": {"n": 1}}, None, False),
        ({"keys": ["n"]}, None, False),
    ],
)
def test_metadata_filter_cases(
    params: dict[str, Any], metadata: Any, passes: bool
) -> None:
    operator = compile_operator(make_model("metadata-filter", params), "f")
    data = concepts_data(("cat", 0.9))
    output = operator(data, make_context(metadata=metadata))
    if passes:
        assert output is data
    else:
        assert output == {}


def test_metadata_filter_input_without_data() -> None:
    operator = compile_operator(make_model("metadata-filter", {"keys": ["a"]}), "f")
    context = EvalContext(input={"id": "i"}, seed_key="s")
    assert operator(concepts_data(("cat", 0.9)), context) == {}


# concept-synonym-mapper


def relation(
    subject: str, predicate: str, obj: str, knowledge_graph_id: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "subject_concept": {"id": subject},
        "object_concept": {"id": obj},
        "predicate": predicate,
    }
    if knowledge_graph_id is not None:
        entry["knowledge_graph_id"] = knowledge_graph_id
    return entry


SYNONYM_CASES = [
    # (relations, input concepts, expected concepts)
    ((), [("cat", 0.8)], None),
    ((relation("cat", "synonym", "kitty"),), [("cat", 0.8)], [("kitty", 0.8)]),
    ((relation("cat", "synonym", "kitty"),), [("kitty", 0.7)], [("cat", 0.7)]),
    ((relation("cat", "synonym", "kitty"),), [("dog", 0.7)], None),
    ((relation("cat", "hyponym", "animal"),), [("cat", 0.8)], [("animal", 0.8)]),
    ((relation("cat", "hyponym", "animal"),), [("animal", 0.8)], None),
    ((relation("animal", "hypernym", "cat"),), [("cat", 0.8)], [("animal", 0.8)]),
    ((relation("animal", "hypernym", "cat"),), [("animal", 0.8)], None),
    # Transitive, sorted by value then id.
    (
        (relation("cat", "hyponym", "feline"), relation("feline", "hyponym", "animal")),
        [("cat", 0.8)],
        [("animal", 0.8), ("feline", 0.8)],
    ),
    (
        (relation("cat", "synonym", "kitty"), relation("kitty", "hyponym", "pet")),
        [("cat", 0.8)],
        [("kitty", 0.8), ("pet", 0.8)],
    ),
    # Max value among the inputs that reach a concept.
    (
        (relation("cat", "hyponym", "pet"), relation("dog", "hyponym", "pet")),
        [("cat", 0.6), ("dog", 0.9)],
        [("pet", 0.9)],
    ),
    (
        (relation("cat", "hyponym", "pet"), relation("dog", "hyponym", "animal")),
        [("cat", 0.6), ("dog", 0.9)],
        [("animal", 0.9), ("pet", 0.6)],
    ),
    # Cycles end without repeating concepts, and the start concept is not output.
    (
        (
            relation("a", "hyponym", "b"),
            relation("b", "hyponym", "c"),
            relation("c", "hyponym", "a"),
        ),
        [("a", 0.5)],
        [("b", 0.5), ("c", 0.5)],
    ),
    (
        (relation("a", "synonym", "b"), relation("b", "synonym", "c")),
        [("a", 0.5)],
        [("b", 0.5), ("c", 0.5)],
    ),
    ((relation("a", "synonym", "a"),), [("a", 0.5)], None),
    # An input concept reached from another input keeps the larger value.
    (
        (relation("cat", "synonym", "kitty"),),
        [("cat", 0.9), ("kitty", 0.3)],
        [("cat", 0.9), ("kitty", 0.9)],
    ),
    # Relations of another knowledge graph, unknown predicates and relations
    # without ids are skipped.
    ((relation("cat", "synonym", "kitty", "kg1"),), [("cat", 0.8)], None),
    ((relation("cat", "synonym", "kitty", ""),), [("cat", 0.8)], [("kitty", 0.8)]),
    ((relation("cat", "antonym", "dog"),), [("cat", 0.8)], None),
    (
        ({"subject_concept": {"id": "cat"}, "predicate": "synonym"},),
        [("cat", 0.8)],
        None,
    ),
    ((relation("cat", "synonym", ""),), [("cat", 0.8)], None),
]


@pytest.mark.parametrize(("relations", "predicted", "expected"), SYNONYM_CASES)
def test_synonym_mapper_cases(
    relations: tuple[dict[str, Any], ...],
    predicted: list[tuple[str, float]],
    expected: list[tuple[str, float]] | None,
) -> None:
    operator = compile_operator(make_model("concept-synonym-mapper", {}), "m")
    output = operator(concepts_data(*predicted), make_context(relations=relations))
    assert output == ({} if expected is None else concepts_data(*expected))


def test_synonym_mapper_knowledge_graph_param() -> None:
    params = {"knowledge_graph_id": "kg1"}
    operator = compile_operator(make_model("concept-synonym-mapper", params), "m")
    relations = (
        relation("cat", "synonym", "kitty", "kg1"),
        relation("cat", "synonym", "moggy"),
    )
    output = operator(concepts_data(("cat", 0.8)), make_context(relations=relations))
    assert output == concepts_data(("kitty", 0.8))


def test_synonym_mapper_names_and_fields() -> None:
    relations = (
        {
            "subject_concept": {"id": "ai_cat", "name": "cat"},
            "object_concept": {"id": "my_cat", "name": "house cat"},
            "predicate": "synonym",
        },
        relation("ai_dog", "synonym", "ai_pup"),
    )
    data = {
        "concepts": [
            {"id": "ai_cat", "value": 0.8},
            {"id": "ai_dog", "name": "dog", "value": 0.4},
            {"id": "ai_pup", "name": "puppy", "value": 0.2},
        ],
        "metadata": {"k": "v"},
    }
    operator = compile_operator(make_model("concept-synonym-mapper", {}), "m")
    output = operator(data, make_context(relations=relations))
    assert output == {
        "concepts": [
            {"id": "my_cat", "name": "house cat", "value": 0.8},
            {"id": "ai_dog", "name": "dog", "value": 0.4},
            {"id": "ai_pup", "name": "puppy", "value": 0.4},
        ],
        "metadata": {"k": "v"},
    }


def test_synonym_mapper_relations_change() -> None:
    operator = compile_operator(make_model("concept-synonym-mapper", {}), "m")
    data = concepts_data(("cat", 0.8))
    first = (relation("cat", "synonym", "kitty"),)
    second = (relation("cat", "synonym", "moggy"),)
    assert operator(data, make_context(relations=first)) == concepts_data(
        ("kitty", 0.8)
    )
    assert operator(data, make_context(relations=second)) == concepts_data(
        ("moggy", 0.8)
    )
    assert operator(data, make_context(relations=first)) == concepts_data(
        ("kitty", 0.8)
    )
    for version in range(20):
        relations = (relation("cat", "synonym", f"v{version}"),)
        output = operator(data, make_context(relations=relations))
        assert output == concepts_data((f"v{version}", 0.8))


@pytest.mark.parametrize("data", [{}, {"concepts": []}, {"metadata": {"k": 1}}])
def test_synonym_mapper_no_concepts(data: dict[str, Any]) -> None:
    operator = compile_operator(make_model("concept-synonym-mapper", {}), "m")
    relations = (relation("cat", "synonym", "kitty"),)
    assert operator(data, make_context(relations=relations)) == {}


# annotation-writer and remote models


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"annotation_status": 24150},
        {"annotation_status": "ANNOTATION_PENDING", "annotation_user_id": "u"},
    ],
)
def test_annotation_writer_passes_through(params: dict[str, Any]) -> None:
    operator = compile_operator(make_model("annotation-writer", params), "w")
    data = concepts_data(("cat", 0.9))
    assert operator(data, make_context()) is data


@pytest.mark.parametrize(
    ("model", "remote"),
    [
        (make_model("visual-classifier", {"base_url": "http://127.0.0.1:9"}), True),
        (make_model("visual-classifier", {"base_url": ""}), False),
        (make_model("random-sample", {"keep_fraction": 1}), False),
        ({"id": "m"}, False),
        ({"id": "m", "output_info": []}, False),
    ],
)
def test_is_remote_model_cases(model: dict[str, Any], remote: bool) -> None:
    assert is_remote_model(model) is remote


def test_remote_model_output() -> None:
    model = make_model("visual-classifier", {"base_url": "https://127.0.0.1:9/v2"})
    operator = compile_operator(model, "remote")
    remote_output = concepts_data(("dog", 0.3))
    context = make_context(remote_outputs={"remote": remote_output})
    assert operator(concepts_data(("cat", 0.9)), context) is remote_output


def test_remote_model_missing_output() -> None:
    model = make_model("random-sample", {"base_url": "http://127.0.0.1:9"})
    operator = compile_operator(model, "remote")
    with pytest.raises(RemoteOutputMissingError, match="'remote'") as error:
        operator(concepts_data(("cat", 0.9)), make_context(remote_outputs={"x": {}}))
    assert error.value.node_id == "remote"


# invalid parameters

KNOWN_TYPES = (
    "annotation-writer, concept-synonym-mapper, concept-thresholder, dedupe,"
    " entropy-above, least-confidence-above, margin-below, max-probability-below,"
    " metadata-filter, min-probability-above, quota, random-sample, sticky-sample"
)
KEEP = "output_info.params.keep_fraction: expected a number in (0, 1]"
THRESHOLD = "output_info.params.threshold: expected a number in [0, 1]"
COMPARATOR = (
    "output_info.params.concept_threshold_type: expected one of 1 GREATER_THAN,"
    " 2 GREATER_THAN_OR_EQUAL, 3 LESS_THAN, 4 LESS_THAN_OR_EQUAL, 5 EQUAL"
    " (the number or the name)"
)
THRESHOLDS = "output_info.data.concepts: expected a non-empty list of concepts"
METADATA_NEITHER = (
    "output_info.params: expected a non-empty `metadata` object or a non-empty"
    " `keys` list, got neither"
)
KEYS = 'expected a list of dotted key paths such as "camera.site"'
ONE_THRESHOLD = [{"id": "cat", "value": 0.5}]

INVALID_CASES: list[tuple[Any, str]] = [
    (make_model("random-sample", {"keep_fraction": -2}), f"{KEEP}, got -2"),
    (make_model("random-sample", {"keep_fraction": 0}), f"{KEEP}, got 0"),
    (make_model("random-sample", {"keep_fraction": 1.5}), f"{KEEP}, got 1.5"),
    (make_model("random-sample", {"keep_fraction": "0.5"}), f'{KEEP}, got "0.5"'),
    (make_model("random-sample", {"keep_fraction": True}), f"{KEEP}, got true"),
    (
        make_model("random-sample", {"keep_fraction": float("nan")}),
        f"{KEEP}, got NaN",
    ),
    (make_model("random-sample", {}), f"{KEEP}, but the value is missing"),
    (make_model("random-sample"), f"{KEEP}, but the value is missing"),
    (
        {"model_type_id": "random-sample", "output_info": []},
        "output_info: expected an object, got []",
    ),
    (
        {"model_type_id": "random-sample", "output_info": {"params": "x"}},
        'output_info.params: expected an object, got "x"',
    ),
    (make_model("max-probability-below", {"threshold": 1.5}), f"{THRESHOLD}, got 1.5"),
    (
        make_model("max-probability-below", {"threshold": -0.1}),
        f"{THRESHOLD}, got -0.1",
    ),
    (make_model("max-probability-below", {}), f"{THRESHOLD}, but the value is missing"),
    (make_model("min-probability-above", {"threshold": "x"}), f'{THRESHOLD}, got "x"'),
    (
        make_model("concept-thresholder", {"concept_threshold_type": 6}, ONE_THRESHOLD),
        f"{COMPARATOR}, got 6",
    ),
    (
        make_model(
            "concept-thresholder", {"concept_threshold_type": "BIGGER"}, ONE_THRESHOLD
        ),
        f'{COMPARATOR}, got "BIGGER"',
    ),
    (
        make_model(
            "concept-thresholder", {"concept_threshold_type": True}, ONE_THRESHOLD
        ),
        f"{COMPARATOR}, got true",
    ),
    (
        make_model(
            "concept-thresholder", {"concept_threshold_type": 2.0}, ONE_THRESHOLD
        ),
        f"{COMPARATOR}, got 2.0",
    ),
    (
        make_model("concept-thresholder", {}),
        f"{THRESHOLDS} {{id, value}}, but the value is missing",
    ),
    (make_model("concept-thresholder", {}, []), f"{THRESHOLDS} {{id, value}}, got []"),
    (
        make_model("concept-thresholder", {}, [{"value": 0.5}]),
        "output_info.data.concepts[0].id: expected a non-empty concept id, got null",
    ),
    (
        make_model("concept-thresholder", {}, [*ONE_THRESHOLD, "cat"]),
        'output_info.data.concepts[1]: expected a concept {id, value}, got "cat"',
    ),
    (
        make_model("concept-thresholder", {}, [{"id": "cat", "value": "high"}]),
        'output_info.data.concepts[0].value: expected a finite number, got "high"',
    ),
    (
        make_model("concept-thresholder", {}, [*ONE_THRESHOLD, *ONE_THRESHOLD]),
        'output_info.data.concepts[1].id: duplicate threshold for concept "cat"',
    ),
    (
        make_model("concept-synonym-mapper", {"knowledge_graph_id": 5}),
        "output_info.params.knowledge_graph_id: expected a knowledge graph id string"
        ' ("" for the app\'s graph), got 5',
    ),
    (make_model("metadata-filter", {}), METADATA_NEITHER),
    (make_model("metadata-filter", {"metadata": {}, "keys": []}), METADATA_NEITHER),
    (
        make_model("metadata-filter", {"metadata": ["a"]}),
        'output_info.params.metadata: expected a JSON object, got ["a"]',
    ),
    (
        make_model("metadata-filter", {"keys": "camera.site"}),
        f'output_info.params.keys: {KEYS}, got "camera.site"',
    ),
    (
        make_model("metadata-filter", {"keys": ["a", "a..b"]}),
        f'output_info.params.keys[1]: {KEYS}, got "a..b"',
    ),
    (
        make_model("metadata-filter", {"keys": [""]}),
        f'output_info.params.keys[0]: {KEYS}, got ""',
    ),
    (
        make_model("metadata-filter", {"keys": [1]}),
        f"output_info.params.keys[0]: {KEYS}, got 1",
    ),
    (
        make_model("annotation-writer", {"annotation_status": 1}),
        "output_info.params.annotation_status: expected 24150 ANNOTATION_SUCCESS or"
        " 24151 ANNOTATION_PENDING, got 1",
    ),
    (
        make_model("annotation-writer", {"annotation_status": [24150]}),
        "output_info.params.annotation_status: expected 24150 ANNOTATION_SUCCESS or"
        " 24151 ANNOTATION_PENDING, got [24150]",
    ),
    (
        make_model("annotation-writer", {"annotation_user_id": 5}),
        "output_info.params.annotation_user_id: expected a user id string, got 5",
    ),
    (
        make_model("visual-classifier", {"base_url": "ftp://127.0.0.1/"}),
        'output_info.params.base_url: expected an http or https URL, got "ftp://127.0.0.1/"',
    ),
    (
        make_model("visual-classifier", {"base_url": "http://"}),
        'output_info.params.base_url: expected an http or https URL, got "http://"',
    ),
    (
        make_model("visual-classifier", {"base_url": 5}),
        "output_info.params.base_url: expected an http or https URL, got 5",
    ),
    (
        make_model("visual-classifier"),
        f'model_type_id: expected one of {KNOWN_TYPES}, got "visual-classifier"',
    ),
    (
        {"id": "m"},
        f"model_type_id: expected one of {KNOWN_TYPES}, but the value is missing",
    ),
    (
        {"model_type_id": 7},
        f"model_type_id: expected one of {KNOWN_TYPES}, got 7",
    ),
    ("random-sample", 'expected a model object, got "random-sample"'),
]


@pytest.mark.parametrize(("model", "message"), INVALID_CASES)
def test_compile_operator_invalid(model: Any, message: str) -> None:
    with pytest.raises(RuleConfigError) as error:
        compile_operator(model, "n")
    assert str(error.value) == message
    assert isinstance(error.value, ValueError)
