"""A gRPC ``CheckRequest``'s attributes as opa-envoy-plugin maps them into ``input.attributes``.

The plugin walks the message by proto reflection (``envoyauth/protomap.go``): keys are each
field's JSON name, only populated fields appear, int64 values stay numbers, ``Timestamp`` is
``{seconds, nanos}``, ``Struct`` becomes a plain object, bytes are base64 and enums numbers.
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

STRUCT = "google.protobuf.Struct"


def protomap(message: Message) -> dict[str, Any]:
    """The plugin's map of ``message``: populated fields only, by JSON name."""
    if message.DESCRIPTOR.full_name == STRUCT:
        value = json_format.MessageToDict(message)
        return dict(_whole_numbers(value))
    result: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[field.json_name] = {str(k): _scalar(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            result[field.json_name] = [_scalar(field, v) for v in value]
        else:
            result[field.json_name] = _scalar(field, value)
    return result


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return protomap(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def _whole_numbers(value: Any) -> Any:
    """Struct numbers are doubles; OPA prints a whole one without ``.0``, so keep it an int."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value
