"""Faster protobuf encoding with betterproto2 0.10: field defaults computed once.

Encoding a message compares every field with its default, and betterproto2 0.10 makes
that default afresh each time inside a `warnings.catch_warnings()` block (to silence
deprecated fields' warnings): about 6 us a field, half of the cost of encoding a
message, paid four times per remote call. The default is only ever compared with, so
for immutable defaults (numbers, strings, bytes, enums, None) the first one made is
kept per message class and field. Mutable ones (lists, messages) are still made each
time. `install()` is called where a server or client starts (transport/_speedups.py), is
idempotent, and replaces nothing on a betterproto2 other than 0.10 (pinned).
"""

from __future__ import annotations

import enum
from typing import Any

import betterproto2

from spear.transport._tested import tested_version

TESTED = "0.10."  # betterproto2 versions whose _get_field_default this one wraps
_IMMUTABLE = (int, float, str, bytes, bool, type(None), enum.Enum)
_MISSING = object()
# betterproto2's own, kept before anything replaces it.
upstream = betterproto2.Message._get_field_default
_cache: dict[tuple[type, str], Any] = {}


def _get_field_default(self: betterproto2.Message, field_name: str) -> Any:
    key = (type(self), field_name)
    value = _cache.get(key, _MISSING)
    if value is _MISSING:
        value = upstream(self, field_name)
        if isinstance(value, _IMMUTABLE):
            _cache[key] = value
    return value


def installed() -> bool:
    return betterproto2.Message._get_field_default is _get_field_default


def install() -> bool:
    """Replace `betterproto2.Message._get_field_default` (idempotent); False if this
    betterproto2 is not the version tested."""
    if installed():
        return True
    if not tested_version("betterproto2", TESTED):
        return False
    betterproto2.Message._get_field_default = _get_field_default  # type: ignore[method-assign]
    return True
