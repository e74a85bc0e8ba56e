"""`fd_write` for guests run inline: their stdout and stderr go straight to the run's
sinks, not through WASI's output streams.

wasmtime's WASI hands each write to a custom stdout (`WasiConfig.stdout_custom`) through
its tokio runtime: a round trip to a worker thread that costs a trivial guest several
times the rest of its run (measured: a guest writing one line, 50 us of wall time and
20 us of a tokio worker's CPU with the custom stdout, 12 us with none; on two busy cores
the hand-off is most of an HTTP request-mode request). A guest run inline (agent.py:
WASI-only imports, no preopened directory, stdin as bytes) has no file descriptor to
write to but 1 and 2, so the pooled linker of inline runs defines `fd_write` here,
writing to the sinks the run set with `holding`; any other descriptor is EBADF, as WASI
would answer. Inline runs are one at a time on the event loop's thread; the sinks are
per thread.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from typing import TYPE_CHECKING, Any

from spear.runtimes.wasm import _wasmtime

if TYPE_CHECKING:
    from collections.abc import Callable

    import wasmtime

WASI = "wasi_snapshot_preview1"
_ERRNO_BADF = 8
_ERRNO_FAULT = 21
_ERRNO_INVAL = 28
_MAX_IOVS = 1024  # (IOV_MAX)
_local = threading.local()


def holding(stdout: Callable[[bytes], None], stderr: Callable[[bytes], None]) -> _Holding:
    """While it is held, this thread's inline guest writes fd 1 to `stdout`, 2 to `stderr`."""
    return _Holding((stdout, stderr))


class _Holding:
    # (a class, not a generator's context manager: entered once per inline run)
    __slots__ = ("_previous", "_sinks")

    def __init__(self, sinks: tuple[Callable[[bytes], None], Callable[[bytes], None]]) -> None:
        self._sinks = sinks
        self._previous: Any = None

    def __enter__(self) -> None:
        self._previous = getattr(_local, "sinks", None)
        _local.sinks = self._sinks

    def __exit__(self, *exc: object) -> None:
        _local.sinks = self._previous


def define_fd_write(linker: wasmtime.Linker) -> None:
    """Shadow WASI's `fd_write` in `linker` (one already given `define_wasi`)."""
    linker.allow_shadowing = True
    try:
        _wasmtime.define_raw_function(linker, WASI, "fd_write", 4, _fd_write)
    finally:
        linker.allow_shadowing = False


def _fd_write(base: int, size: int, fd: int, iovs: int, count: int, written_at: int) -> int:
    sinks = getattr(_local, "sinks", None)
    if sinks is None or fd not in (1, 2) or not base:
        return _ERRNO_BADF
    if count > _MAX_IOVS:
        return _ERRNO_INVAL
    if iovs + 8 * count > size or written_at + 4 > size:
        return _ERRNO_FAULT
    sink = sinks[fd - 1]
    total = 0
    for ptr, length in struct.iter_unpack("<II", ctypes.string_at(base + iovs, 8 * count)):
        if ptr + length > size:
            return _ERRNO_FAULT
        if length:
            sink(ctypes.string_at(base + ptr, length))
            total += length
    ctypes.memmove(base + written_at, struct.pack("<I", total & 0xFFFFFFFF), 4)
    return 0
