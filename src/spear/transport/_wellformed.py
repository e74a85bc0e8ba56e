"""Refuse a decoded message whose fields came in with the wrong wire type.

betterproto2 parses a field by its number and the wire type it finds, not the one the
schema declares: a varint sent for a string field decodes as an int, and the handler
then trips over it (a TypeError answered as INTERNAL). `check` walks a decoded message
against its schema (nested messages, repeated fields and maps included) and names the
first field of the wrong kind, so the codec can answer INVALID_ARGUMENT instead.
"""

from __future__ import annotations

import enum
from typing import Any, cast

import betterproto2

_INTS = frozenset(
    "int32 int64 uint32 uint64 sint32 sint64 fixed32 fixed64 sfixed32 sfixed64".split()
)


def _kind_ok(proto_type: str, value: Any) -> bool:
    if proto_type == "string":
        return isinstance(value, str)
    if proto_type == "bytes":
        return isinstance(value, bytes)
    if proto_type == "bool":
        return isinstance(value, bool)
    if proto_type in _INTS:
        return isinstance(value, int) and not isinstance(value, bool)
    if proto_type in ("float", "double"):
        return isinstance(value, float)
    if proto_type == "enum":
        return isinstance(value, (enum.Enum, int)) and not isinstance(value, bool)
    if proto_type == "message":
        return isinstance(value, betterproto2.Message) and check(value) is None
    return True  # a kind this walker does not know: trust the decoder


def check(message: betterproto2.Message) -> str | None:
    """None if every field has its schema's kind, else the name of the first that has not."""
    # (betterproto2's per-class field metadata; the one private name this module reads)
    fields: dict[str, Any] = cast("Any", type(message))._betterproto.meta_by_field_name
    for name, meta in fields.items():
        value = getattr(message, name)
        if value is None:
            if meta.optional or meta.group is not None or meta.proto_type == "message":
                continue  # an unset optional field, oneof member or message
            return name  # a plain scalar is never None, whatever the bytes said
        if meta.proto_type == "map":
            if not isinstance(value, dict):
                return name
            key_meta, value_meta = meta.map_meta or (None, None)
            for k, v in value.items():
                if key_meta is not None and not _kind_ok(key_meta.proto_type, k):
                    return name
                if value_meta is not None and not _kind_ok(value_meta.proto_type, v):
                    return name
        elif meta.repeated:
            if not isinstance(value, list) or not all(_kind_ok(meta.proto_type, v) for v in value):
                return name
        elif not _kind_ok(meta.proto_type, value):
            return name
    return None
