"""Object store hostcalls: `spear.obj_*` and `spear.result_set` (docs/hostcalls.md).

Marshalling only: keys and values come from guest memory (values in place, not copied
before they reach the store), answers go back into it; the semantics are in `hostops`.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Any, TypeVar

from spear.runtimes.host import ops as hostops
from spear.runtimes.wasm.hostcalls.abi import I32, I64, HostcallError, hostcall, in_loop
from spear.store.objects import MAX_KEY_BYTES

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from spear.core.worker import TaskContext
    from spear.runtimes.wasm.hostcalls.abi import GuestMemory

T = TypeVar("T")
_U32 = 0xFFFFFFFF
_MAX_RESULT = 0x7FFFFFFF  # an i32 result carries a length at most this
INFO_FORMAT = "<QQII"  # size, version, refcount, pinned: struct spear_obj_info


def call(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Run a hostops coroutine on the node's event loop from the guest's worker thread."""
    return in_loop(fn, *args)


def read_key(mem: GuestMemory, ptr: int, length: int) -> str:
    length &= _U32
    if length == 0 or length > MAX_KEY_BYTES:
        raise HostcallError(errno.EINVAL, f"a key is 1..{MAX_KEY_BYTES} bytes")
    return mem.read_str(ptr & _U32, length)


def _expected(version: int) -> int | None:
    """The ABI's expected version: -1 any, 0 absent, N exactly N."""
    if version == -1:
        return None
    if version < 0:
        raise HostcallError(errno.EINVAL, "expected version must be -1, 0 or a version")
    return version


def _out_u64(mem: GuestMemory, ptr: int, value: int) -> None:
    if ptr:
        mem.write_u64(ptr & _U32, value)


@hostcall("obj_put", (I32, I32, I32, I32, I64, I32))
def obj_put(
    mem: GuestMemory,
    ctx: TaskContext,
    key_ptr: int,
    key_len: int,
    val_ptr: int,
    val_len: int,
    expected_version: int,
    version_out: int,
) -> int:
    """Write an object (OCC with `expected_version`); its new version to *version_out."""
    key = read_key(mem, key_ptr, key_len)
    value = mem.view(val_ptr & _U32, val_len & _U32)
    version = call(hostops.obj_put, ctx, key, value, _expected(expected_version))
    _out_u64(mem, version_out, version)
    return 0


@hostcall("obj_get", (I32, I32, I32, I32, I32))
def obj_get(
    mem: GuestMemory,
    ctx: TaskContext,
    key_ptr: int,
    key_len: int,
    out_ptr: int,
    out_len_ptr: int,
    version_out: int,
) -> int:
    """Read an object into (out_ptr, *out_len_ptr); its length, or -ENOSPC with the
    length needed in *out_len_ptr. The version goes to *version_out."""
    key = read_key(mem, key_ptr, key_len)
    capacity = mem.read_u32(out_len_ptr & _U32)
    value, version = call(hostops.obj_get, ctx, key)
    size = value.nbytes
    if size > _MAX_RESULT:
        raise HostcallError(errno.EFBIG, "the object is too large for a 32-bit guest")
    mem.write_u32(out_len_ptr & _U32, size)
    _out_u64(mem, version_out, version)
    if size > capacity:
        raise HostcallError(errno.ENOSPC, "buffer too small", needed=size)
    mem.write(out_ptr & _U32, value)
    return size


@hostcall("obj_info", (I32, I32, I32))
def obj_info(mem: GuestMemory, ctx: TaskContext, key_ptr: int, key_len: int, out: int) -> int:
    """Fill a `struct spear_obj_info` (size, version, refcount, pinned)."""
    key = read_key(mem, key_ptr, key_len)
    info = call(hostops.obj_info, ctx, key)
    mem.write(
        out & _U32,
        struct.pack(INFO_FORMAT, info.size, info.version, info.refs, int(info.pinned)),
    )
    return 0


@hostcall("obj_list", (I32, I32, I32, I32))
def obj_list(
    mem: GuestMemory, ctx: TaskContext, prefix_ptr: int, prefix_len: int, out: int, out_len: int
) -> int:
    """Keys under a prefix, each ended by a NUL, into (out, *out_len); the number of keys."""
    prefix_len &= _U32
    if prefix_len > MAX_KEY_BYTES:
        raise HostcallError(errno.EINVAL, "prefix too long")
    prefix = mem.read_str(prefix_ptr & _U32, prefix_len)
    infos = call(hostops.obj_list, ctx, prefix)
    data = b"".join(i.key.encode() + b"\0" for i in infos)
    result = mem.fill(out & _U32, out_len & _U32, data)
    return result if result < 0 else len(infos)


@hostcall("obj_delete", (I32, I32, I64))
def obj_delete(
    mem: GuestMemory, ctx: TaskContext, key_ptr: int, key_len: int, expected_version: int
) -> int:
    key = read_key(mem, key_ptr, key_len)
    call(hostops.obj_delete, ctx, key, _expected(expected_version))
    return 0


@hostcall("obj_add_ref", (I32, I32))
def obj_add_ref(mem: GuestMemory, ctx: TaskContext, key_ptr: int, key_len: int) -> int:
    return call(hostops.obj_add_ref, ctx, read_key(mem, key_ptr, key_len))


@hostcall("obj_remove_ref", (I32, I32))
def obj_remove_ref(mem: GuestMemory, ctx: TaskContext, key_ptr: int, key_len: int) -> int:
    return call(hostops.obj_remove_ref, ctx, read_key(mem, key_ptr, key_len))


@hostcall("obj_pin", (I32, I32))
def obj_pin(mem: GuestMemory, ctx: TaskContext, key_ptr: int, key_len: int) -> int:
    call(hostops.obj_pin, ctx, read_key(mem, key_ptr, key_len))
    return 0


@hostcall("obj_unpin", (I32, I32))
def obj_unpin(mem: GuestMemory, ctx: TaskContext, key_ptr: int, key_len: int) -> int:
    call(hostops.obj_unpin, ctx, read_key(mem, key_ptr, key_len))
    return 0


@hostcall("result_set", (I32, I32))
def result_set(mem: GuestMemory, ctx: TaskContext, ptr: int, length: int) -> int:
    """Set the task's result object (instead of its stdout)."""
    call(hostops.result_set, ctx, mem.view(ptr & _U32, length & _U32))
    return 0
