"""A full disk never locks the node: on a real 20 MiB tmpfs, a guest that floods its
stdout fails with a clear reason and its log is released; with the disk filled by someone
else, reading goes on and a write is one line, exit 71 (RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

import anyio
import pytest
from conftest import Cli, build_wat, one_error_line
from small_disk import fill, small_disk
from wat_tasks import hello

from spear import FunctionSpec, LocalNode, TaskState
from spear.core.tasks.running import NO_SPACE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

FLOOD = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (local.set $i (i32.const 16384))
    (block $end (loop $again
      (br_if $end (i32.eqz (local.get $i)))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br $again)))))"""  # 16384 x 64 KiB = 1 GiB to stdout


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A real 20 MiB file system (tmpfs), unmounted afterwards."""
    with small_disk(tmp_path / "disk", 20) as mount:
        yield mount


def test_a_flooding_guest_fails_and_the_node_goes_on(disk: Path, tmp_path: Path) -> None:
    cli = Cli(disk / "home")
    flood = build_wat(FLOOD, tmp_path, "flood")
    ran = cli("run", str(flood), timeout=120)
    assert ran.returncode == 71
    assert "no space left on device" in ran.stderr.decode()
    # Its output was released: the disk has room again, and everything reads and runs.
    assert shutil.disk_usage(disk).free > 10 * 1024 * 1024
    [task] = cli.json("tasks")
    assert task["state"] == "FAILED" and task["exit_code"] == 71
    assert task["reason"].startswith("no space left on device")
    again = cli("run", str(hello(tmp_path)))
    assert again.returncode == 0 and again.stdout == b"hello\n"


async def test_in_process_a_flooding_guest_is_stopped_and_fails_as_the_disk_filled(
    disk: Path, tmp_path: Path
) -> None:
    """The same through `node.run` in this process: stopped when its log meets the full
    disk (not run on to its end), FAILED with exit 71 and the reason."""
    flood = FunctionSpec(str(build_wat(FLOOD, tmp_path, "flood")))
    async with LocalNode(disk / "home") as node:
        with anyio.fail_after(120):
            task = await node.controller.run(flood)
        assert (task.state, task.exit_code, task.reason) == (TaskState.FAILED, 71, NO_SPACE)
        assert node.controller.free == node.controller.capacity


def test_on_a_disk_filled_by_others_reads_work_and_writes_say_so(
    disk: Path, tmp_path: Path
) -> None:
    cli = Cli(disk / "home")
    assert cli("run", str(hello(tmp_path))).returncode == 0
    assert (disk / "home" / "reserve").is_file()
    fill(disk)
    # Reading goes on: the data dir's reserve gives the database room to open.
    listed = cli.json("tasks")
    assert [t["state"] for t in listed] == ["COMPLETED"]
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 * 1024 * 1024))  # more than the reserve gave back
    refused = cli("obj", "put", "big", str(big))
    assert refused.returncode == 71
    assert "no space left on device" in one_error_line(refused.stderr)
    # Space freed: the reserve is made again on the next use.
    (disk / "filler").unlink()
    assert cli("run", str(hello(tmp_path))).returncode == 0
    assert (disk / "home" / "reserve").is_file()
