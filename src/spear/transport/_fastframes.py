"""Cheaper HTTP/2 frame reprs for h2: the same strings, without hexlifying whole payloads.

h2 (4.x) builds `repr(frame)` of every frame it receives, for a trace log line, whether
or not anything logs. hyperframe's repr of a DATA frame hexlifies its whole payload and
then keeps the first 20 characters: ~20 us a 16 KiB frame, over 1 ms for each MiB a node
or client receives (most of an object transfer's CPU besides copying). `install()`
replaces hyperframe's `_raw_data_repr` with one that hexlifies only the 10 bytes it
shows, which gives the same string (tested). If hyperframe has no such function any
more, nothing is replaced.
"""

from __future__ import annotations

import binascii

import hyperframe.frame

_SHOWN = 10  # bytes: 20 hex characters


def _raw_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    shown = binascii.hexlify(data[:_SHOWN]).decode("ascii")
    return "<hex:" + shown + ("..." if len(data) > _SHOWN else "") + ">"


def install() -> None:
    if hasattr(hyperframe.frame, "_raw_data_repr"):
        hyperframe.frame._raw_data_repr = _raw_data_repr
