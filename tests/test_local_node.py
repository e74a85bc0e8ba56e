"""The embedded node as a library: run, submit, wait, cancel, many at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from conftest import build_wat

import spear
from spear import FunctionSpec, LocalNode, TaskState

if TYPE_CHECKING:
    from pathlib import Path

LOG_WAT = """
(module
  (import "spear" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "spear" "abi_version" (func $abi (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from the guest")
  (func (export "_start")
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 20)))
    ;; a bad level and an out-of-bounds pointer are errors, not traps
    (if (i32.ge_s (call $log (i32.const 9) (i32.const 16) (i32.const 4)) (i32.const 0))
      (then (call $exit (i32.const 10))))
    ;; -21 is EFAULT in WASI's numbering, which hostcalls answer in (docs/hostcalls.md)
    (if (i32.ne (call $log (i32.const 2) (i32.const 65530) (i32.const 100)) (i32.const -21))
      (then (call $exit (i32.const 11))))
    (call $exit (call $abi))))
"""


async def test_run_returns_the_finished_task(tmp_path: Path, conformance_wasm: Path) -> None:
    out: list[bytes] = []
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(
            FunctionSpec(str(conformance_wasm), args=("args", "x")), tee_stdout=out.append
        )
        assert task.state is TaskState.COMPLETED and task.exit_code == 0
        assert b"argv[2]=x" in b"".join(out)
        assert b"argv[2]=x" in await node.logs_of(task.id, "stdout")
        assert (await node.task(task.id)).state is TaskState.COMPLETED


async def test_hostcall_log_goes_to_the_agent_log(tmp_path: Path) -> None:
    module = build_wat(LOG_WAT, tmp_path, "log")
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(module)))
        assert task.exit_code == 1  # the ABI version, passed out as the exit code
        log = (await node.logs_of(task.id, "agent")).decode()
        assert "INFO" in log and "hello from the guest" in log
        assert await node.logs_of(task.id, "stdout") == b""


async def test_timeout_leaves_the_node_healthy(tmp_path: Path, conformance_wasm: Path) -> None:
    async with LocalNode(tmp_path / "home") as node:
        slow = await node.run(FunctionSpec(str(conformance_wasm), args=("loop",), timeout_s=0.2))
        assert (slow.state, slow.reason, slow.exit_code) == (TaskState.FAILED, "timeout", 124)
        ok = await node.run(FunctionSpec(str(conformance_wasm), args=("exit", "0")))
        assert ok.state is TaskState.COMPLETED


async def test_cancel_a_running_loop(tmp_path: Path, conformance_wasm: Path) -> None:
    async with LocalNode(tmp_path / "home") as node:
        task = await node.submit(FunctionSpec(str(conformance_wasm), args=("loop",)))
        with anyio.fail_after(10):
            while (await node.task(task.id)).state is not TaskState.RUNNING:
                await anyio.sleep(0.01)
        final = await node.cancel(task.id)
        assert final.state is TaskState.CANCELLED
        assert (await node.wait(task.id)).state is TaskState.CANCELLED


async def test_many_tasks_at_once(tmp_path: Path, conformance_wasm: Path) -> None:
    async with LocalNode(tmp_path / "home") as node:
        tasks = [
            await node.submit(FunctionSpec(str(conformance_wasm), args=("exit", str(i % 3))))
            for i in range(40)
        ]
        finals = [await node.wait(t.id) for t in tasks]
        assert [f.exit_code for f in finals] == [i % 3 for i in range(40)]
        assert len(await node.tasks()) == 40
        assert len(await node.tasks(TaskState.COMPLETED)) == 14


async def test_a_task_that_can_never_fit_fails(tmp_path: Path, conformance_wasm: Path) -> None:
    async with LocalNode(tmp_path / "home", cpu_millis=1000) as node:
        spec = FunctionSpec(str(conformance_wasm), resources=spear.Resources(cpu_millis=4000))
        task = await node.run(spec)
        assert task.state is TaskState.FAILED and "needs 4000m CPU" in (task.reason or "")


async def test_tasks_wait_for_room(tmp_path: Path, conformance_wasm: Path) -> None:
    # Room for one task at a time: the second waits PENDING until the first ends.
    async with LocalNode(tmp_path / "home", cpu_millis=100) as node:
        first = await node.submit(
            FunctionSpec(str(conformance_wasm), args=("loop",), timeout_s=0.5)
        )
        second = await node.submit(FunctionSpec(str(conformance_wasm), args=("exit", "0")))
        with anyio.fail_after(10):
            while (await node.task(first.id)).state is not TaskState.RUNNING:
                await anyio.sleep(0.01)
        assert (await node.task(second.id)).state is TaskState.PENDING
        assert (await node.wait(second.id)).state is TaskState.COMPLETED
        finished = await node.task(first.id)
        assert finished.finished_at is not None
        second_final = await node.task(second.id)
        assert second_final.started_at is not None
        assert second_final.started_at >= finished.finished_at


async def test_a_submitted_task_holds_its_room_as_it_is_accepted(
    tmp_path: Path, conformance_wasm: Path
) -> None:
    # The scheduler places the next task by the node's free room: a task accepted here
    # holds its CPU from the moment submit returns, before its coroutine first runs.
    async with LocalNode(tmp_path / "home", cpu_millis=300) as node:
        looping = FunctionSpec(str(conformance_wasm), args=("loop",))
        first = await node.submit(looping)
        assert node.controller.free.cpu_millis == 200
        second = await node.submit(looping)
        assert node.controller.free.cpu_millis == 100
        assert node.controller.waiting_count == 0
        for task in (first, second):
            await node.cancel(task.id)
        assert node.controller.free.cpu_millis == 300


async def test_unknown_task_is_not_found(tmp_path: Path) -> None:
    async with LocalNode(tmp_path / "home") as node:
        with pytest.raises(spear.NotFound):
            await node.task("nope")


async def test_shutdown_twice_and_before_start(tmp_path: Path) -> None:
    node = LocalNode(tmp_path / "home")
    await node.shutdown()
    await node.shutdown()
    node = LocalNode(tmp_path / "home2")
    await node.start()
    await node.shutdown()
    await node.shutdown()
