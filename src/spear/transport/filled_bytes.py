"""A value read from a connection into one new `bytes`, filled in place.

Python reads into a writable buffer (`readinto`: a `bytearray`), and a value's callers get
`bytes` (hashable, compared by value, what `spear.Client.get_object` promises), so a value
read over the transfer service was copied whole once more to become one: a new 64 MiB
`bytes` and its copy took 27-36 ms here, a third of a client's 64 MiB get.

Here CPython's C API does what it allows a C extension: a `bytes` made with unset
contents (`PyBytes_FromStringAndSize(NULL, size)`), filled through a writable view of its
memory before anyone else holds it. It is written by hand because no library makes one
(numpy's arrays are not `bytes`; an `mmap` is neither hashable nor compared by value).
Away from CPython, or if ctypes cannot reach the C API, a `bytearray` is filled and copied.

Measured and not kept: advising a large value's memory for transparent huge pages
(`madvise(MADV_HUGEPAGE)`) halved a 64 MiB get's median on this machine, but its huge
pages are the very blocks the VM hands back to its host (free page reporting works on
2 MiB blocks), so one get in ten took 5-15 times longer and the mean got worse
(docs/benchmarks.md, "Value files written over, and a value's memory").
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable


def filled_bytes(size: int, fill: Callable[[memoryview], object]) -> bytes:
    """A new `bytes` of `size`, filled by `fill` (given a writable view of all of it,
    which it must fill whole or raise). What `fill` raises is raised, and the memory is
    dropped."""
    api = _c_api()
    if api is None:  # (a copy more)
        buffer = bytearray(size)
        fill(memoryview(buffer))
        return bytes(buffer)
    make, address_of = api
    value: bytes = make(None, size)  # (contents unset: filled below, before it is shared)
    window = (ctypes.c_char * size).from_address(address_of(value))
    with memoryview(window).cast("B") as view:
        fill(view)
    return value


@functools.cache
def _c_api() -> tuple[Any, Any] | None:
    """CPython's `PyBytes_FromStringAndSize` and `PyBytes_AsString`; None where they are
    not to be had."""
    if sys.implementation.name != "cpython":
        return None
    try:
        # (functions of their own: `pythonapi[name]` is not the one others' code shares)
        make = ctypes.pythonapi["PyBytes_FromStringAndSize"]
        make.restype, make.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_ssize_t]
        address_of = ctypes.pythonapi["PyBytes_AsString"]
        address_of.restype, address_of.argtypes = ctypes.c_void_p, [ctypes.py_object]
    except (AttributeError, OSError):
        return None
    return make, address_of


__all__ = ["filled_bytes"]
