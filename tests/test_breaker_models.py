"""Output validation: the hand-written fast path against the pydantic models.

The rules and the queue read the raw output after validation, so validation must
not accept a value that it would have to convert to be usable.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from clarifai_grpc.grpc.api import resources_pb2
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from app.models import PredictionOutput, fast_output_fields, output_fields

VALID: dict[str, Any] = {
    "id": "out-1",
    "status": {"code": 10000},
    "model": {
        "id": "m",
        "user_id": "u",
        "app_id": "a",
        "model_version": {"id": "v"},
    },
    "input": {"id": "in-1", "data": {"image": {"url": "https://x/1.jpg"}}},
    "data": {"concepts": [{"id": "cat", "name": "cat", "value": 0.5}]},
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """Return VALID with the value at a dotted path (list indexes as digits)
    replaced."""
    document = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target: Any = document
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return document


CASES = [
    ("data.concepts.0.value", "0.9"),
    ("data.concepts.0.value", True),
    ("data.concepts.0.value", None),
    ("data.concepts.0.value", 1),
    ("data.concepts.0.value", 0),
    ("data.concepts.0.value", 1.0000001),
    ("data.concepts.0.value", -0.0),
    ("data.concepts.0.id", 5),
    ("data.concepts.0.id", ""),
    ("data.concepts.0.name", None),
    ("data.concepts", {"id": "cat"}),
    ("data", []),
    ("status.code", "10000"),
    ("status.code", 10000.0),
    ("status.code", True),
    ("status", "ok"),
    ("model.id", 5),
    ("model.user_id", ""),
    ("model.model_version", "v"),
    ("model.model_version.id", 7),
    ("input.id", "   "),
    ("input.id", "ünï-😀"),
    ("input.data.image", {"url": 5}),
    ("input.data.image", {"url": ""}),
    ("input.data.image", {"base64": "aGVsbG8="}),
    ("input.data.text", {"raw": "hello"}),
    ("input.data.metadata", []),
    ("input.data.metadata", {"camera": {"id": 3}}),
    ("id", 9),
]


@pytest.mark.parametrize(("path", "value"), CASES)
def test_fast_path_agrees_with_models(path: str, value: Any) -> None:
    document = changed(path, value)
    try:
        PredictionOutput.model_validate(document)
        accepted = True
    except ValidationError:
        accepted = False

    fast = fast_output_fields(document)
    if not accepted:
        assert fast is None, "the fast path accepts what the models reject"
        with pytest.raises(ValidationError):
            output_fields(document)
    elif fast is not None:
        assert fast == output_fields(copy.deepcopy(document))


@pytest.mark.parametrize("value", ["0.9", True, "1e-5", "0.5"])
def test_concept_value_needs_json_number(value: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        output_fields(changed("data.concepts.0.value", value))
    assert "data.concepts.0.value" in str(raised.value)


@pytest.mark.parametrize("value", [1, 0, 0.25])
def test_concept_value_accepts_numbers(value: float) -> None:
    fields = output_fields(changed("data.concepts.0.value", value))
    assert fields.input_id == "in-1"
    assert fields.source_key == "u/a/m"


def test_concept_without_value_accepted() -> None:
    concept = MessageToDict(
        resources_pb2.Concept(id="cat", name="cat", value=0.0),
        preserving_proto_field_name=True,
    )
    assert "value" not in concept
    document = changed("data.concepts", [concept])

    fields = output_fields(document)

    assert fields.input_id == "in-1"


def _nested_metadata(levels: int) -> dict[str, Any]:
    """Return metadata whose objects and arrays nest `levels` deep, alternating."""
    value: Any = "leaf"
    for level in range(levels - 1):
        value = [value] if level % 2 else {"next": value}
    return {"top": value} if levels > 1 else {"top": "leaf"}


@pytest.mark.parametrize("levels", [1, 2, 63, 64])
def test_metadata_at_depth_limit_accepted(levels: int) -> None:
    document = changed("input.data.metadata", _nested_metadata(levels))
    assert fast_output_fields(document) is not None
    assert output_fields(document).input_id == "in-1"


@pytest.mark.parametrize("levels", [65, 66, 500])
def test_metadata_past_depth_limit_rejected(levels: int) -> None:
    document = changed("input.data.metadata", _nested_metadata(levels))
    assert fast_output_fields(document) is None
    with pytest.raises(ValidationError, match="nested more than 64 levels"):
        output_fields(document)
