"""TaskController.run_many: many tasks run with their bookkeeping shared."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conftest import build_wat
from wat_tasks import exits, hello

from spear import FunctionSpec, LocalNode, Resources, TaskState

if TYPE_CHECKING:
    from pathlib import Path

SLEEP_20MS = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))
    (i64.store (i32.const 24) (i64.const 20000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"""


async def test_every_task_ends_as_run_would_end_it_in_order(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"not wasm")
    ok, three = str(hello(tmp_path)), str(exits(tmp_path, 3))
    specs = [
        FunctionSpec(ok),
        FunctionSpec(str(junk)),
        FunctionSpec(three),
        FunctionSpec(ok, resources=Resources(10**9, 1)),  # never fits this node
        *[FunctionSpec(ok)] * 30,
    ]
    async with LocalNode(tmp_path / "home", cpu_millis=300) as node:  # three at a time
        assert await node.run_many([]) == []
        done = await node.run_many(specs)
        assert [t.spec for t in done] == specs
        assert [(t.state, t.exit_code) for t in done[:4]] == [
            (TaskState.COMPLETED, 0),
            (TaskState.FAILED, 65),
            (TaskState.FAILED, 3),
            (TaskState.FAILED, 71),
        ]
        assert all(t.state is TaskState.COMPLETED for t in done[4:])
        assert len({t.id for t in done}) == len(specs)
        for task in done:  # each recorded as it was returned, with its output and result
            assert await node.task(task.id) == task
        assert [s for s, _ in done[0].history] == ["PENDING", "RUNNING", "COMPLETED"]
        assert await node.logs_of(done[-1].id) == b"hello\n"
        value, _ = await node.objects.get(f"results/{done[-1].id}")
        assert bytes(value) == b"hello\n"
        assert await node.tasks(TaskState.RUNNING) == []
        assert node.controller.free == node.controller.capacity  # every reservation returned


async def test_guests_that_block_run_on_threads_side_by_side(tmp_path: Path) -> None:
    module = build_wat(SLEEP_20MS, tmp_path, "sleep")
    async with LocalNode(tmp_path / "home") as node:
        done = await node.run_many([FunctionSpec(str(module))] * 6)
        assert {t.state for t in done} == {TaskState.COMPLETED}
        agent: Any = node.agents["wasm"]
        assert agent.run_stats["thread"] == 6 and agent.run_stats["inline"] == 0
