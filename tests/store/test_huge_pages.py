"""A large value read whole into new memory (store/huge_pages.py): a real `bytes`, equal,
hashed and owned as any other, its memory on transparent huge pages where the kernel
gives them, and nothing of it left behind when its filling fails."""

from __future__ import annotations

import gc
import os
import resource
import sys
from pathlib import Path

import pytest

from spear.store import huge_pages
from spear.store.huge_pages import LARGE, filled_bytes

MiB = 1 << 20


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "absent"
    return text.split("[", 1)[1].split("]", 1)[0]


def _huge_kib_within(start: int, size: int) -> int:
    """AnonHugePages of this process's mappings that overlap [start, start + size), in KiB
    (advising part of a mapping splits it: the huge part is a mapping of its own)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # a mapping's first line: start-end perms ...
            low, high = (int(x, 16) for x in head.split("-"))
            inside = low < start + size and start < high
        elif inside and head == "AnonHugePages:":
            total += int(line.split()[1])
    return total


def _filler(data: bytes):
    def fill(view: memoryview) -> None:
        assert len(view) == len(data) and not view.readonly
        view[:] = data

    return fill


@pytest.mark.parametrize("size", [0, 1, 4096, LARGE - 1, LARGE, 3 * LARGE + 5])
def test_the_value_is_a_bytes_equal_to_what_was_filled_in(size: int) -> None:
    data = os.urandom(size)
    value = filled_bytes(size, _filler(data))
    assert type(value) is bytes
    assert value == data
    assert hash(value) == hash(data)  # (its hash is computed from what was filled in)
    assert value[size // 2 :] == data[size // 2 :]


def test_it_holds_no_reference_of_its_own_so_the_memory_goes_with_the_value() -> None:
    value = filled_bytes(LARGE, _filler(bytes(LARGE)))
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
        filled_bytes(LARGE, broken)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or _thp_mode() not in ("always", "madvise"),
    reason="this kernel gives no transparent huge pages to memory that asks",
)
def test_a_large_value_lies_on_huge_pages() -> None:
    size = 32 * MiB
    value = filled_bytes(size, _filler(bytes(size)))
    address = id(value) + sys.getsizeof(b"") - 1  # (its first byte: CPython's ob_sval)
    # All but a partial huge page at either end may be huge; the kernel may give fewer
    # when its memory is fragmented, never none of 16 on a machine of free memory.
    assert _huge_kib_within(address, size) >= 4 * 2048


def test_a_small_value_is_not_advised(monkeypatch: pytest.MonkeyPatch) -> None:
    make, address_of, madvise = huge_pages._c_api() or pytest.skip("no CPython C API")
    advised: list[tuple[int, int]] = []
    monkeypatch.setattr(
        huge_pages,
        "_c_api",
        lambda: (make, address_of, lambda a, n, how: advised.append((a, n)) or 0),
    )
    filled_bytes(LARGE - 1, _filler(bytes(LARGE - 1)))
    assert advised == []
    filled_bytes(2 * LARGE, _filler(bytes(2 * LARGE)))
    [(start, length)] = advised
    assert start % huge_pages.HUGE_PAGE == 0 and length % huge_pages.HUGE_PAGE == 0
    assert LARGE <= length <= 2 * LARGE


def test_away_from_cpythons_c_api_a_bytearray_is_filled_and_copied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(huge_pages, "_c_api", lambda: None)
    data = os.urandom(LARGE + 1)
    value = filled_bytes(len(data), _filler(data))
    assert type(value) is bytes and value == data
