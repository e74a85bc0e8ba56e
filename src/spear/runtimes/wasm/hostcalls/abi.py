"""The hostcall controller's WASM side: the `spear` import module and its conventions.

The ABI contract is `docs/hostcalls.md`. Conventions every function keeps:
- a result >= 0 is success; a negative errno is an expected failure, never a trap;
- a call that fills a guest buffer takes (out_ptr, out_len_ptr): it reads the capacity
  from *out_len_ptr, writes the length back, and answers -ENOSPC (with the needed length
  written) when the buffer is too small;
- pointers and lengths are checked against the guest's memory: a bad one is -EFAULT.

A wasm instance runs on one thread from start to end, so the task a hostcall serves is
found in a thread-local bound around the guest's entry point (`bound`).
"""

from __future__ import annotations

import ctypes
import errno
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.from_thread
import wasmtime

from spear._logging import logger
from spear.core.stats import hostcall_counter
from spear.runtimes.host.ops import HostError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from spear.core.worker import TaskContext

ABI_VERSION = 1
MODULE = "spear"

I32 = wasmtime.ValType.i32()
I64 = wasmtime.ValType.i64()


class GuestFault(Exception):
    """A guest pointer or length outside its memory (answered with -EFAULT)."""


# An expected failure with its errno (answered with minus its WASI number).
HostcallError = HostError

# Guests are compiled against wasi-libc, whose <errno.h> has WASI preview 1's numbers
# (EAGAIN 6, EINVAL 28, ...), not Linux's: a hostcall answers -EAGAIN as the guest sees it.
_WASI_ERRNO: dict[int, int] = {
    getattr(errno, name): number
    for number, name in enumerate(
        "_ E2BIG EACCES EADDRINUSE EADDRNOTAVAIL EAFNOSUPPORT EAGAIN EALREADY EBADF EBADMSG "
        "EBUSY ECANCELED ECHILD ECONNABORTED ECONNREFUSED ECONNRESET EDEADLK EDESTADDRREQ "
        "EDOM EDQUOT EEXIST EFAULT EFBIG EHOSTUNREACH EIDRM EILSEQ EINPROGRESS EINTR EINVAL "
        "EIO EISCONN EISDIR ELOOP EMFILE EMLINK EMSGSIZE EMULTIHOP ENAMETOOLONG ENETDOWN "
        "ENETRESET ENETUNREACH ENFILE ENOBUFS ENODEV ENOENT ENOEXEC ENOLCK ENOLINK ENOMEM "
        "ENOMSG ENOPROTOOPT ENOSPC ENOSYS ENOTCONN ENOTDIR ENOTEMPTY ENOTRECOVERABLE ENOTSOCK "
        "ENOTSUP ENOTTY ENXIO EOVERFLOW EOWNERDEAD EPERM EPIPE EPROTO EPROTONOSUPPORT "
        "EPROTOTYPE ERANGE EROFS ESPIPE ESRCH ESTALE ETIMEDOUT ETXTBSY EXDEV".split()
    )
    if name != "_"
}


WASI_EIO = _WASI_ERRNO[errno.EIO]


def wasi_errno(err: int) -> int:
    """The WASI preview 1 number of a Python (host) errno; EIO if WASI has none."""
    return _WASI_ERRNO.get(err, WASI_EIO)


T = TypeVar("T")
_U32 = 0xFFFFFFFF  # guest pointers and lengths arrive as i32: read them unsigned


class _Bound(threading.local):
    """What this thread's hostcalls act for: no task and no event loop until `bind`."""

    ctx: TaskContext | None = None
    token: Any = None


_local = _Bound()


def bind(ctx: TaskContext | None, token: Any = None) -> tuple[TaskContext | None, Any]:
    """Make `ctx` the task this thread's hostcalls act for, and `token` (anyio's
    `current_token()`) the event loop they call into; returns what they replace."""
    previous = (_local.ctx, _local.token)
    _local.ctx = ctx
    _local.token = token
    return previous


def in_loop(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Run a coroutine function on the node's event loop from the guest's thread."""
    return anyio.from_thread.run(fn, *args, token=_local.token)


def current() -> TaskContext:
    """The task this thread's hostcalls act for (a host bug if there is none)."""
    ctx = _local.ctx
    if ctx is None:
        raise RuntimeError("hostcall outside a task: no task bound to this thread")
    return ctx


def fill(mem: GuestMemory, out: int, out_len: int, produce: Callable[[int], bytes]) -> int:
    """Write what `produce(capacity)` returns to (out, *out_len), capacity being *out_len;
    its length. A `HostcallError` that says how much room it needs (-ENOSPC) writes that
    back to *out_len and leaves what was to be read where it is."""
    out_len &= _U32
    capacity = mem.read_u32(out_len)
    try:
        data = produce(capacity)
    except HostcallError as exc:
        if exc.needed is not None:
            mem.write_u32(out_len, exc.needed)
        raise
    mem.write_u32(out_len, len(data))
    mem.write(out & _U32, data)
    return len(data)


class GuestMemory:
    """Bounds-checked access to the calling instance's exported `memory`."""

    _size: int  # the memory's length, set when `_mem` is

    def __init__(self, caller: wasmtime.Caller) -> None:
        self._store = caller
        self._mem: wasmtime.Memory | None = None

    def _check(self, ptr: int, length: int) -> None:
        if self._mem is None:  # looked up on first use: most calls that need none are cheaper
            mem = self._store.get("memory")
            if not isinstance(mem, wasmtime.Memory):
                raise GuestFault  # the module exports no memory
            self._mem = mem
            self._size = mem.data_len(self._store)
        if ptr < 0 or length < 0 or ptr + length > self._size:
            raise GuestFault  # (answered -EFAULT: the guest sees no message)

    def view(self, ptr: int, length: int) -> memoryview:
        """The guest's bytes [ptr, ptr+length) in place: valid only during this hostcall."""
        self._check(ptr, length)
        if length == 0:
            return memoryview(b"")
        assert self._mem is not None
        base = ctypes.addressof(self._mem.data_ptr(self._store).contents)
        return memoryview((ctypes.c_ubyte * length).from_address(base + ptr)).cast("B")

    def read(self, ptr: int, length: int) -> bytes:
        self._check(ptr, length)
        return bytes(self.view(ptr, length))

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        length = memoryview(data).nbytes
        self._check(ptr, length)
        if length:
            self.view(ptr, length)[:] = memoryview(data).cast("B")

    def read_u32(self, ptr: int) -> int:
        return int(struct.unpack("<I", self.read(ptr, 4))[0])

    def write_u32(self, ptr: int, value: int) -> None:
        self.write(ptr, struct.pack("<I", value))

    def write_u64(self, ptr: int, value: int) -> None:
        self.write(ptr, struct.pack("<Q", value))

    def read_str(self, ptr: int, length: int) -> str:
        try:
            return self.read(ptr, length).decode()  # (UTF-8)
        except UnicodeDecodeError:  # the guest sees -EINVAL, no message
            raise HostcallError(errno.EINVAL) from None

    def fill(self, out_ptr: int, out_len_ptr: int, data: bytes | memoryview) -> int:
        """Write `data` to a guest buffer (out_ptr, out_len_ptr); -ENOSPC when too small."""
        capacity = self.read_u32(out_len_ptr)
        self.write_u32(out_len_ptr, len(data))
        if len(data) > capacity:
            return -wasi_errno(errno.ENOSPC)
        self.write(out_ptr, data)
        return len(data)


@dataclass(frozen=True, slots=True)
class _Definition:
    name: str
    params: tuple[wasmtime.ValType, ...]
    results: tuple[wasmtime.ValType, ...]
    fn: Callable[..., int]


REGISTRY: dict[str, _Definition] = {}
"""Every hostcall by name; each family's module registers its own when imported."""


def hostcall(
    name: str, params: tuple[wasmtime.ValType, ...], result: wasmtime.ValType = I32
) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register `fn(mem, ctx, *args) -> int` as `spear.<name>`; errors become -errno."""

    def register(fn: Callable[..., int]) -> Callable[..., int]:
        REGISTRY[name] = _Definition(name, params, (result,), fn)
        return fn

    return register


def adapt(defn: _Definition) -> Callable[..., Any]:
    fn, name = defn.fn, defn.name
    calls = hostcall_counter("wasm", name)

    def answer(caller: wasmtime.Caller, ctx: TaskContext, args: tuple[int, ...]) -> int:
        try:
            return fn(GuestMemory(caller), ctx, *args)
        except GuestFault:
            return -wasi_errno(errno.EFAULT)
        except HostError as exc:
            return -wasi_errno(exc.errno)
        except Exception:  # a host bug must fail this call, never the node
            logger.exception("hostcall spear.{} failed", name)
            return -WASI_EIO

    def call(caller: wasmtime.Caller, *args: int) -> int:
        calls[0] += 1
        ctx = current()
        trace = ctx.trace  # a traced task's hostcalls are spans (docs/observability.md)
        if trace is None:
            return answer(caller, ctx, args)
        started = time.time_ns()
        result = answer(caller, ctx, args)
        trace.hostcall(name, started, result)
        return result

    return call
