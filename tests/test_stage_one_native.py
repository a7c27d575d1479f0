"""The C extension agents._stage_one against the Python stage one it replaces.

Both must decide alike on every event, so each test runs the same events through
a Router with the extension and one without, and compares everything stage one
produces: queue items, dead letters, totals, funnels and rule drops.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from datetime import datetime
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.routing import Router, RouteResult, _plan, native_available
from agents.stats import WorkerStats
from app.config_cache import CollectorView, ConfigSnapshot
from app.models import COLLECTOR_ACTIVE, CollectorRecord, fast_output_fields
from bench import collectors as bench_collectors
from bench import dataset
from rules.workflow import compile_workflow
from tests.harness import event, output

if not native_available():
    if os.environ.get("CI"):
        raise RuntimeError(
            "agents._stage_one is not built; `make install` builds it with gcc"
        )
    pytest.skip("agents._stage_one is not built", allow_module_level=True)

from agents import _stage_one

MODEL = ("owner", "models", "classifier")
OTHER_MODEL = ("owner", "models", "detector")
FOREIGN_MODEL = ("someone-else", "public", "general")
UNWATCHED_MODEL = ("owner", "models", "unwatched")


def node(node_id: str, model_type_id: str, **params: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "model": {
            "id": node_id,
            "model_type_id": model_type_id,
            "output_info": {"params": params},
        },
    }


def thresholder(
    node_id: str, concepts: list[dict[str, Any]], comparator: Any = None
) -> dict[str, Any]:
    params = {} if comparator is None else {"concept_threshold_type": comparator}
    return {
        "id": node_id,
        "model": {
            "id": node_id,
            "model_type_id": "concept-thresholder",
            "output_info": {"params": params, "data": {"concepts": concepts}},
        },
    }


def view(
    collector_id: str,
    nodes: list[dict[str, Any]] | None = None,
    model: tuple[str, str, str] = MODEL,
    broken_reason: str = "",
    **fields: Any,
) -> CollectorView:
    user_id, app_id, model_id = model
    owner = fields.pop("user_id", user_id)
    record = CollectorRecord(
        user_id=owner,
        app_id="dataset",
        id=collector_id,
        model_user_id=user_id,
        model_app_id=app_id,
        model_id=model_id,
        pre_queue_workflow_id="wf" if nodes else "",
        **fields,
    )
    workflow = compile_workflow({"id": "wf", "nodes": nodes}) if nodes else None
    return CollectorView(
        record, record.key, "", workflow, None, (), broken_reason=broken_reason
    )


def snapshot_of(views: list[CollectorView]) -> ConfigSnapshot:
    by_source: dict[str, tuple[CollectorView, ...]] = {}
    for item in views:
        source = item.record.source_key
        by_source[source] = (*by_source.get(source, ()), item)
    return ConfigSnapshot(
        by_key=MappingProxyType({item.key: item for item in views}),
        by_source=MappingProxyType(by_source),
    )


# Collectors whose outputs Python decides. With one of them, the extension routes
# an event from orjson's objects; without, from the event's bytes.
PYTHON_DECIDES = {"sticky", "two-nodes", "remote", "margin"}


def every_kind_of_collector(python_decides: bool = True) -> ConfigSnapshot:
    """Collectors of every plan the extension decides, and of every plan it
    leaves to Python unless `python_decides` is false."""
    remote = node("remote", "visual-classifier", base_url="http://127.0.0.1:9/p")
    views = [
        view("sample", pre_queue_random_sample=0.5),
        view("below", [node("n", "max-probability-below", threshold=0.8)]),
        view("above", [node("n", "min-probability-above", threshold=0.3)]),
        view("gt", [thresholder("t", [{"id": "cat", "value": 0.5}])]),
        view(
            "equal-by-name",
            [thresholder("t", [{"name": "dog", "value": 0.25}], 5)],
        ),
        view(
            "lt",
            [thresholder("t", [{"id": "cat", "value": 0.4}], "LESS_THAN")],
        ),
        view(
            "sample-and-ge",
            [thresholder("t", [{"id": "dog", "value": 0.3}], 2)],
            pre_queue_random_sample=0.6,
        ),
        view(
            "le",
            [thresholder("t", [{"id": "cat", "value": 1}], 4)],
        ),
        view("sticky", pre_queue_random_sample=0.5, sample_key="group"),
        view(
            "two-nodes",
            [
                node("a", "max-probability-below", threshold=0.9),
                {
                    **node("b", "min-probability-above", threshold=0.1),
                    "node_inputs": [{"node_id": "a"}],
                },
            ],
        ),
        view("remote", [remote]),
        view("margin", [node("m", "margin-below", threshold=0.3)]),
        view("broken", broken_reason="workflow 'gone' does not exist"),
        view("paused", status_code=52002),
        view("one-caller", caller_user_id="caller-2"),
        view("foreign", model=FOREIGN_MODEL, user_id="owner"),
        view("version-2", model_version_id="v2", pre_queue_random_sample=0.7),
        view(
            "failed-too",
            [node("n", "max-probability-below", threshold=0.7)],
            collect_failed_predictions=True,
            pre_queue_random_sample=0.8,
        ),
        view("outputs", collect_outputs=True, pre_queue_random_sample=0.4),
        view("other-model", model=OTHER_MODEL),
    ]
    return snapshot_of(
        [
            item
            for item in views
            if python_decides or item.record.id not in PYTHON_DECIDES
        ]
    )


def plans_of(snapshot: ConfigSnapshot) -> dict[str, tuple[Any, ...]]:
    return {
        source: tuple(_plan(item) for item in views)
        for source, views in snapshot.by_source.items()
    }


def route_both(
    values: list[bytes], snapshot: ConfigSnapshot
) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]:
    """Return what the Python router, the native one and the native one with
    deferred counts (settled once, at the end) produce."""
    outcomes = []
    for native, defer_counts in ((False, False), (True, False), (True, True)):
        stats = WorkerStats()
        router = Router(1_000_000, stats, native=native, defer_counts=defer_counts)
        result = RouteResult()
        for value in values:
            router.route(value, snapshot, result)
        router.settle()
        outcomes.append(
            (
                list(result.batches.items()),
                result.dead_letters,
                +stats.totals,
                {key: +counts for key, counts in stats.funnel.items()},
                +stats.rule_drops,
            )
        )
    return outcomes[0], outcomes[1], outcomes[2]


def assert_same(values: list[bytes], snapshot: ConfigSnapshot) -> tuple[Any, ...]:
    python, native, deferred = route_both(values, snapshot)
    names = ("batches", "dead letters", "totals", "funnels", "rule drops")
    for name, expected, actual, settled in zip(
        names, python, native, deferred, strict=True
    ):
        assert actual == expected, f"{name} differ"
        assert settled == expected, f"{name} differ with deferred counts"
    return native


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("length", [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000])
def test_sha256_matches_hashlib(length: int, portable: bool) -> None:
    # Without `portable`, the CPU's SHA instructions run where it has them.
    data = bytes(range(256)) * 4
    expected = hashlib.sha256(data[:length]).digest()
    assert _stage_one.sha256(data[:length], portable) == expected


def varied_outputs() -> list[dict[str, Any]]:
    """Outputs of the watched models and others, failed, in two versions, with int
    concept values, names missing, empty or missing data."""
    outputs = []
    for index in range(40):
        models = (MODEL, MODEL, MODEL, OTHER_MODEL, FOREIGN_MODEL, UNWATCHED_MODEL)
        model = models[index % len(models)]
        value = (index * 37 % 100) / 100
        concepts = [("cat", value), ("dog", round(1 - value, 2)), ("bird", 0.25)]
        item = output(
            f"in-{index}",
            model=model,
            concepts=concepts,
            version=("v1", "v2")[index % 2],
            metadata={"group": f"g{index % 4}"} if index % 3 else {},
            status_code=10000 if index % 7 else 21100,
        )
        if index % 11 == 0:
            item["data"]["concepts"][0]["value"] = index % 2
        if index % 13 == 0:
            del item["data"]["concepts"][1]["name"]
        if index % 4 == 1:
            # Thresholds by name apply only when the id has none.
            item["data"]["concepts"][1]["id"] = "dog-id"
        if index % 17 == 0:
            item["data"] = {}
        if index % 19 == 0:
            del item["data"]
        if index % 10 == 3:
            # A tie for the top concept: the first of them counts.
            item["data"]["concepts"][1]["value"] = value
        outputs.append(item)
    return outputs


@pytest.mark.parametrize("python_decides", [True, False])
@pytest.mark.parametrize("caller", ["caller-1", "caller-2", "owner"])
def test_every_collector_kind_routes_alike(caller: str, python_decides: bool) -> None:
    outputs = varied_outputs()
    values = [
        event(f"e{start}", outputs[start : start + size], caller=caller)
        for start, size in ((0, 1), (1, 7), (8, 16), (24, 16))
    ]
    snapshot = every_kind_of_collector(python_decides)
    batches, _, totals, funnels, rule_drops = assert_same(values, snapshot)
    # The comparison means something only if the events reached every path.
    raw_results = [
        _stage_one.route_event(value, plans_of(snapshot), []) for value in values
    ]
    if python_decides:
        assert {"owner/dataset/remote", "owner/dataset/sticky"} <= dict(batches).keys()
        assert raw_results.count(None) > 0
    else:
        assert None not in raw_results
    assert totals["outputs_unwatched"] > 0
    assert totals["outputs_skipped_status"] > 0
    assert funnels["owner/dataset/broken"]["dropped_pre_queue"] > 0
    assert any(key[0] == "owner/dataset/lt" for key in rule_drops)
    assert "owner/dataset/paused" not in funnels


def test_failed_unwatched_output_counts_alike() -> None:
    failed = output("x", model=OTHER_MODEL, status_code=21100)
    snapshot = snapshot_of([view("sample", pre_queue_random_sample=0.5)])
    _, _, totals, _, _ = assert_same([event("e", [failed])], snapshot)
    assert totals["outputs_skipped_status"] == 1


# Values that break the output check in every way it looks for.
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, -1, 10000, 21100, 0.0, 1.0, 1.5, -0.1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " ", "\u2003", "\x1c", "x", " y ", "v2", "cat", "dog"]),
    st.lists(st.integers(0, 1), max_size=2),
    st.dictionaries(st.sampled_from(["id", "url", "value"]), st.just("v"), max_size=2),
)

# Paths into an output of tests.harness.output.
PATHS = [
    (),
    ("id",),
    ("status",),
    ("status", "code"),
    ("model",),
    ("model", "id"),
    ("model", "user_id"),
    ("model", "app_id"),
    ("model", "model_version"),
    ("model", "model_version", "id"),
    ("input",),
    ("input", "id"),
    ("input", "data"),
    ("input", "data", "image"),
    ("input", "data", "image", "url"),
    ("input", "data", "image", "base64"),
    ("input", "data", "text"),
    ("input", "data", "text", "raw"),
    ("input", "data", "metadata"),
    ("input", "data", "metadata", "group"),
    ("data",),
    ("data", "concepts"),
    ("data", "concepts", 0),
    ("data", "concepts", 0, "id"),
    ("data", "concepts", 0, "name"),
    ("data", "concepts", 0, "value"),
    ("data", "concepts", 1, "value"),
]


def mutate(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> Any:
    """Set the value at `path`, or delete it when the value is `...`. Return the
    document, which is the value itself when the path is empty."""
    if not path:
        return value
    parent: Any = document
    for step in path[:-1]:
        if isinstance(parent, dict) and isinstance(step, str):
            parent = parent.setdefault(step, {})
        elif isinstance(parent, list) and isinstance(step, int) and step < len(parent):
            parent = parent[step]
        else:
            return document
    last = path[-1]
    if isinstance(parent, dict) and isinstance(last, str):
        if value is ...:
            parent.pop(last, None)
        else:
            parent[last] = value
    elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
        if value is ...:
            del parent[last]
        else:
            parent[last] = value
    return document


MUTATIONS = st.lists(
    st.tuples(st.sampled_from(PATHS), st.one_of(st.just(...), ODD_VALUES)),
    min_size=1,
    max_size=3,
)


def mutated_output(mutations: list[tuple[tuple[Any, ...], Any]]) -> Any:
    document: Any = output("in-1", concepts=[("cat", 0.6), ("dog", 0.3)])
    for path, value in mutations:
        if isinstance(document, dict):
            document = mutate(document, path, copy.deepcopy(value))
    return document


@settings(max_examples=400, deadline=None)
@given(MUTATIONS)
def test_output_check_matches_python(
    mutations: list[tuple[tuple[Any, ...], Any]],
) -> None:
    document = mutated_output(mutations)
    expected = fast_output_fields(document)
    assert _stage_one.check_output(document) == (
        None if expected is None else tuple(expected)
    )


# One change to a valid output for every rule of the output check.
EDGE_CASES = (
    [
        (("input", "id"), value)
        for value in ["", " ", "\u2003", "\x1c\x1f", "\u3000x", "x\n", 7, None]
    ]
    + [
        (("data", "concepts", 0, "value"), value)
        for value in [0, 1, 2, -1, True, 0.0, 1.0, 1.0000001, -0.0, 2**64, None, "0.5"]
    ]
    + [
        (("status", "code"), value)
        for value in [10000, 21100, 2**70, -(2**70), True, "10000", None, 1.0]
    ]
    + [
        (("model", "model_version"), None),
        (("model", "model_version"), {}),
        (("model", "model_version"), {"id": None}),
        (("model", "model_version"), []),
        (("model", "app_id"), ""),
        (("model", "user_id"), None),
        (("id",), None),
        (("id",), 3),
        (("status",), None),
        (("status",), {}),
        (("input", "data", "image"), None),
        (("input", "data", "image"), {"url": ""}),
        (("input", "data", "image"), {"url": None}),
        (("input", "data", "image"), {"base64": "aGk="}),
        (("input", "data", "text"), {"raw": "hi"}),
        (("input", "data", "text"), {"raw": 1}),
        (("input", "data", "metadata"), None),
        (("input", "data", "metadata"), []),
        (("data",), None),
        (("data",), {}),
        (("data",), {"concepts": None}),
        (("data",), {"concepts": []}),
        (("data",), {"concepts": [{"id": "", "value": 0.5}]}),
        (("data",), {"concepts": [{"id": "a", "name": None, "value": 0.5}]}),
        (("data",), {"concepts": [{"id": "a", "value": float("nan")}]}),
        (("data",), {"other": 1}),
    ]
)


@pytest.mark.parametrize(("path", "value"), EDGE_CASES)
def test_output_check_edge_cases(path: tuple[Any, ...], value: Any) -> None:
    document = mutate(output("in-1", concepts=[("cat", 0.6)]), path, value)
    expected = fast_output_fields(document)
    assert _stage_one.check_output(document) == (
        None if expected is None else tuple(expected)
    )


def test_output_check_rejects_subclass_and_depth() -> None:
    class Subclass(dict):  # type: ignore[type-arg]
        pass

    document = output("in-1")
    assert _stage_one.check_output(Subclass(document)) is None
    assert fast_output_fields(Subclass(document)) is None
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(70):
        cursor["next"] = {}
        cursor = cursor["next"]
    for depth_document in (deep, {"flat": 1}):
        item = output("in-2", metadata=depth_document)
        expected = fast_output_fields(item)
        assert _stage_one.check_output(item) == (
            None if expected is None else tuple(expected)
        )
    assert fast_output_fields(output("in-3", metadata=deep)) is None


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(MUTATIONS, min_size=1, max_size=4), st.integers(0, 39), st.booleans())
def test_mutated_events_route_alike(
    mutation_lists: list[list[tuple[tuple[Any, ...], Any]]],
    start: int,
    python_decides: bool,
) -> None:
    outputs: list[Any] = varied_outputs()[start : start + 6]
    outputs += [mutated_output(mutations) for mutations in mutation_lists]
    try:
        value = event("mutated", outputs)
    except orjson.JSONEncodeError:
        return  # a float or int that JSON cannot carry
    assert_same([value], every_kind_of_collector(python_decides))


def test_benchmark_events_route_alike() -> None:
    # Every model needs a prediction or two in the quantiles.
    events = list(dataset.events(1500))
    quantiles = bench_collectors.measure_quantiles(events)
    events = events[:400]
    records, workflows = bench_collectors.build(1000, 0.1, quantiles)
    compiled = {
        (user_id, app_id, workflow.id): compile_workflow(
            workflow.model_dump(exclude_none=True)
        )
        for (user_id, app_id), items in workflows.items()
        for workflow in items
    }
    views = [
        CollectorView(
            record,
            record.key,
            "",
            compiled.get((record.user_id, record.app_id, record.pre_queue_workflow_id)),
            None,
            (),
        )
        for record in records
    ]
    assert all(item.record.status_code == COLLECTOR_ACTIVE for item in views)
    batches, _, totals, _, _ = assert_same(
        [dataset.encode(item) for item in events], snapshot_of(views)
    )
    assert sum(len(items) for _, items in batches) > 100
    assert totals["outputs_in"] == sum(len(item["outputs"]) for item in events)


# JSON values of every type, with the strings and numbers that parsers get wrong.
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


def assert_loads_like_orjson(document: bytes) -> None:
    try:
        expected = orjson.loads(document)
    except orjson.JSONDecodeError:
        assert _stage_one.loads(document) is None
        return
    parsed = _stage_one.loads(document)
    if parsed is not None:
        # orjson.dumps keeps key order and writes floats exactly.
        assert orjson.dumps(parsed[0]) == orjson.dumps(expected)


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_loads_matches_orjson(value: Any, ascii_only: bool) -> None:
    assert_loads_like_orjson(json.dumps(value, ensure_ascii=ascii_only).encode())


@settings(max_examples=400, deadline=None)
@given(
    st.integers(min_value=0, max_value=10**21),
    st.integers(min_value=-40, max_value=40),
    st.sampled_from(["{m}e{e}", "-{m}E{e}", "0.{m}", "{m}.5e{e}", "{m}", "-{m}"]),
)
def test_loads_numbers_match_orjson(mantissa: int, exponent: int, form: str) -> None:
    assert_loads_like_orjson(form.format(m=mantissa, e=exponent).encode())


@pytest.mark.parametrize(
    "document",
    [
        b'{"a":1,"a":2,"b":3}',
        b'"\\ud83d\\ude00 \\u00e9 \\n \\/ \\\\ \\""',
        b'"\\ud800"',
        b'"\\udc00"',
        b'"\\ud800\\u0041"',
        b'"\x00"',
        b'"\xc3"',
        b'"\xed\xa0\x80"',
        b'"\xf4\x90\x80\x80"',
        b'"\xc0\xaf"',
        b"[1,]",
        b"01",
        b"-",
        b"1.",
        b".5",
        b"1e",
        b"1e400",
        b"-1e400",
        b"1e-400",
        b"9223372036854775807",
        b"-9223372036854775808",
        b"18446744073709551616",
        b"[" * 200 + b"]" * 200,
        b'{"a":1} x',
        b"",
        b"  ",
        b"nul",
        b"tRue",
        b"0.1000000000000000055511151231257827",
        # 17 digits, whose mantissa a double cannot hold exactly: one division
        # would round twice and miss the correctly rounded value.
        b"48382277801338157e-8",
        b"1440848035001589.1",
        b"123456789012345678901234567890",
    ],
)
def test_loads_edge_cases_match_orjson(document: bytes) -> None:
    assert_loads_like_orjson(document)


def raw_event(body: bytes) -> bytes:
    return b'{"id":"e1","created_at":"2026-12-04T10:00:00Z",' + body + b"}"


GOOD_OUTPUT = orjson.dumps(output("in-1", concepts=[("cat", 0.6), ("dog", 0.3)]))
GOOD_CALLER = b'"caller":{"user_id":"caller-1"}'


def with_envelope(
    event_id: bytes | str,
    created_at: bytes = b'"2026-12-04T10:00:00Z"',
    caller: bytes = b'{"user_id":"caller-1"}',
) -> bytes:
    """Return an event of GOOD_OUTPUT with the given id, creation time and caller,
    each as JSON text."""
    if isinstance(event_id, str):
        event_id = event_id.encode()
    return (
        (b'{"id":' + event_id + b',"created_at":' + created_at + b',"caller":' + caller)
        + b',"outputs":['
        + GOOD_OUTPUT
        + b"]}"
    )


def with_output_edit(old: bytes, new: bytes) -> bytes:
    """Return a raw event of one output, GOOD_OUTPUT with `old` replaced."""
    return raw_event(
        GOOD_CALLER + b',"outputs":[' + GOOD_OUTPUT.replace(old, new) + b"]"
    )


@pytest.mark.parametrize(
    "value",
    [
        raw_event(GOOD_CALLER + b',"outputs":[' + GOOD_OUTPUT + b"]"),
        raw_event(GOOD_CALLER + b',"outputs":[],"outputs":[' + GOOD_OUTPUT + b"]"),
        raw_event(GOOD_CALLER + b',"outputs":[' + GOOD_OUTPUT + b'],"outputs":[]'),
        raw_event(GOOD_CALLER + b',"outp\\u0075ts":[' + GOOD_OUTPUT + b"]"),
        raw_event(GOOD_CALLER + b',"outputs":[]'),
        raw_event(
            GOOD_CALLER + b',"outputs":[' + b",".join([GOOD_OUTPUT] * 129) + b"]"
        ),
        raw_event(GOOD_CALLER + b',"outputs":' + GOOD_OUTPUT),
        raw_event(b'"caller":{"user_id":7},"outputs":[' + GOOD_OUTPUT + b"]"),
        raw_event(b'"caller":{"user_id":""},"outputs":[' + GOOD_OUTPUT + b"]"),
        raw_event(
            b'"caller":{"user_id":"caller\\u002d1"},"outputs":[' + GOOD_OUTPUT + b"]"
        ),
        raw_event(b'"caller":"x","outputs":[' + GOOD_OUTPUT + b"]"),
        b'{"id":7,"created_at":"2026-12-04T10:00:00Z",'
        + GOOD_CALLER
        + b',"outputs":['
        + GOOD_OUTPUT
        + b"]}",
        b'{"id":"e1","created_at":1764842400,'
        + GOOD_CALLER
        + b',"outputs":['
        + GOOD_OUTPUT
        + b"]}",
        b'{"id":"e1","created_at":"yesterday",'
        + GOOD_CALLER
        + b',"outputs":['
        + GOOD_OUTPUT
        + b"]}",
        with_output_edit(b'"in-1"', b'"in\\u002d1"'),
        with_output_edit(b'"in-1"', "\u2003".encode()),
        with_output_edit(b'"in-1"', '"\u2003"'.encode()),
        with_output_edit(b'"in-1"', '"in-\u00e9"'.encode()),
        with_output_edit(b'"concepts":', b'"concepts":[],"concepts":'),
        with_output_edit(b'"id":"cat"', b'"id":"c\\u0061t"'),
        with_output_edit(b'"metadata":{}', b'"metadata":{"n":123456789012345678901}'),
        with_output_edit(
            b'"metadata":{}', b'"metadata":' + b'{"a":' * 70 + b"1" + b"}" * 71
        ),
        with_output_edit(b'"value":0.6', b'"value":6e-1'),
        with_output_edit(
            b'{"id":"cat","name":"cat","value":0.6}',
            b'{"value":0.6,"id":"cat","name":"cat"}',
        ),
        with_output_edit(
            b'{"id":"cat","name":"cat","value":0.6}',
            b'{"id":"cat","id":"cow","value":0.6}',
        ),
        with_output_edit(
            b'{"id":"cat","name":"cat","value":0.6}',
            b'{"id":"cat","name":"cat","value":0.6,"value":0.9}',
        ),
        with_output_edit(
            b'{"id":"cat","name":"cat","value":0.6}',
            b'{"id":"cat","nam\\u0065":"cat","value":0.6}',
        ),
        with_output_edit(
            b'{"id":"cat","name":"cat","value":0.6}', b'{"id":"cat","value":0.6}'
        ),
        with_output_edit(b'"value":0.6', b'"value":1'),
        with_output_edit(b'"code":10000', b'"code":10000.0'),
        raw_event(GOOD_CALLER + b',"outputs":[' + GOOD_OUTPUT + b"]").replace(
            b"}", b"} ", 1
        ),
        raw_event(GOOD_CALLER + b',"outputs":[' + GOOD_OUTPUT + b"]") + b"x",
        raw_event(GOOD_CALLER + b',"outputs":[' + GOOD_OUTPUT + b"]").replace(
            b"cat", b"c\xffa"
        ),
        b"[" + GOOD_OUTPUT + b"]",
        *(
            with_envelope(b'"e1"', created_at)
            for created_at in (
                b'"2026-12-04T10:00:00.5Z"',
                b'"2026-12-04T10:00:00.123456Z"',
                b'"2026-12-04T10:00:00.1234567Z"',
                b'"2026-12-04T10:00:00.Z"',
                b'"2026-12-04T10:00:00+00:00"',
                b'"2026-12-04T10:00:00+01:00"',
                b'"2026-12-04T10:00:00"',
                b'"2026-12-04t10:00:00z"',
                b'"2026-12-04 10:00:00Z"',
                b'"2024-02-29T23:59:59.999999Z"',
                b'"2025-02-29T10:00:00Z"',
                b'"2026-04-31T10:00:00Z"',
                b'"2026-12-04T24:00:00Z"',
                b'"2026-12-04T10:60:00Z"',
                b'"2026-12-04T10:00:60Z"',
                b'"1969-12-31T23:59:59.5Z"',
                b'"1970-01-01T00:00:00Z"',
                b'"2199-12-31T23:59:59.999999Z"',
                b'"2200-01-01T00:00:00Z"',
                b'"2026-12-04T10:00:00\\u005a"',
            )
        ),
        with_envelope(b'"' + b"e" * 256 + b'"'),
        with_envelope(b'"' + b"e" * 257 + b'"'),
        with_envelope('"' + "\u00e9" * 256 + '"'),
        with_envelope('"' + "\u00e9" * 257 + '"'),
        with_envelope(b'""'),
        with_envelope(b'"e\\u0031"'),
        with_envelope(b'"e1"', caller=b'{"user_id":"caller-1","app_id":7}'),
        with_envelope(b'"e1"', caller=b'{"user_id":"caller-1","app_id":null}'),
        with_envelope(b'"e1"', caller=b'{"user_id":"caller-1","app_id":"a"}'),
        with_envelope(b'"e1"', caller=b'{"user_id":"caller-1","\\u0061pp_id":7}'),
    ],
)
@pytest.mark.parametrize("python_decides", [True, False])
def test_raw_event_edge_cases_route_alike(value: bytes, python_decides: bool) -> None:
    assert_same([value], every_kind_of_collector(python_decides))


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1969, 12, 1), max_value=datetime(2200, 2, 1)
    ),
    fraction_digits=st.integers(min_value=0, max_value=7),
    suffix=st.sampled_from(["Z", "+00:00"]),
)
def test_raw_event_creation_times_match_pydantic(
    moment: datetime, fraction_digits: int, suffix: str
) -> None:
    # The extension reads the UTC times of 1970 to 2199 itself. The queue items'
    # created_at must be what PredictionEvent.created_at.timestamp() gives.
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction_digits:
        text += (
            "." + f"{moment.microsecond:06d}{moment.microsecond % 10}"[:fraction_digits]
        )
    created_at = f'"{text}{suffix}"'.encode()
    assert_same([with_envelope(b'"e1"', created_at)], every_kind_of_collector(False))
