"""Metadata filters of vector queries: `field: value` (equal) or `field: {op: value}` with
the ops below; every field must match (docs/toolkit.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Mapping

_OPS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte")


def _holds(op: str, value: Any, arg: Any) -> bool:
    if op == "$eq":
        return bool(value == arg)
    if op == "$ne":
        return bool(value != arg)
    if op == "$in":
        return value in arg
    if op == "$nin":
        return value not in arg
    if value is None:
        return False
    if op == "$gt":
        return bool(value > arg)
    if op == "$gte":
        return bool(value >= arg)
    if op == "$lt":
        return bool(value < arg)
    return bool(value <= arg)  # $lte


def matches(metadata: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    for field, cond in where.items():
        value = metadata.get(field)
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        for op, arg in ops.items():
            try:
                if not _holds(op, value, arg):
                    return False
            except TypeError:  # comparing unlike types: not a match
                return False
    return True


def check_filter(where: Any) -> dict[str, Any]:
    if where is None:
        return {}
    if not isinstance(where, dict):
        raise InvalidArgument("a filter is an object of field: value or field: {op: value}")
    for field, cond in where.items():
        if isinstance(cond, dict):
            unknown = set(cond) - set(_OPS)
            if unknown or not cond:
                raise InvalidArgument(
                    f"filter on {field!r}: operators are {', '.join(_OPS)}, not {sorted(unknown)}"
                )
            for op in ("$in", "$nin"):
                if op in cond and not isinstance(cond[op], list):
                    raise InvalidArgument(f"filter on {field!r}: {op} takes a list")
    return where
