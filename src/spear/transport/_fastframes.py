"""Cheaper HTTP/2 frame reprs for h2: the same strings, without hexlifying whole payloads.

h2 (4.x) builds `repr(frame)` of every frame it receives, for a trace log line, whether
or not anything logs. hyperframe's repr of a DATA frame hexlifies its whole payload and
then keeps the first 20 characters: ~20 us a 16 KiB frame, over 1 ms for each MiB a node
or client receives (most of an object transfer's CPU besides copying). `install()`
replaces hyperframe's `_raw_data_repr` with one that hexlifies only the 10 bytes it
shows, which gives the same string (tested against hyperframe's own). It is called where
a server or client starts (transport/_speedups.py), and only on hyperframe 6.1 (pinned).
"""

from __future__ import annotations

import binascii

import hyperframe.frame

from spear.transport._tested import tested_version

TESTED = "6.1."  # hyperframe versions whose _raw_data_repr this one was compared with
_SHOWN = 10  # bytes: 20 hex characters
# hyperframe's own, kept before anything replaces it (None if it has none).
upstream = getattr(hyperframe.frame, "_raw_data_repr", None)


def _raw_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    shown = binascii.hexlify(data[:_SHOWN]).decode("ascii")
    return "<hex:" + shown + ("..." if len(data) > _SHOWN else "") + ">"


def installed() -> bool:
    return getattr(hyperframe.frame, "_raw_data_repr", None) is _raw_data_repr


def install() -> bool:
    """Replace hyperframe's `_raw_data_repr` (idempotent); False if this version is not
    the one tested, or has no such function."""
    if installed():
        return True
    if upstream is None or not tested_version("hyperframe", TESTED):
        return False
    hyperframe.frame._raw_data_repr = _raw_data_repr
    return True
