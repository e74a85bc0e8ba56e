"""A value read into one new `bytes`, filled in place (transport/filled_bytes.py): a real
`bytes`, equal, hashed and owned as any other, and nothing of it kept when its filling
fails."""

from __future__ import annotations

import gc
import os
import resource
import sys

import pytest

from spear.transport import filled_bytes as module
from spear.transport.filled_bytes import filled_bytes

MiB = 1 << 20


def _filler(data: bytes):
    def fill(view: memoryview) -> None:
        assert len(view) == len(data) and not view.readonly
        view[:] = data

    return fill


@pytest.mark.parametrize("size", [0, 1, 4096, MiB + 7, 9 * MiB])
def test_the_value_is_a_bytes_equal_to_what_was_filled_in(size: int) -> None:
    data = os.urandom(size)
    value = filled_bytes(size, _filler(data))
    assert type(value) is bytes
    assert value == data
    assert hash(value) == hash(data)  # (its hash is computed from what was filled in)
    assert value[size // 2 :] == data[size // 2 :]


def test_it_is_filled_where_it_lies_not_copied_after() -> None:
    seen: list[memoryview] = []

    def fill(view: memoryview) -> None:
        view[:] = b"abcd"
        seen.append(view)

    value = filled_bytes(4, fill)
    assert value == b"abcd"
    with pytest.raises(ValueError, match="released"):  # (no view of it outlives the fill)
        seen[0][0]


def test_it_holds_no_reference_of_its_own_so_the_memory_goes_with_the_value() -> None:
    value = filled_bytes(MiB, _filler(bytes(MiB)))
    assert sys.getrefcount(value) == 2  # (this name and getrefcount's argument)
    # Many large values made and dropped in turn: the peak grows by about one of them,
    # not by all of them (a leaked reference would keep each).
    gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(20):
        value = filled_bytes(16 * MiB, _filler(bytes(16 * MiB)))
        del value
    grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grew_mib < 5 * 16, f"the process grew by {grew_mib:.0f} MiB"


def test_what_the_filling_raises_is_raised() -> None:
    def broken(view: memoryview) -> None:
        view[: len(view) // 2] = bytes(len(view) // 2)
        raise ConnectionError("the transfer broke halfway")

    with pytest.raises(ConnectionError, match="halfway"):
        filled_bytes(MiB, broken)


def test_away_from_cpythons_c_api_a_bytearray_is_filled_and_copied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "_c_api", lambda: None)
    data = os.urandom(MiB + 1)
    value = filled_bytes(len(data), _filler(data))
    assert type(value) is bytes and value == data
