"""Hostile inputs against the C extension agents._stage_one.

The differential tests route JSON events through a Router with the extension and
one without (`assert_same`), or compare `check_output` with its Python twin
`fast_output_fields`. They cover values that orjson produces but the tests in
test_stage_one_native.py do not: random JSON, deep metadata, ints beyond 64 bits,
-0.0, Unicode and long ids, empty and very long output lists.

The direct-call tests pass objects that orjson never builds, and plan tuples that
`agents.routing._plan` never builds. The Router never passes these, but a direct
caller must get an exception, not a crash. Calls that can crash the interpreter
run in a subprocess.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import tracemalloc
import types
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.routing import _candidate, _plan
from app.config_cache import CollectorView, ConfigSnapshot
from app.models import (
    MAX_METADATA_DEPTH,
    MAX_OUTPUTS_PER_EVENT,
    CollectorRecord,
    fast_output_fields,
)
from tests.harness import REPO, output
from tests.test_stage_one_native import (
    PATHS,
    assert_same,
    every_kind_of_collector,
    mutate,
    node,
    snapshot_of,
    thresholder,
    varied_outputs,
    view,
)

# Importing test_stage_one_native has already skipped this module, or failed it
# in CI, if the extension is not built.
_stage_one = pytest.importorskip("agents._stage_one")

SOURCE = "owner/models/classifier"
CREATED_AT = "2026-12-04T10:00:00Z"


def event_bytes(event_id: str, outputs: list[Any], caller: str = "caller-1") -> bytes:
    """Encode an event with json.dumps, which, unlike orjson.dumps, writes ints of
    any size. orjson then reads them back as the worker does."""
    document = {
        "id": event_id,
        "created_at": CREATED_AT,
        "caller": {"user_id": caller},
        "outputs": outputs,
    }
    return json.dumps(document).encode()


def decoded(value: Any) -> Any:
    """Return `value` as orjson decodes it from JSON text."""
    return orjson.loads(json.dumps(value).encode())


def assert_check_alike(document: Any) -> None:
    expected = fast_output_fields(document)
    actual = _stage_one.check_output(document)
    assert actual == (None if expected is None else tuple(expected))


def plans_of(snapshot: ConfigSnapshot) -> dict[str, tuple[tuple[Any, ...], ...]]:
    """Return the plans that Router.route passes to the extension."""
    return {
        source: tuple(_plan(item) for item in views)
        for source, views in snapshot.by_source.items()
    }


# --- Random JSON ----------------------------------------------------------------

JSON_KEYS = st.sampled_from(
    [
        *("id", "model", "user_id", "app_id", "model_version", "input", "data"),
        *("status", "code", "metadata", "image", "text", "url", "base64", "raw"),
        *("concepts", "name", "value", "group"),
    ]
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    # Beyond the 64-bit range orjson reads an int as a float.
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(["", " ", "\u3000", "cat", "dog", "v1", "v2", "owner"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(JSON_KEYS | st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=20,
)
JSON_MUTATIONS = st.lists(
    st.tuples(st.sampled_from(PATHS), st.one_of(st.just(...), JSON_VALUES)),
    min_size=1,
    max_size=3,
)


def mutated(mutations: list[tuple[tuple[Any, ...], Any]], input_id: str) -> Any:
    document: Any = output(input_id, concepts=[("cat", 0.6), ("dog", 0.3)])
    for path, value in mutations:
        if value is ... and not path:
            continue  # deleting the whole output leaves nothing to encode
        if isinstance(document, dict):
            document = mutate(document, path, value if value is ... else decoded(value))
    return document


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES)
def test_random_json_output_checks_alike(value: Any) -> None:
    assert_check_alike(decoded(value))


@settings(max_examples=400, deadline=None)
@given(JSON_MUTATIONS)
def test_random_json_fields_check_alike(
    mutations: list[tuple[tuple[Any, ...], Any]],
) -> None:
    assert_check_alike(mutated(mutations, "in-1"))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(JSON_MUTATIONS, min_size=1, max_size=4),
    st.integers(0, 39),
    st.sampled_from(["caller-1", "caller-2", "owner"]),
)
def test_random_json_events_route_alike(
    mutation_lists: list[list[tuple[tuple[Any, ...], Any]]], start: int, caller: str
) -> None:
    outputs: list[Any] = varied_outputs()[start : start + 3]
    for index, mutations in enumerate(mutation_lists):
        outputs.append(mutated(mutations, f"m-{index}"))
    assert_same([event_bytes("random", outputs, caller)], every_kind_of_collector())


# --- Values the worker can receive ------------------------------------------------


def nested(levels: int, kinds: str) -> Any:
    """Return a value of `levels` nested containers, cycling through `kinds`
    ("d" for an object, "l" for an array) from the outside in."""
    value: Any = "leaf"
    for level in reversed(range(levels)):
        value = {"k": value} if kinds[level % len(kinds)] == "d" else [value]
    return value


@pytest.mark.parametrize("kinds", ["d", "l", "dl", "ld"])
def test_deep_metadata_routes_alike(kinds: str) -> None:
    values = []
    for depth in range(MAX_METADATA_DEPTH - 4, MAX_METADATA_DEPTH + 5):
        # The metadata object is level 1, so its deepest child is at `depth`.
        deep = nested(depth - 1, kinds)
        for metadata in ({"deep": deep}, {"flat": 1, "list": [1, {"a": 2}], "z": deep}):
            item = decoded(output(f"deep-{depth}", metadata=metadata))
            assert_check_alike(item)
            values.append(event_bytes(f"deep-{depth}", [item]))
    assert_same(values, every_kind_of_collector())

    # The comparison covers both sides of the limit.
    at_limit = output("at", metadata={"deep": nested(MAX_METADATA_DEPTH - 1, kinds)})
    over_limit = output("over", metadata={"deep": nested(MAX_METADATA_DEPTH, kinds)})
    assert _stage_one.check_output(decoded(at_limit)) is not None
    assert _stage_one.check_output(decoded(over_limit)) is None


def test_bmp_input_ids_check_alike() -> None:
    # Every character of the Basic Multilingual Plane, alone and among spaces:
    # Python's str.strip and the extension's Py_UNICODE_ISSPACE must agree.
    document = output("x")
    for code_point in range(0x10000):
        character = chr(code_point)
        for input_id in (character, character * 2, f" {character}\t"):
            document["input"]["id"] = input_id
            assert_check_alike(document)


UNICODE_IDS = [
    "é",
    "猫",
    "😀",
    "a\u0301",
    "\u00a0",
    "\u3000\u2028",
    "\u200b",
    "\ufeff",
    "\x00",
    "\x1c\x1d\x1e\x1f",
    "\t x",
    "x" * 300,
]


@pytest.mark.parametrize("text", UNICODE_IDS)
def test_unicode_ids_route_alike(text: str) -> None:
    sampled = snapshot_of(
        [
            view("sample", pre_queue_random_sample=0.5),
            view("unicode", model=(text, text, text), user_id=text),
            view("version", model_version_id=text),
            view("caller", caller_user_id=text),
        ]
    )
    outputs = [output(f"{text}-{index}") for index in range(8)]
    outputs.append(output(text))
    outputs.append(output("in", model=(text, text, text), version=text))
    values = [event_bytes(text, outputs, caller) for caller in (text, "caller-1")]
    assert_same(values, sampled)
    assert_same(values, every_kind_of_collector())


def test_long_ids_sample_alike() -> None:
    # The hashed seed is `<collector key>/<input id>` in UTF-8, so the lengths
    # below cross SHA-256's block boundaries (55, 56, 64, 119 and 120 bytes) with
    # one-byte to four-byte characters on either side.
    views = []
    for app_length in range(1, 80, 3):
        record = CollectorRecord(
            user_id="owner",
            app_id="a" * app_length,
            id="s",
            model_user_id="owner",
            model_app_id="models",
            model_id="classifier",
            pre_queue_random_sample=0.5,
        )
        views.append(CollectorView(record, record.key, "", None, None, ()))
    values = []
    for length in range(1, 140):
        outputs = [output((unit * length)[:length]) for unit in ("a", "é", "€", "😀")]
        values.append(event_bytes(f"long-{length}", outputs))
    batches, _, _, funnels, _ = assert_same(values, snapshot_of(views))
    # Both outcomes of the sample occur, so the digests were compared.
    assert sum(len(items) for _, items in batches) > 1000
    dropped = sum(counts["dropped_random_sample"] for counts in funnels.values())
    assert dropped > 1000


STATUS_CODES = [
    "10000",
    "-0",
    "10000.0",
    "1e4",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "100000000000000000000000000000",
]
CONCEPT_VALUES = [
    "-0.0",
    "-0",
    "0",
    "1",
    "0e0",
    "-0e-5",
    "1e-400",
    "5e-1",
    "0.99999999999999999",
    "1.00000000000000001",
    "1.0000000000000002",
    "18446744073709551616",
]


def with_raw_number(path: tuple[Any, ...], number: str) -> bytes:
    """Return an event whose one output has the JSON number `number` at `path`."""
    placeholder = "@number@"
    item = mutate(output("raw", concepts=[("cat", 0.6)]), path, placeholder)
    text = event_bytes("raw", [item]).decode()
    return text.replace(f'"{placeholder}"', number).encode()


def test_json_numbers_route_alike() -> None:
    values = [with_raw_number(("status", "code"), code) for code in STATUS_CODES]
    values += [
        with_raw_number(("data", "concepts", 0, "value"), value)
        for value in CONCEPT_VALUES
    ]
    for value in values:
        assert_check_alike(orjson.loads(value)["outputs"][0])
    thresholds_at_the_edges = snapshot_of(
        [
            view("zero-below", [node("n", "max-probability-below", threshold=0)]),
            view("zero-above", [node("n", "min-probability-above", threshold=0)]),
            view("one-above", [node("n", "min-probability-above", threshold=1)]),
            view("equal-zero", [thresholder("t", [{"id": "cat", "value": 0}], 5)]),
            view("le-zero", [thresholder("t", [{"id": "cat", "value": -0.0}], 4)]),
            view("ge-one", [thresholder("t", [{"id": "cat", "value": 1}], 2)]),
        ]
    )
    assert_same(values, thresholds_at_the_edges)
    assert_same(values, every_kind_of_collector())


def test_lone_surrogates_rejected_by_orjson() -> None:
    # The extension encodes input ids to UTF-8 for the sample, which fails on a
    # lone surrogate. It relies on orjson rejecting them when it decodes events.
    value = b'{"id": "e", "outputs": [{"input": {"id": "\\ud800"}}]}'
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(value)
    _, dead_letters, _, _, _ = assert_same([value], every_kind_of_collector())
    assert [letter.code for letter in dead_letters] == ["INVALID_JSON"]


def test_lone_surrogate_raises_like_python() -> None:
    # Passed directly, a lone surrogate raises the error that Python's
    # `_candidate` raises for the same output, and crashes nothing.
    document = output("x\ud800")
    plans = plans_of(every_kind_of_collector())
    with pytest.raises(UnicodeEncodeError):
        _stage_one.route_outputs([document], "caller-1", plans)
    with pytest.raises(UnicodeEncodeError):
        _candidate(document)


def test_empty_outputs_route_alike() -> None:
    values = [event_bytes("empty", [])]
    _, dead_letters, _, _, _ = assert_same(values, every_kind_of_collector())
    assert [letter.code for letter in dead_letters] == ["INVALID_EVENT"]
    plans = plans_of(every_kind_of_collector())
    assert _stage_one.route_outputs([], "caller-1", plans) == ((0, 0), [])


def test_output_count_limit_routes_alike() -> None:
    outputs = (varied_outputs() * 4)[: MAX_OUTPUTS_PER_EVENT + 1]
    values = [
        event_bytes("at-limit", outputs[:MAX_OUTPUTS_PER_EVENT]),
        event_bytes("over-limit", outputs),
    ]
    _, dead_letters, totals, _, _ = assert_same(values, every_kind_of_collector())
    assert [letter.code for letter in dead_letters] == ["INVALID_EVENT"]
    assert totals["outputs_in"] == MAX_OUTPUTS_PER_EVENT


def merge_decisions(
    parts: list[tuple[tuple[int, int], list[tuple[Any, ...]]]], chunk: int
) -> tuple[tuple[int, int], dict[int, list[Any]]]:
    """Add up the counts and decisions of consecutive calls on `chunk` outputs
    each, shifting output indices by the chunk's offset. Decisions are keyed by the
    id of their plan."""
    skipped_status = unwatched = 0
    merged: dict[int, list[Any]] = {}
    for number, ((skipped, unseen), decisions) in enumerate(parts):
        skipped_status += skipped
        unwatched += unseen
        offset = number * chunk
        for decision in decisions:
            plan = decision[0]
            if len(decision) == 2:
                entry = merged.setdefault(id(plan), [[]])
                entry[0] += [index + offset for index in decision[1]]
                continue
            entry = merged.setdefault(id(plan), [0, 0, 0, []])
            for position in range(3):
                entry[position] += decision[position + 1]
            entry[3] += [index + offset for index in decision[4]]
    return (skipped_status, unwatched), merged


def test_ten_thousand_outputs_direct_call() -> None:
    # The Router stops events of more than MAX_OUTPUTS_PER_EVENT outputs, but the
    # extension has no limit of its own. One call on 10,000 outputs must decide
    # as 250 calls on 40 outputs each.
    chunk = 40
    outputs = [decoded(item) for item in varied_outputs()] * 250
    plans = plans_of(every_kind_of_collector())
    whole = _stage_one.route_outputs(outputs, "caller-1", plans)
    parts = [
        _stage_one.route_outputs(outputs[start : start + chunk], "caller-1", plans)
        for start in range(0, len(outputs), chunk)
    ]
    assert merge_decisions([whole], len(outputs)) == merge_decisions(parts, chunk)
    assert whole[0][1] > 0


# --- Raw events -------------------------------------------------------------------
#
# Where the extension parses an event's bytes itself (route_event), it must
# read them as orjson does, or leave the event to orjson. The Router calls it
# only when no collector of the event's models is decided in Python, so these
# tests route with collectors that the extension decides alone.


def native_collectors() -> ConfigSnapshot:
    """Every kind of collector in `every_kind_of_collector` that the extension
    decides without Python."""
    snapshot = every_kind_of_collector()
    views = [
        item
        for items in snapshot.by_source.values()
        for item in items
        if not _plan(item)[1]
    ]
    return snapshot_of(views)


def raw_event(
    outputs: list[str], caller: str = '"caller-1"', event_id: str = '"e"'
) -> bytes:
    """Return an event of outputs given as JSON text, with the caller's user id
    and the event id given as JSON text too."""
    return (
        f'{{"id": {event_id}, "created_at": "{CREATED_AT}",'
        f' "caller": {{"user_id": {caller}}}, "outputs": [{", ".join(outputs)}]}}'
    ).encode()


RAW_OUTPUT = json.dumps(output("in-1", concepts=[("cat", 0.6), ("dog", 0.2)]))

# Edits of RAW_OUTPUT: (text, replacement).
RAW_EDITS = {
    "plain": ("", ""),
    "escaped input id": ('"id": "in-1"', '"id": "in\\u002d1"'),
    "escaped model id": ('"id": "classifier"', '"id": "classifie\\u0072"'),
    "escaped url": ("https://", "https:\\/\\/"),
    "escaped input key": ('"input": {"id"', '"input": {"\\u0069d"'),
    "escaped data key": ('"concepts"', '"\\u0063oncepts"'),
    "escaped concept id": ('"id": "cat"', '"id": "c\\u0061t"'),
    "surrogate pair id": ('"id": "in-1"', '"id": "\\ud83d\\ude00"'),
    "escaped nul id": ('"id": "in-1"', '"id": "a\\u0000"'),
    "next line id": ('"id": "in-1"', '"id": "\u0085"'),
    "ideographic space id": ('"id": "in-1"', '"id": "\u3000 "'),
    "delete id": ('"id": "in-1"', '"id": "\x7f"'),
    "non-ascii input id": ('"id": "in-1"', '"id": "in-\u00e9\u3000"'),
    "non-ascii model id": ('"id": "classifier"', '"id": "cl\u00e4ssifier"'),
    "duplicate status code": ('"code": 10000', '"code": 21100, "code": 10000'),
    "duplicate failed code": ('"code": 10000', '"code": 10000, "code": 21100'),
    "duplicate value": ('"value": 0.6', '"value": 0.6, "value": 0.1'),
    "duplicate concept id": ('"id": "cat"', '"id": "cat", "id": "dog"'),
    "duplicate model": (
        '"model": {',
        '"model": {"id": "m", "user_id": "u", "app_id": "a"}, "model": {',
    ),
    "duplicate metadata": (
        '"metadata": {}',
        '"metadata": {"deep": ' + "[" * 70 + "]" * 70 + '}, "metadata": {}',
    ),
    "duplicate data field": (
        '"data": {"concepts"',
        '"data": {"x": 1, "x": 0, "concepts"',
    ),
    "int value": ('"value": 0.6', '"value": 1'),
    "value minus zero": ('"value": 0.6', '"value": -0'),
    "float minus zero": ('"value": 0.6', '"value": -0.0'),
    "value exponent": ('"value": 0.6', '"value": 6E-1'),
    "code max int64": ('"code": 10000', '"code": 9223372036854775807'),
    "code max uint64": ('"code": 10000', '"code": 18446744073709551615'),
    "code exponent": ('"code": 10000', '"code": 1e4'),
    "version null": ('"model_version": {"id": "v1"}', '"model_version": null'),
    "image null": ('"image": {', '"text": {"raw": "t"}, "image": null, "x": {'),
}
RAW_ENVELOPES = [
    ('"caller-1"', '"e"'),
    ('"caller\\u002d1"', '"e\\u0031"'),
    ('"owner"', '"' + "e" * 257 + '"'),
    ('""', '"e"'),
    ('"caller-1", "user_id": 5', '"e"'),
    ('"caller-2", "user_id": "caller-1"', '"e"'),
]


@pytest.mark.parametrize("edit", RAW_EDITS.values(), ids=RAW_EDITS.keys())
def test_raw_event_edits_route_alike(edit: tuple[str, str]) -> None:
    text, replacement = edit
    assert text in RAW_OUTPUT
    edited = RAW_OUTPUT.replace(text, replacement)
    values = [
        raw_event([edited, RAW_OUTPUT], caller, event_id)
        for caller, event_id in RAW_ENVELOPES
    ]
    values.append(raw_event([edited, edited]))
    values.append(raw_event([RAW_OUTPUT[:-1] + ', "data": {"concepts": []}}', edited]))
    assert_same(values, native_collectors())


def test_pretty_printed_event_routes_alike() -> None:
    document = orjson.loads(raw_event([RAW_OUTPUT, RAW_OUTPUT]))
    pretty = json.dumps(document, indent="\t", ensure_ascii=False)
    values = [pretty.encode(), pretty.replace("\n", "\r\n").encode()]
    assert_same(values, native_collectors())


def test_many_data_fields_route_alike() -> None:
    # Thousands of fields in one output's data, among them a duplicate whose
    # last value is falsy, as orjson keeps it.
    item = output("in-1", concepts=[("cat", 0.6)])
    item["data"].update({f"field-{index:05d}": 0 for index in range(3000)})
    text = json.dumps(item)
    duplicated = text.replace('"field-00000": 0', '"field-00000": 1, "field-00000": 0')
    values = [raw_event([text]), raw_event([duplicated, text])]
    assert_same(values, native_collectors())


@pytest.mark.skipif(
    not hasattr(_stage_one, "loads"), reason="this build parses no raw events"
)
@settings(max_examples=300, deadline=None)
@given(
    JSON_VALUES,
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=3)), max_size=3),
)
def test_raw_parser_matches_orjson(
    value: Any, ascii_only: bool, edits: list[tuple[int, bytes]]
) -> None:
    # JSON text, then bytes overwritten at random places to reach the parser's
    # error paths. The extension's parser may give up on any text (None), but
    # what it returns must be what orjson returns.
    text = bytearray(json.dumps(value, ensure_ascii=ascii_only).encode())
    for position, replacement in edits:
        index = position % (len(text) + 1)
        text[index : index + len(replacement)] = replacement
    try:
        expected = orjson.loads(bytes(text))
    except orjson.JSONDecodeError:
        expected = ...
    parsed = _stage_one.loads(bytes(text))
    if parsed is None:
        return
    assert expected is not ...
    assert repr(parsed[0]) == repr(expected)


# --- Reference and memory leaks -----------------------------------------------------


class FalsyError:
    """A data value whose truth test raises, to reach the error path of the
    extension's `any(data.values())`."""

    def __bool__(self) -> bool:
        raise ValueError("no truth value")


def leak_inputs() -> tuple[list[list[Any]], dict[str, tuple[tuple[Any, ...], ...]]]:
    """Return output lists for every way route_outputs returns, or raises, and the
    plans of every kind of collector."""
    outputs = [decoded(item) for item in varied_outputs()]
    lists = [outputs[start : start + 8] for start in range(0, 40, 8)]
    invalid = decoded(outputs[:3])
    invalid[2]["input"]["id"] = " "  # route_outputs returns None
    surrogate = decoded(outputs[:2])
    surrogate[1]["input"]["id"] = "x\ud800"  # raises UnicodeEncodeError
    raising = decoded(outputs[:2])
    raising[1]["data"]["x"] = FalsyError()  # raises ValueError
    lists += [invalid, surrogate, raising]
    return lists, plans_of(every_kind_of_collector())


def route_many_times(
    lists: list[list[Any]], plans: dict[str, Any], rounds: int
) -> None:
    callers = ("caller-1", "caller-2", "owner")
    for number in range(rounds):
        for outputs in lists:
            try:
                _stage_one.route_outputs(outputs, callers[number % 3], plans)
            except (UnicodeEncodeError, ValueError):
                pass
            for item in outputs:
                try:
                    _stage_one.check_output(item)
                except ValueError:
                    pass


def test_repeated_calls_leak_nothing() -> None:
    lists, plans = leak_inputs()
    # Local names, because pytest's rewritten asserts hold a reference to the
    # value of any other expression.
    plan = plans[SOURCE][0]
    outputs = lists[0]
    first_output = outputs[0]
    input_id = first_output["input"]["id"]

    # The first rounds fill the caches, such as the UTF-8 form of each str.
    route_many_times(lists, plans, 200)
    gc.collect()
    references = (
        sys.getrefcount(plan),
        sys.getrefcount(outputs),
        sys.getrefcount(first_output),
        sys.getrefcount(input_id),
    )
    objects = len(gc.get_objects())

    tracemalloc.start()
    try:
        route_many_times(lists, plans, 3000)
        gc.collect()
        grown_bytes = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    # 3,000 rounds make 24,000 route_outputs calls, so one leaked object or
    # string per call would add more than a megabyte.
    assert grown_bytes < 64 * 1024
    assert len(gc.get_objects()) - objects < 100
    assert sys.getrefcount(plan) == references[0]
    assert sys.getrefcount(outputs) == references[1]
    assert sys.getrefcount(first_output) == references[2]
    assert sys.getrefcount(input_id) == references[3]


# --- Direct calls with objects orjson never builds ------------------------------------


class DictSubclass(dict):  # type: ignore[type-arg]
    pass


class StrSubclass(str):
    pass


def non_json_outputs() -> list[Any]:
    """Valid outputs with one part replaced by an object that orjson never builds."""
    cases: list[Any] = [DictSubclass(output("a")), None, 7, "output", [output("b")]]
    replacements: list[tuple[tuple[Any, ...], Any]] = [
        (("input", "id"), StrSubclass("x")),
        (("model", "id"), StrSubclass("classifier")),
        (("model",), DictSubclass(output("c")["model"])),
        (("input", "data", "metadata"), {1: "non-str key"}),
        (("input", "data", "metadata"), DictSubclass(group="g")),
        (("status", "code"), True),
        (("data", "concepts", 0, "value"), False),
        (("data", "concepts", 0, "id"), StrSubclass("cat")),
        (("data", "concepts"), (("cat", 0.5),)),
    ]
    for path, value in replacements:
        cases.append(mutate(output("d"), path, value))
    cyclic = output("e")
    cyclic["input"]["data"]["metadata"]["self"] = cyclic["input"]["data"]["metadata"]
    cases.append(cyclic)
    looped: list[Any] = []
    looped.append(looped)
    cases.append(output("f", metadata={"loop": looped}))
    extra_keys: dict[Any, Any] = output("g")
    extra_keys[1] = "int key"
    extra_keys["model"][None] = "None key"
    cases.append(extra_keys)
    return cases


@pytest.mark.parametrize("document", non_json_outputs())
def test_non_json_objects_check_alike(document: Any) -> None:
    assert_check_alike(document)


WRONG_ARGUMENTS = [
    ("outputs tuple", lambda plans: ((output("a"),), "caller-1", plans)),
    ("caller None", lambda plans: ([output("a")], None, plans)),
    ("caller bytes", lambda plans: ([output("a")], b"caller-1", plans)),
    ("plans mappingproxy", lambda plans: ([], "c", types.MappingProxyType(plans))),
    ("two arguments", lambda plans: ([output("a")], "caller-1")),
]


@pytest.mark.parametrize(
    "make_arguments",
    [make for _, make in WRONG_ARGUMENTS],
    ids=[name for name, _ in WRONG_ARGUMENTS],
)
def test_wrong_argument_types_raise(make_arguments: Any) -> None:
    plans = plans_of(every_kind_of_collector())
    with pytest.raises(TypeError):
        _stage_one.route_outputs(*make_arguments(plans))


def test_keyword_arguments_raise() -> None:
    with pytest.raises(TypeError):
        _stage_one.route_outputs(outputs=[], caller_user_id="c", plans={})


def test_sha256_rejects_str() -> None:
    with pytest.raises(TypeError):
        _stage_one.sha256("text")


# The subprocess loads the same extension file as this process. It defines a
# valid output and PLAN, the plan that `_plan` builds for a collector that
# samples half of its inputs (argv[2]). Its `route` calls the entry point named
# in argv[3] and prints the name of the exception raised, or "returned".
SUBPROCESS_PRELUDE = """
import ast
import importlib.util
import json
import sys

spec = importlib.util.spec_from_file_location("agents._stage_one", sys.argv[1])
_stage_one = importlib.util.module_from_spec(spec)
spec.loader.exec_module(_stage_one)

SOURCE = "owner/models/classifier"
PLAN = ast.literal_eval(sys.argv[2])
# The counts travel as bytes, because ast.literal_eval cannot read a bytearray.
PLAN = (*PLAN[:-1], bytearray(PLAN[-1]))


def output(input_id):
    return {
        "id": "out",
        "status": {"code": 10000},
        "model": {
            "id": "classifier",
            "user_id": "owner",
            "app_id": "models",
            "model_version": {"id": "v1"},
        },
        "input": {"id": input_id, "data": {"image": {"url": "https://a.example/a"}}},
        "data": {"concepts": [{"id": "cat", "name": "cat", "value": 0.6}]},
    }


def with_fields(changes):
    plan = list(PLAN)
    for index, value in changes.items():
        plan[index] = value
    return tuple(plan)


def route(outputs, plans):
    try:
        if sys.argv[3] == "route_outputs":
            _stage_one.route_outputs(outputs, "caller-1", plans)
        else:
            event = {
                "id": "e",
                "created_at": "2026-12-04T10:00:00Z",
                "caller": {"user_id": "caller-1"},
                "outputs": outputs,
            }
            _stage_one.route_event(json.dumps(event).encode(), plans, [])
    except Exception as error:
        print(type(error).__name__)
    else:
        print("returned")
"""


def sample_plan_literal() -> str:
    """Return the plan of a collector that samples half of its inputs, with its
    view replaced by a str so that the plan is a Python literal."""
    plan = _plan(view("sample", pre_queue_random_sample=0.5))
    return repr(("view", *plan[1:-1], bytes(plan[-1])))


def run_in_subprocess(
    code: str, entry_point: str = "route_outputs"
) -> subprocess.CompletedProcess[str]:
    script = SUBPROCESS_PRELUDE + textwrap.dedent(code)
    arguments = [_stage_one.__file__, sample_plan_literal(), entry_point]
    return subprocess.run(
        [sys.executable, "-c", script, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


# The extension's entry points that take plans. route_event exists only in
# builds that parse raw events.
ENTRY_POINTS = [
    name for name in ("route_outputs", "route_event") if hasattr(_stage_one, name)
]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_subprocess_prelude_routes(entry_point: str) -> None:
    # The malformed cases below change one thing in a call that works.
    completed = run_in_subprocess(
        "route([output('a'), output('b')], {SOURCE: (PLAN,)})", entry_point
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "returned"


BOTH = ("route_outputs", "route_event")


def thresholder_plans(fields: str) -> str:
    """Return a plans expression whose plan is a concept-thresholder (rule 3,
    comparator 1) without a sample, with `fields` changed too."""
    return "{SOURCE: (with_fields({7: False, 10: 3, 12: 1, " + fields + "}),)}"


# Plans that break a type the entry points read: the name, the plans expression
# and the entry points that read it. Each must raise TypeError, not read the
# wrong type (a crash, a SystemError or a wrong decision).
MALFORMED_PLANS: list[tuple[str, str, tuple[str, ...]]] = [
    ("views list", "{SOURCE: [PLAN]}", BOTH),
    ("views str", "{SOURCE: 'v'}", BOTH),
    ("views None", "{SOURCE: None}", BOTH),
    ("plan None", "{SOURCE: (None,)}", BOTH),
    ("plan list", "{SOURCE: (list(PLAN),)}", BOTH),
    ("plan of 3", "{SOURCE: (PLAN[:3],)}", BOTH),
    ("plan empty", "{SOURCE: ((),)}", BOTH),
    ("plan of 15", "{SOURCE: (PLAN[:15],)}", BOTH),
    ("version None", "{SOURCE: (with_fields({4: None}),)}", BOTH),
    ("version int", "{SOURCE: (with_fields({4: 7}),)}", BOTH),
    ("caller int", "{SOURCE: (with_fields({3: 7}),)}", BOTH),
    ("prefix str", "{SOURCE: (with_fields({8: 'k/'}),)}", BOTH),
    ("limit None", "{SOURCE: (with_fields({9: None}),)}", BOTH),
    ("rule str", "{SOURCE: (with_fields({10: '1'}),)}", BOTH),
    ("threshold int", "{SOURCE: (with_fields({7: False, 10: 1, 11: 1}),)}", BOTH),
    (
        "threshold int in thresholds",
        thresholder_plans("13: {'cat': 0}, 15: ((b'cat', 0),)"),
        BOTH,
    ),
    ("key None", "{SOURCE: (with_fields({16: None}),)}", BOTH),
    ("key prefix str", "{SOURCE: (with_fields({17: 'k/'}),)}", BOTH),
    ("counts bytes", "{SOURCE: (with_fields({19: bytes(32)}),)}", BOTH),
    ("counts too short", "{SOURCE: (with_fields({19: bytearray(31)}),)}", BOTH),
    (
        "pairs None",
        thresholder_plans("13: {'cat': 0.5}, 15: None"),
        ("route_event",),
    ),
    (
        "pair key str",
        thresholder_plans("13: {'cat': 0.5}, 15: (('cat', 0.5),)"),
        ("route_event",),
    ),
]


def malformed_plan_cases() -> list[Any]:
    return [
        pytest.param(plans, entry_point, id=f"{name}-{entry_point}")
        for name, plans, readers in MALFORMED_PLANS
        for entry_point in ENTRY_POINTS
        if entry_point in readers
    ]


@pytest.mark.parametrize(("plans", "entry_point"), malformed_plan_cases())
def test_malformed_plans_raise_type_error(plans: str, entry_point: str) -> None:
    completed = run_in_subprocess(
        f"route([output('a'), output('b')], {plans})", entry_point
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "TypeError"


def test_truth_hook_clearing_outputs() -> None:
    completed = run_in_subprocess(
        """
        class ClearsOutputs:
            def __bool__(self):
                outputs.clear()
                return True

        outputs = [output("a"), output("b"), output("c")]
        # The only data value, so that the truth test reaches it.
        outputs[0]["data"] = {"x": ClearsOutputs()}
        route(outputs, {SOURCE: (PLAN,)})
        """
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
