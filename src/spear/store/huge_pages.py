"""A large value read whole into new memory: one `bytes`, on the kernel's huge pages.

New memory costs a page fault for each 4 KiB page it fills, and on a virtual machine
(this one) each fault is dear: reading a 64 MiB value from its file's page cache into a
new `bytes` (`os.pread`) took 37-43 ms here, ~30 of them faulting the new memory in, a
fifth of a cross-node get's time (docs/benchmarks.md, "A large value's memory"). The same
read into memory advised for transparent huge pages (`madvise(MADV_HUGEPAGE)`: 2 MiB
pages, 512 times fewer faults; the kernel's default THP mode, `madvise`, gives them to
memory that asks) took 13-14 ms.

Python makes a `bytes` and fills it in one step, so nothing can advise its memory in
between. Here CPython's C API does what it allows a C extension: a `bytes` made with
unset contents (`PyBytes_FromStringAndSize(NULL, size)`), its whole huge pages advised,
then filled through a writable view of its memory before anyone else holds it. It is
written by hand because no library makes one (numpy's arrays are not `bytes`, and an
`mmap` is neither hashable nor compared by value, as a value's callers expect).

Below `LARGE` the memory is not advised (memory that size is mostly reused, already
faulted in: glibc's malloc maps fresh memory only above a threshold that rises to 32
MiB), but a `bytes` is still filled in place, without the copy a `bytearray` read would
need to become one. Away from CPython on Linux, or if ctypes cannot reach the C API, a
`bytearray` is filled and copied into a `bytes`.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

LARGE = 4 << 20  # a value this large or larger is read into huge pages
HUGE_PAGE = 2 << 20  # x86-64's and arm64's transparent huge page (4 KiB base pages)


def filled_bytes(size: int, fill: Callable[[memoryview], object]) -> bytes:
    """A new `bytes` of `size`, filled by `fill` (given a writable view of all of it,
    which it must fill whole or raise): on huge pages from `LARGE` up. What `fill` raises
    is raised, and the memory is dropped."""
    api = _c_api()
    if api is None:  # (a copy more, where this is not CPython on Linux)
        buffer = bytearray(size)
        fill(memoryview(buffer))
        return bytes(buffer)
    make, address_of, madvise = api
    value: bytes = make(None, size)  # (contents unset: filled below, before it is shared)
    address: int = address_of(value)
    first = -(-address // HUGE_PAGE) * HUGE_PAGE
    last = (address + size) // HUGE_PAGE * HUGE_PAGE
    if size >= LARGE and last > first:  # (failing, as without THP, it is only slower)
        madvise(first, last - first, mmap.MADV_HUGEPAGE)
    window = (ctypes.c_char * size).from_address(address)
    with memoryview(window).cast("B") as view:
        fill(view)
    return value


@functools.cache
def _c_api() -> tuple[Any, Any, Any] | None:
    """CPython's `PyBytes_FromStringAndSize` and `PyBytes_AsString`, and libc's `madvise`;
    None where they are not to be had."""
    if sys.implementation.name != "cpython" or not sys.platform.startswith("linux"):
        return None
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    try:
        # (functions of their own: `pythonapi[name]` is not the one others' code shares)
        make = ctypes.pythonapi["PyBytes_FromStringAndSize"]
        make.restype, make.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_ssize_t]
        address_of = ctypes.pythonapi["PyBytes_AsString"]
        address_of.restype, address_of.argtypes = ctypes.c_void_p, [ctypes.py_object]
        madvise = ctypes.CDLL(None, use_errno=True)["madvise"]
        madvise.restype = ctypes.c_int
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (AttributeError, OSError):
        return None
    return make, address_of, madvise


__all__ = ["LARGE", "filled_bytes"]
