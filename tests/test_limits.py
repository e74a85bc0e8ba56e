"""Limits that protect a node: a default linear-memory cap for wasm guests, a cap on what a
task may set as its result, and the retention of finished tasks' logs."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import pytest
from conftest import ROOT, build_c, build_wat

from spear import FunctionSpec, LocalNode, TaskState
from spear.core.logs import prune_task_logs

if TYPE_CHECKING:
    from pathlib import Path

GROW = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 64)) (i32.const -1))
      (then (call $exit (i32.const 3))))))"""  # 64 more pages: 4 MiB more


async def test_a_guest_memory_is_capped_by_default(tmp_path: Path) -> None:
    grow = str(build_wat(GROW, tmp_path, "grow"))
    async with LocalNode(tmp_path / "small", wasm_memory_max_bytes=2 * 1024 * 1024) as node:
        capped = await node.run(FunctionSpec(grow))
        assert (capped.state, capped.exit_code) == (TaskState.FAILED, 3)
        # A spec's own limit is the guest's, over the node's default.
        own = await node.run(FunctionSpec(grow, memory_limit_bytes=16 * 1024 * 1024))
        assert own.state is TaskState.COMPLETED
    async with LocalNode(tmp_path / "default") as node:  # 1 GiB by default
        assert (await node.run(FunctionSpec(grow))).state is TaskState.COMPLETED


async def test_a_result_over_the_cap_is_refused(tmp_path: Path) -> None:
    hostcalls = str(build_c(ROOT / "tests" / "wasm" / "hostcalls.c"))
    async with LocalNode(tmp_path / "home", task_result_max_bytes=4) as node:
        small = await node.run(FunctionSpec(hostcalls, args=("result", "four")))
        assert small.state is TaskState.COMPLETED
        big = await node.run(FunctionSpec(hostcalls, args=("result", "fiver")))
        assert (big.state, big.exit_code) == (TaskState.FAILED, 3)  # result_set: -EFBIG


def _log(root: Path, task_id: str, size: int, age_s: float) -> None:
    directory = root / task_id
    directory.mkdir(parents=True)
    (directory / "stdout").write_bytes(b"x" * size)
    then = time.time() - age_s
    os.utime(directory / "stdout", (then, then))
    os.utime(directory, (then, then))


def test_finished_logs_go_by_age_then_by_total_size(tmp_path: Path) -> None:
    day = 86400.0
    _log(tmp_path, "ancient", 10, 30 * day)
    _log(tmp_path, "old", 1000, 3 * day)
    _log(tmp_path, "older", 1000, 4 * day)
    _log(tmp_path, "running", 1000, 5 * day)
    _log(tmp_path, "fresh", 1000, 1.0)
    gone = prune_task_logs(tmp_path, max_age_s=7 * day, max_total_bytes=0)
    assert gone == ["ancient"]
    # Over 2500 bytes in all: the oldest finished ones go first; running and fresh stay.
    gone = prune_task_logs(
        tmp_path, max_age_s=7 * day, max_total_bytes=2500, keep=frozenset({"running"})
    )
    assert gone == ["older"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "old", "running"]
    assert prune_task_logs(tmp_path / "missing", max_age_s=1, max_total_bytes=1) == []


@pytest.mark.parametrize("bad", ["-1", "lots"])
def test_limit_settings_are_sizes(tmp_path: Path, bad: str) -> None:
    from spear.config import Settings
    from spear.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        Settings.load(env={"SPEAR_HOME": str(tmp_path), "SPEAR_WASM_MEMORY_MAX_BYTES": bad})
