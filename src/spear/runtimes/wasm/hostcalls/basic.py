"""Hostcalls every agent has: the ABI version and logging into the task's log."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from spear.runtimes.host import ops as hostops
from spear.runtimes.wasm.hostcalls.abi import ABI_VERSION, I32, HostcallError, hostcall

if TYPE_CHECKING:
    from spear.core.worker import TaskContext
    from spear.runtimes.wasm.hostcalls.abi import GuestMemory


@hostcall("abi_version", ())
def abi_version(mem: GuestMemory, ctx: TaskContext) -> int:
    """The ABI version this host speaks (docs/hostcalls.md)."""
    return ABI_VERSION


@hostcall("log", (I32, I32, I32))
def log(mem: GuestMemory, ctx: TaskContext, level: int, ptr: int, length: int) -> int:
    """Write one message at a level (0 trace .. 4 error) to the task's agent log."""
    if length > hostops.MAX_LOG_MESSAGE:
        raise HostcallError(errno.E2BIG, "log message too long")
    hostops.log(ctx, level, mem.read(ptr, length).decode("utf-8", errors="replace"))
    return 0
