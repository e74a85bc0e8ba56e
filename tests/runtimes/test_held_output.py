"""held_output's fd_write (inline guests' stdout and stderr) against real guests: what
WASI's would write, its errnos for a bad descriptor or a pointer outside memory."""

from __future__ import annotations

import wasmtime

from spear.runtimes.wasm import held_output

# $write(fd, iovs, count) -> errno; the written count lands at 100. Two iovecs at 0 and 8:
# "hello " (at 200) and "world" (at 300).
GUEST = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "hello ") (data (i32.const 300) "world")
  (func (export "write") (param $fd i32) (param $iovs i32) (param $count i32) (result i32)
    (i32.store (i32.const 0) (i32.const 200)) (i32.store (i32.const 4) (i32.const 6))
    (i32.store (i32.const 8) (i32.const 300)) (i32.store (i32.const 12) (i32.const 5))
    (call $w (local.get $fd) (local.get $iovs) (local.get $count) (i32.const 100)))
  (func (export "written") (result i32) (i32.load (i32.const 100))))"""


def _guest() -> tuple[wasmtime.Store, wasmtime.Instance]:
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    held_output.define_fd_write(linker)
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    return store, linker.instantiate(store, wasmtime.Module(engine, GUEST))


def test_writes_go_to_the_held_sinks_and_bad_ones_get_wasi_errnos() -> None:
    store, instance = _guest()
    write, written = instance.exports(store)["write"], instance.exports(store)["written"]
    out: list[bytes] = []
    err: list[bytes] = []
    with held_output.holding(out.append, err.append):
        assert write(store, 1, 0, 2) == 0 and written(store) == 11
        assert write(store, 2, 8, 1) == 0 and written(store) == 5
        assert write(store, 3, 0, 1) == 8  # EBADF: an inline guest has no other descriptor
        assert write(store, 1, 65536 - 4, 1) == 21  # EFAULT: the iovec is past memory
    assert (b"".join(out), b"".join(err)) == (b"hello world", b"world")
    assert write(store, 1, 0, 1) == 8  # no run holds this thread's output: nothing written
    assert out == [b"hello ", b"world"]
