"""A guest's buffer too small: -ENOSPC, the length needed written back, and a retry with
that length that succeeds (the ABI's promise in docs/hostcalls.md), from real WAT guests.

Each guest makes the call with room for 4 bytes, then again with the length the first
call wrote back, and prints to stdout a header of little-endian u32s (first answer,
length written back, second answer, length written back, then the first 8 bytes of its
buffer after the failed call) followed by what the second call filled in.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from conftest import build_wat

from spear import FunctionSpec, LocalNode, TaskState
from spear.runtimes.wasm.hostcalls.abi import wasi_errno

if TYPE_CHECKING:
    from pathlib import Path

ENOSPC = wasi_errno(errno.ENOSPC)
EAGAIN = wasi_errno(errno.EAGAIN)
HEADER = struct.Struct("<iIiI8s")
UNTOUCHED = b"\xaa" * 8  # what the buffer holds before the calls

# Memory: the prefix at 100, *out_len at 200, the header at 300, the buffer at 1024.
_COMMON = """
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $report (param $rc1 i32) (param $len1 i32) (param $rc2 i32)
    ;; the header at 300 (the marker was copied to 316 after the first call), then the buffer
    (i32.store (i32.const 300) (local.get $rc1))
    (i32.store (i32.const 304) (local.get $len1))
    (i32.store (i32.const 308) (local.get $rc2))
    (i32.store (i32.const 312) (i32.load (i32.const 200)))
    (call $out (i32.const 300) (i32.const 24))
    (call $out (i32.const 1024) (i32.load (i32.const 200))))
  (func $out (param $ptr i32) (param $len i32)  ;; one write each (a write may be partial)
    (i32.store (i32.const 400) (local.get $ptr))
    (i32.store (i32.const 404) (local.get $len))
    (drop (call $write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 420))))
"""

LIST_GUEST = f"""(module
  (import "spear" "obj_list" (func $list (param i32 i32 i32 i32) (result i32)))
  {_COMMON}
  (data (i32.const 100) "dir/")
  (func (export "_start") (local $rc1 i32) (local $len1 i32)
    (i64.store (i32.const 1024) (i64.const 0xaaaaaaaaaaaaaaaa))
    (i32.store (i32.const 200) (i32.const 4))
    (local.set $rc1 (call $list (i32.const 100) (i32.const 4) (i32.const 1024) (i32.const 200)))
    (local.set $len1 (i32.load (i32.const 200)))
    (i64.store (i32.const 316) (i64.load (i32.const 1024)))
    (call $report (local.get $rc1) (local.get $len1)
      (call $list (i32.const 100) (i32.const 4) (i32.const 1024) (i32.const 200)))))"""

STREAM_GUEST = f"""(module
  (import "spear" "stream_caller" (func $caller (result i32)))
  (import "spear" "stream_read" (func $read (param i32 i32 i32) (result i32)))
  (import "spear" "sleep" (func $sleep (param i64) (result i32)))
  {_COMMON}
  (func (export "_start") (local $h i32) (local $rc1 i32) (local $len1 i32)
    (local.set $h (call $caller))
    (i64.store (i32.const 1024) (i64.const 0xaaaaaaaaaaaaaaaa))
    (loop $wait  ;; until the caller's message is there: -EAGAIN before
      (i32.store (i32.const 200) (i32.const 4))
      (local.set $rc1 (call $read (local.get $h) (i32.const 1024) (i32.const 200)))
      (if (i32.eq (local.get $rc1) (i32.const -{EAGAIN}))
        (then (drop (call $sleep (i64.const 1000000))) (br $wait))))
    (local.set $len1 (i32.load (i32.const 200)))
    (i64.store (i32.const 316) (i64.load (i32.const 1024)))
    (call $report (local.get $rc1) (local.get $len1)
      (call $read (local.get $h) (i32.const 1024) (i32.const 200)))))"""


def _parse(out: bytes) -> tuple[tuple[int, int, int, int, bytes], bytes]:
    assert len(out) >= HEADER.size, out
    return HEADER.unpack(out[: HEADER.size]), out[HEADER.size :]


async def test_obj_list_into_a_small_buffer_says_how_much_room_it_needs(tmp_path: Path) -> None:
    module = build_wat(LIST_GUEST, tmp_path, "list_small")
    async with LocalNode(tmp_path / "home") as node:
        await node.objects.put("dir/a", b"1")
        await node.objects.put("dir/bb", b"2")
        await node.objects.put("other", b"3")
        task = await node.run(FunctionSpec(str(module), timeout_s=60))
        assert task.state is TaskState.COMPLETED, task.reason
        header, listed = _parse(await node.logs_of(task.id, "stdout"))
        needed = len(b"dir/a\0dir/bb\0")
        # -ENOSPC, the whole length needed (not the 4 bytes there were), nothing written;
        # then, with that much room, both keys.
        assert header == (-ENOSPC, needed, 2, needed, UNTOUCHED)
        assert listed == b"dir/a\0dir/bb\0"


async def test_stream_read_into_a_small_buffer_keeps_the_message(tmp_path: Path) -> None:
    module = build_wat(STREAM_GUEST, tmp_path, "stream_small")
    message = b"a message longer than four bytes"
    async with LocalNode(tmp_path / "home") as node:
        stream = await node.start_task(FunctionSpec(str(module), timeout_s=60))
        await stream.send(message)
        out = await stream.result()
        task = await stream.wait()
        assert task.state is TaskState.COMPLETED, task.reason
        header, read = _parse(out)
        # The message stayed queued after -ENOSPC: the retry reads it whole.
        assert header == (-ENOSPC, len(message), len(message), len(message), UNTOUCHED)
        assert read == message
