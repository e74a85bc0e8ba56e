"""A node that began stopping stops every guest, also one that starts afterwards: a task
can still reach its runtime then (a forwarded task taken on a connection the closing
server still serves; a queued one admitted as the cancelled ones free room). Such a task
used to run on unseen, and the node's close never returned (issue 17: the placement race
tests hung about one run in 30)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import wasmtime

from spear import FunctionSpec, LocalNode, TaskState

if TYPE_CHECKING:
    from pathlib import Path

LOOP_WAT = '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'


def _loop(tmp_path: Path) -> str:
    path = tmp_path / "loop.wasm"
    path.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    return str(path)


async def test_a_task_started_after_the_stop_began_is_stopped_too(tmp_path: Path) -> None:
    spec = FunctionSpec(_loop(tmp_path))
    async with LocalNode(tmp_path / "home", cpu_millis=300) as node:
        first = await node.submit(spec)
        await node.controller.cancel_all("node stopped")  # what shutdown does first
        late = await node.submit(spec)  # arrives after it (submit, as a forwarded task)
        with anyio.fail_after(20):  # (without the fix: runs until the test's timeout)
            ended = [await node.wait(t.id) for t in (first, late)]
            (wave,) = await node.run_many([spec])  # a wave's guests too
        assert [t.state for t in ended] == [TaskState.CANCELLED] * 2
        assert ended[1].reason == "node stopped"
        assert wave.state is TaskState.CANCELLED


async def test_a_guest_running_when_the_stop_begins_is_stopped_with_its_reason(
    tmp_path: Path,
) -> None:
    """`cancel_all` interrupts what already runs, each run with the stop's reason (a run
    interrupted with none would run on: a cancel without a reason is no cancel)."""
    spec = FunctionSpec(_loop(tmp_path))
    async with LocalNode(tmp_path / "home", cpu_millis=300) as node:
        task = await node.submit(spec)
        runs = node.controller._running.runs
        with anyio.fail_after(20):
            while task.id not in runs or runs[task.id].execution is None:
                await anyio.sleep(0.01)  # (until its guest has started)
        await node.controller.cancel_all("node stopped")
        try:
            with anyio.fail_after(20):  # (with no reason given: it would run on)
                ended = await node.wait(task.id)
        finally:
            if task.id in runs:  # (still running: stopped, so that the node can close)
                await node.controller.cancel(task.id, "the test failed")
        assert (ended.state, ended.reason) == (TaskState.CANCELLED, "node stopped")
