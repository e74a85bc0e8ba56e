"""Stream, readiness, time and sleep hostcalls (docs/hostcalls.md).

Marshalling only; the semantics are in `hostops`. A blocking call (poll, sleep) blocks the
guest's own worker thread, never the node's event loop or another task.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from spear.runtimes.host import ops as hostops
from spear.runtimes.wasm.hostcalls.abi import I32, I64, HostcallError, fill, hostcall

if TYPE_CHECKING:
    from spear.core.worker import TaskContext
    from spear.runtimes.wasm.hostcalls.abi import GuestMemory

_U32 = 0xFFFFFFFF
MAX_POLL_HANDLES = 1024
POLLFD = struct.Struct("<ihh")  # struct spear_pollfd: handle, events, revents


@hostcall("stream_caller", ())
def stream_caller(mem: GuestMemory, ctx: TaskContext) -> int:
    """The handle of the task's caller stream."""
    return hostops.stream_caller(ctx)


@hostcall("stream_read", (I32, I32, I32))
def stream_read(mem: GuestMemory, ctx: TaskContext, handle: int, out: int, out_len: int) -> int:
    """The next message into (out, *out_len): its length; -EAGAIN none yet; -EPIPE ended;
    -ENOSPC with the length needed written back (the message stays queued)."""
    return fill(mem, out, out_len, lambda capacity: hostops.stream_read(ctx, handle, capacity))


@hostcall("stream_write", (I32, I32, I32))
def stream_write(mem: GuestMemory, ctx: TaskContext, handle: int, ptr: int, length: int) -> int:
    """Send one message: its length; -EAGAIN queue full; -EPIPE nobody reads."""
    return hostops.stream_write(ctx, handle, mem.view(ptr & _U32, length & _U32))


@hostcall("close", (I32,))
def close(mem: GuestMemory, ctx: TaskContext, handle: int) -> int:
    hostops.close(ctx, handle)
    return 0


@hostcall("poll", (I32, I32, I32))
def poll(mem: GuestMemory, ctx: TaskContext, fds: int, count: int, timeout_ms: int) -> int:
    """Wait until one of `count` spear_pollfd entries is ready (timeout_ms < 0: no limit,
    0: just look); fills their revents; returns how many are ready (0 on timeout)."""
    count &= _U32
    if count > MAX_POLL_HANDLES:
        raise HostcallError(errno.EINVAL, f"at most {MAX_POLL_HANDLES} handles per poll")
    raw = mem.read(fds & _U32, POLLFD.size * count)
    entries = [POLLFD.unpack_from(raw, i * POLLFD.size) for i in range(count)]
    interests = [(handle, events & 0xFFFF) for handle, events, _ in entries]
    timeout = None if timeout_ms < 0 else timeout_ms / 1000
    ready = hostops.poll(ctx, interests, timeout)
    out = b"".join(
        POLLFD.pack(h, e, r if r < 0x8000 else r - 0x10000)
        for (h, e, _), r in zip(entries, ready, strict=True)
    )
    mem.write(fds & _U32, out)
    return sum(1 for r in ready if r)


@hostcall("time_now", (I32, I32))
def time_now(mem: GuestMemory, ctx: TaskContext, clock: int, out: int) -> int:
    """Nanoseconds on clock 0 (realtime, since the epoch) or 1 (monotonic) into *out."""
    mem.write_u64(out & _U32, hostops.now(ctx, clock))
    return 0


@hostcall("sleep", (I64,))
def sleep(mem: GuestMemory, ctx: TaskContext, nanos: int) -> int:
    """Sleep `nanos` ns without holding up other tasks; -ECANCELED if the task is stopped."""
    hostops.sleep(ctx, nanos / 1e9)
    return 0
