"""Conversion of REST bodies and gRPC messages into one request-dict shape.

Handlers see the same dict whichever transport a request came by. It has proto field
names, enums as integers, bytes as base64 text, and every Concept with its `value`.
Whole numbers are ints, also inside Struct fields such as `metadata` and
`output_info.params`, where protobuf keeps every number as a double.

A Concept's `value` follows Clarifai's rule: absent in JSON means 1.0, while over
gRPC an unset value is 0.0 because proto3 cannot tell the two apart.

A REST body keeps its field presence: a field sent with an empty value stays in the
dict, so PatchCollectors over REST can clear a field. gRPC carries no presence for
scalars, so there an empty value is the same as an absent field.

A REST body may also carry fields of this service's own that the message lacks,
such as a collector's `metadata` (see `body_to_request`'s `extensions`). They pass
through unchecked, and the handlers validate them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from google.protobuf.message import Message

from app.api.errors import CONN_INVALID_REQUEST, ApiError

CONCEPT = "clarifai.api.Concept"
_NESTED_ERROR = re.compile(r"Failed to parse (\w+) field: ")


def message_to_request(message: Message) -> dict[str, Any]:
    """Convert a gRPC request message to a request dict."""
    data = MessageToDict(
        message, preserving_proto_field_name=True, use_integers_for_enums=True
    )
    _add_concept_values(message, data)
    request: dict[str, Any] = _whole_numbers_as_ints(data)
    return request


def body_to_request(
    body: dict[str, Any],
    message_type: type[Message],
    extensions: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Check a REST JSON body against the request message and convert it.

    `extensions` lists (repeated field, item field) pairs, such as ("collectors",
    "metadata"): the item field is taken out of each item of the repeated field
    before the check and put back into the same item afterwards, as it was sent.
    Raises ApiError 11102 naming the field when a value has the wrong type or a
    field does not exist.
    """
    extension_values = [
        (list_name, item_name, _take_item_field(body, list_name, item_name))
        for list_name, item_name in extensions
    ]
    _default_concept_values(body, message_type.DESCRIPTOR)
    try:
        message = ParseDict(body, message_type(), ignore_unknown_fields=False)
    except ParseError as error:
        raise ApiError(CONN_INVALID_REQUEST, describe_parse_error(error)) from error
    except (ValueError, TypeError, RecursionError) as error:
        raise ApiError(
            CONN_INVALID_REQUEST, f"invalid request body: {error}"
        ) from error

    sparse = MessageToDict(
        message, preserving_proto_field_name=True, use_integers_for_enums=True
    )
    _add_concept_values(message, sparse)
    full = MessageToDict(
        message,
        preserving_proto_field_name=True,
        use_integers_for_enums=True,
        always_print_fields_with_no_presence=True,
    )
    request: dict[str, Any] = _whole_numbers_as_ints(_keep_presence(sparse, full, body))
    for list_name, item_name, values in extension_values:
        items = request.get(list_name) or []
        for index, value in values.items():
            items[index][item_name] = value
    return request


def _take_item_field(
    body: dict[str, Any], list_name: str, item_name: str
) -> dict[int, Any]:
    """Remove `item_name` from each object in `body[list_name]` and return the
    removed values by item index."""
    items = body.get(list_name)
    if not isinstance(items, list):
        return {}
    return {
        index: item.pop(item_name)
        for index, item in enumerate(items)
        if isinstance(item, dict) and item_name in item
    }


def describe_parse_error(error: ParseError) -> str:
    """Turn protobuf's nested parse message into `path: problem`."""
    text = str(error).split("\n", 1)[0]
    path = _NESTED_ERROR.findall(text)
    detail = _NESTED_ERROR.sub("", text).rstrip(".")
    if path:
        return f"{'.'.join(path)}: {detail}"
    return f"invalid request body: {detail}"


def _add_concept_values(message: Message, data: dict[str, Any]) -> None:
    """Give every Concept in `data` its `value`, which MessageToDict leaves out
    when it is 0."""
    for field, value in message.ListFields():
        if not _is_clarifai_message(field):
            continue
        child = data.get(field.name)
        if field.is_repeated:
            pairs = list(zip(value, child or []))
        else:
            pairs = [(value, child)]
        for sub_message, sub_data in pairs:
            if not isinstance(sub_data, dict):
                continue
            if field.message_type.full_name == CONCEPT:
                sub_data.setdefault("value", float(sub_message.value))
            _add_concept_values(sub_message, sub_data)


def _default_concept_values(body: Any, descriptor: Descriptor) -> None:
    """Set `value` to 1.0 in every Concept of a JSON body that has none."""
    if not isinstance(body, dict):
        return
    for field in descriptor.fields:
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        child = body.get(field.name, body.get(field.json_name))
        items = child if field.is_repeated and isinstance(child, list) else [child]
        for item in items:
            if not isinstance(item, dict):
                continue
            if field.message_type.full_name == CONCEPT:
                item.setdefault("value", 1.0)
            elif _is_clarifai_message(field):
                _default_concept_values(item, field.message_type)


def _is_clarifai_message(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return (
        message_type is not None
        and not message_type.GetOptions().map_entry
        and message_type.full_name.startswith("clarifai.")
    )


def _keep_presence(sparse: Any, full: Any, raw: Any) -> Any:
    """Return `sparse` plus the fields that `raw` sent with default values.

    `sparse` and `full` are the message printed without and with default values,
    and `raw` is the JSON that was parsed.
    """
    if isinstance(full, dict) and isinstance(raw, dict):
        sparse_dict = sparse if isinstance(sparse, dict) else {}
        result = {}
        for name, value in full.items():
            raw_name = name if name in raw else _camel(name)
            if name in sparse_dict or raw_name in raw:
                result[name] = _keep_presence(
                    sparse_dict.get(name), value, raw.get(raw_name)
                )
        return result
    if isinstance(full, list) and isinstance(raw, list):
        sparse_list = sparse if isinstance(sparse, list) else []
        return [
            _keep_presence(
                sparse_list[i] if i < len(sparse_list) else None,
                item,
                raw[i] if i < len(raw) else None,
            )
            for i, item in enumerate(full)
        ]
    return sparse if sparse is not None else full


def _camel(name: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda match: match.group(1).upper(), name)


def _whole_numbers_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_ints(item) for item in value]
    return value
