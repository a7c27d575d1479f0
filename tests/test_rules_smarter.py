"""Uncertainty operators, sticky sampling and quota/dedupe parameters."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.context import EvalContext
from rules.errors import RuleConfigError
from rules.operators import compile_operator
from rules.stateful import DedupeRule, QuotaRule, stateful_rules
from rules.workflow import compile_workflow


def model(model_type_id: str, **params: Any) -> dict[str, Any]:
    return {
        "id": "m",
        "model_type_id": model_type_id,
        "output_info": {"params": params},
    }


def data(*values: float) -> dict[str, Any]:
    return {"concepts": [{"id": f"c{i}", "value": v} for i, v in enumerate(values)]}


def context(
    metadata: dict[str, Any] | None = None, collector: str = "u/a/c"
) -> EvalContext:
    document = {"id": "in-1", "data": {"metadata": metadata or {}}}
    return EvalContext(
        input=document, seed_key=f"{collector}/in-1", collector_key=collector
    )


@pytest.mark.parametrize(
    ("values", "threshold", "kept"),
    [
        ((0.75, 0.25), 0.5, False),  # margin 0.5 is not below 0.5
        ((0.55, 0.45), 0.2, True),
        ((0.9,), 0.5, False),  # one concept: margin is its value
        ((0.3,), 0.5, True),
        ((), 0.5, False),
        ((0.2, 0.5, 0.45), 0.1, True),  # unsorted input
    ],
)
def test_margin_below_cases(
    values: tuple[float, ...], threshold: float, kept: bool
) -> None:
    operator = compile_operator(model("margin-below", threshold=threshold), "n")
    assert bool(operator(data(*values), context())) is kept


@pytest.mark.parametrize(
    ("values", "threshold", "kept"),
    [
        ((0.5, 0.5), 0.99, True),  # uniform over two: entropy 1
        ((0.5, 0.5), 1.0, False),  # exactly at the threshold
        ((1.0, 0.0), 0.0, False),  # certain: entropy 0
        ((0.9,), 0.0, False),  # one concept: entropy 0
        ((), 0.0, False),
        ((0.0, 0.0), 0.0, False),  # values sum to 0
        ((5e-324, 1.0, 1.0), 0.5, True),  # a share that underflows to 0.0
    ],
)
def test_entropy_above_cases(
    values: tuple[float, ...], threshold: float, kept: bool
) -> None:
    operator = compile_operator(model("entropy-above", threshold=threshold), "n")
    assert bool(operator(data(*values), context())) is kept


def test_entropy_above_matches_formula() -> None:
    values = (0.7, 0.2, 0.1)
    expected = -sum(v * math.log(v) for v in values) / math.log(3)
    below = compile_operator(model("entropy-above", threshold=expected - 1e-6), "n")
    at = compile_operator(model("entropy-above", threshold=expected + 1e-6), "n")
    assert below(data(*values), context())
    assert not at(data(*values), context())


@pytest.mark.parametrize(
    ("values", "threshold", "kept"),
    [((0.6, 0.3), 0.4, False), ((0.59, 0.3), 0.4, True), ((), 0.1, False)],
)
def test_least_confidence_above_cases(
    values: tuple[float, ...], threshold: float, kept: bool
) -> None:
    operator = compile_operator(
        model("least-confidence-above", threshold=threshold), "n"
    )
    assert bool(operator(data(*values), context())) is kept


def sticky_expected(collector: str, value: str, fraction: float) -> bool:
    digest = hashlib.sha256(f"{collector}/{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@given(st.text(min_size=1, max_size=20))
def test_sticky_sample_matches_formula(camera: str) -> None:
    operator = compile_operator(
        model("sticky-sample", keep_fraction=0.5, key="camera.id"), "n"
    )
    kept = bool(operator(data(0.5), context({"camera": {"id": camera}})))
    assert kept is sticky_expected("u/a/c", camera, 0.5)


def test_sticky_sample_keeps_key_together() -> None:
    operator = compile_operator(
        model("sticky-sample", keep_fraction=0.3, key="camera"), "n"
    )
    for camera in ("north", "south", "east", "west", "gate"):
        decisions = set()
        for input_id in range(20):
            document = {
                "id": f"in-{input_id}",
                "data": {"metadata": {"camera": camera}},
            }
            item = EvalContext(
                input=document, seed_key=f"x/{input_id}", collector_key="u/a/c"
            )
            decisions.add(bool(operator(data(0.5), item)))
        assert decisions == {sticky_expected("u/a/c", camera, 0.3)}


@pytest.mark.parametrize(("missing", "kept"), [("drop", False), ("keep", True)])
def test_sticky_sample_missing_key(missing: str, kept: bool) -> None:
    operator = compile_operator(
        model("sticky-sample", keep_fraction=1.0, key="camera", missing=missing), "n"
    )
    assert bool(operator(data(0.5), context({}))) is kept


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"keep_fraction": 0.5}, "output_info.params.key: expected a metadata path"),
        ({"keep_fraction": 0, "key": "a"}, "output_info.params.keep_fraction"),
        (
            {"keep_fraction": 1, "key": "a", "missing": "maybe"},
            "output_info.params.missing",
        ),
    ],
)
def test_sticky_sample_invalid_params(params: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleConfigError) as error:
        compile_operator(model("sticky-sample", **params), "n")
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("model_type_id", "params", "message"),
    [
        ("quota", {}, "output_info.params.max_inputs: expected a whole number"),
        ("quota", {"max_inputs": 0}, "output_info.params.max_inputs"),
        ("quota", {"max_inputs": 1.5}, "output_info.params.max_inputs"),
        ("quota", {"max_inputs": 5, "window": "week"}, "output_info.params.window"),
        (
            "quota",
            {"max_inputs": 5, "per_concept": "yes"},
            "output_info.params.per_concept",
        ),
        ("dedupe", {"by": "phash"}, "output_info.params.by: expected url or content"),
        ("dedupe", {"window_s": 0}, "output_info.params.window_s"),
    ],
)
def test_stateful_invalid_params(
    model_type_id: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(RuleConfigError) as error:
        compile_operator(model(model_type_id, **params), "n")
    assert message in str(error.value)


def test_stateful_rules_in_node_order_and_pass_through() -> None:
    workflow = compile_workflow(
        {
            "id": "w",
            "nodes": [
                {"id": "dd", "model": model("dedupe", by="content", window_s=60)},
                {
                    "id": "q",
                    "model": model(
                        "quota", max_inputs=3, window="minute", per_concept=True
                    ),
                    "node_inputs": [{"node_id": "dd"}],
                },
            ],
        }
    )
    assert stateful_rules(workflow.nodes.values()) == [
        DedupeRule("dd", "content", 60),
        QuotaRule("q", 3, 60, True),
    ]
    assert workflow.run(data(0.4), context()).passed
