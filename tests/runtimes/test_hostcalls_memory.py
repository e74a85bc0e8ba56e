"""The hostcall ABI's edges from real WAT guests: the first and last bytes of memory, empty
values, capacities past 2 GiB, and a host bug answered -EIO (docs/hostcalls.md)."""

from __future__ import annotations

import errno
import struct
import threading
from typing import TYPE_CHECKING, Any

import wasmtime
from conftest import build_wat
from loguru import logger

from spear import FunctionSpec, LocalNode, TaskState
from spear.runtimes.wasm.hostcalls import abi
from spear.runtimes.wasm.hostcalls.abi import I32, REGISTRY, bind, hostcall, wasi_errno

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

EFAULT = wasi_errno(errno.EFAULT)
PAGE = 65536

# Prints five i32 answers: obj_put with its key and value at address 0; a 16-byte value
# ending at the last byte of memory; the same one byte further (past the end); an empty
# value; obj_list with a capacity of 0x80000000 (more than memory: read unsigned).
EDGES = f"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "spear" "obj_put" (func $put (param i32 i32 i32 i32 i64 i32) (result i32)))
  (import "spear" "obj_list" (func $list (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "k0")
  (data (i32.const 100) "end") (data (i32.const 110) "past") (data (i32.const 120) "empty")
  (data (i32.const {PAGE - 16}) "the last 16 byte")
  (func $put_at (param $key i32) (param $key_len i32) (param $val i32) (param $len i32)
    (result i32)
    (call $put (local.get $key) (local.get $key_len) (local.get $val) (local.get $len)
               (i64.const -1) (i32.const 0)))
  (func (export "_start")
    (i32.store (i32.const 300) (call $put_at (i32.const 0) (i32.const 2) (i32.const 0)
                                              (i32.const 2)))
    (i32.store (i32.const 304) (call $put_at (i32.const 100) (i32.const 3)
                                              (i32.const {PAGE - 16}) (i32.const 16)))
    (i32.store (i32.const 308) (call $put_at (i32.const 110) (i32.const 4)
                                              (i32.const {PAGE - 15}) (i32.const 16)))
    (i32.store (i32.const 312) (call $put_at (i32.const 120) (i32.const 5) (i32.const 200)
                                              (i32.const 0)))
    (i32.store (i32.const 200) (i32.const 0x80000000))
    (i32.store (i32.const 316) (call $list (i32.const 0) (i32.const 1) (i32.const 1024)
                                           (i32.const 200)))
    (i32.store (i32.const 400) (i32.const 300))
    (i32.store (i32.const 404) (i32.const 20))
    (drop (call $write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 420)))))"""


async def test_the_edges_of_guest_memory(tmp_path: Path) -> None:
    module = build_wat(EDGES, tmp_path, "edges")
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(module), timeout_s=60))
        assert task.state is TaskState.COMPLETED, task.reason
        answers = struct.unpack("<5i", await node.logs_of(task.id, "stdout"))
        # Address 0 and the last byte are the guest's; one byte past the end is not.
        assert answers == (0, 0, -EFAULT, 0, 1)
        assert bytes((await node.objects.get("k0"))[0]) == b"k0"
        assert bytes((await node.objects.get("end"))[0]) == b"the last 16 byte"
        assert [i.key for i in await node.objects.list("past")] == []
        assert bytes((await node.objects.get("empty"))[0]) == b""


# Calls the host_bug hostcall registered by the test below with 7: prints its answer.
CALLS_A_BUG = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "spear" "host_bug" (func $bug (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 300) (call $bug (i32.const 7)))
    (i32.store (i32.const 400) (i32.const 300))
    (i32.store (i32.const 404) (i32.const 4))
    (drop (call $write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 420)))))"""


async def test_a_host_bug_is_eio_for_the_guest_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []

    def host_bug(mem: abi.GuestMemory, ctx: Any, value: int) -> int:
        calls.append((type(mem), ctx.task.id, value))
        raise RuntimeError("a bug in the host")

    monkeypatch.setitem(REGISTRY, "host_bug", None)  # (put back as it was afterwards)
    hostcall("host_bug", (I32,))(host_bug)
    logged: list[str] = []
    # spear's log is off as a library (spear._quiet): on for this test only.
    logger.enable("spear")
    sink = logger.add(lambda m: logged.append(str(m)), format="{message}", level="ERROR")
    try:
        module = build_wat(CALLS_A_BUG, tmp_path, "calls_a_bug")
        async with LocalNode(tmp_path / "home") as node:
            task = await node.run(FunctionSpec(str(module), timeout_s=60))
            assert task.state is TaskState.COMPLETED, task.reason  # a failed call, no trap
            (answer,) = struct.unpack("<i", await node.logs_of(task.id, "stdout"))
    finally:
        logger.remove(sink)
        logger.disable("spear")
    assert answer == -wasi_errno(errno.EIO)
    assert calls == [(abi.GuestMemory, task.id, 7)]
    assert any(line.startswith("hostcall spear.host_bug failed") for line in logged), logged


def test_a_host_errno_wasi_lacks_is_eio() -> None:
    assert wasi_errno(errno.ENOENT) == 44 and wasi_errno(errno.EIO) == 29
    assert errno.ENOTBLK not in abi._WASI_ERRNO
    assert wasi_errno(errno.ENOTBLK) == 29


def test_bind_returns_what_it_replaces() -> None:
    first, second = object(), object()
    try:
        outer = bind(first, "token-1")  # type: ignore[arg-type]
        assert bind(second, "token-2") == (first, "token-1")  # type: ignore[arg-type]
        assert abi.current() is second
    finally:
        bind(*outer)
    assert bind(*outer) == outer  # put back: this thread acts for no task again


def test_a_hostcall_on_a_thread_bound_to_no_task_is_a_clear_host_error() -> None:
    # An embedder that runs a guest without `bind` (a host bug) is told so, by name,
    # instead of a hostcall failing on None somewhere inside.
    raised: list[BaseException] = []

    def unbound() -> None:
        try:
            abi.current()
        except BaseException as exc:  # (the test reads what was raised)
            raised.append(exc)

    thread = threading.Thread(target=unbound)
    thread.start()
    thread.join(timeout=60)
    assert [type(exc) for exc in raised] == [RuntimeError]
    assert str(raised[0]) == "hostcall outside a task: no task bound to this thread"


# Calls the host's t.poke with the address 8, then ends.
POKES = """(module
  (import "t" "poke" (func $poke (param i32)))
  (memory (export "memory") 1)
  (func (export "run") (call $poke (i32.const 8))))"""


def test_guest_memory_writes_the_whole_unsigned_range() -> None:
    # What hostcalls write back is unsigned: u32 lengths and capacities (a capacity past
    # 2 GiB is read unsigned, above), u64 versions and clocks. The largest of each is
    # written as the guest reads it, not refused as out of a signed range.
    store = wasmtime.Store()

    def poke(caller: wasmtime.Caller, ptr: int) -> None:
        mem = abi.GuestMemory(caller)
        mem.write_u32(ptr, 0xFFFFFFFF)
        mem.write_u64(ptr + 4, 0xFFFFFFFFFFFFFFFF)
        mem.write_u32(ptr + 12, 0x80000000)
        mem.write_u64(ptr + 16, 1 << 63)

    func = wasmtime.Func(store, wasmtime.FuncType([I32], []), poke, access_caller=True)
    instance = wasmtime.Instance(store, wasmtime.Module(store.engine, POKES), [func])
    exports = instance.exports(store)
    run, memory = exports["run"], exports["memory"]
    assert isinstance(run, wasmtime.Func) and isinstance(memory, wasmtime.Memory)
    run(store)
    assert struct.unpack("<IQIQ", memory.read(store, 8, 32)) == (
        0xFFFFFFFF,
        0xFFFFFFFFFFFFFFFF,
        0x80000000,
        1 << 63,
    )
