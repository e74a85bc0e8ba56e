"""Small WASI modules (WAT) the transport and CLI tests run as tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conftest import build_wat

if TYPE_CHECKING:
    from pathlib import Path

_WRITE = """
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $out (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 200) (local.get $ptr))
    (i32.store (i32.const 204) (local.get $len))
    (drop (call $write (local.get $fd) (i32.const 200) (i32.const 1) (i32.const 208))))
  (func $nap (param $ms i64)
    (i64.store (i32.const 0) (i64.const 0))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.mul (local.get $ms) (i64.const 1000000)))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128))))
"""


def hello(directory: Path) -> Path:
    """Writes `hello\\n` to stdout and `oops\\n` to stderr, exits 0."""
    return build_wat(
        f"""(module {_WRITE}
  (data (i32.const 300) "hello\\n") (data (i32.const 320) "oops\\n")
  (func (export "_start")
    (call $out (i32.const 1) (i32.const 300) (i32.const 6))
    (call $out (i32.const 2) (i32.const 320) (i32.const 5))))""",
        directory,
        "hello",
    )


def exits(directory: Path, code: int) -> Path:
    return build_wat(
        f"""(module {_WRITE}
  (func (export "_start") (call $exit (i32.const {code}))))""",
        directory,
        f"exit{code}",
    )


def ticker(directory: Path, ticks: int, nap_ms: int) -> Path:
    """Writes `tick\\n` `ticks` times, napping `nap_ms` between, then `done\\n`."""
    return build_wat(
        f"""(module {_WRITE}
  (data (i32.const 300) "tick\\n") (data (i32.const 320) "done\\n")
  (func (export "_start") (local $i i32)
    (local.set $i (i32.const {ticks}))
    (block $end (loop $again
      (br_if $end (i32.eqz (local.get $i)))
      (call $out (i32.const 1) (i32.const 300) (i32.const 5))
      (call $nap (i64.const {nap_ms}))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br $again)))
    (call $out (i32.const 1) (i32.const 320) (i32.const 5))))""",
        directory,
        f"ticker{ticks}x{nap_ms}",
    )


def blob(directory: Path, size: int) -> Path:
    """Writes `size` bytes to stdout in one write: byte i is i % 251 (`blob_bytes`)."""
    pages = size // 65536 + 1
    return build_wat(
        f"""(module {_WRITE}
  (func (export "_start") (local $i i32)
    (drop (memory.grow (i32.const {pages})))
    (block $end (loop $again
      (br_if $end (i32.eq (local.get $i) (i32.const {size})))
      (i32.store8 (i32.add (i32.const 65536) (local.get $i))
        (i32.rem_u (local.get $i) (i32.const 251)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $again)))
    (call $out (i32.const 1) (i32.const 65536) (i32.const {size}))))""",
        directory,
        f"blob{size}",
    )


def blob_bytes(size: int) -> bytes:
    """What `blob(directory, size)` writes."""
    return bytes(i % 251 for i in range(size))
