"""TaskController.run_many: many tasks run with their bookkeeping shared."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from conftest import build_wat
from wat_tasks import exits, hello

from spear import (
    FunctionSpec,
    InvalidArgument,
    LocalNode,
    NotFound,
    Resources,
    Runtime,
    TaskState,
)
from spear.core.models import Task, new_task_id
from spear.core.tasks import TaskStore
from spear.core.worker import EXIT_LOST, Outcome
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
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


# Runs `run_many` over guests that sleep for a minute; says "running" once the node
# reports them all RUNNING (their wave's records are written), then waits to be killed.
_KILLED_MID_WAVE = """
import asyncio, sys
from spear import FunctionSpec, LocalNode, TaskState

async def main():
    async with LocalNode(sys.argv[1]) as node:
        work = asyncio.ensure_future(node.run_many([FunctionSpec(sys.argv[2])] * 3))
        while len(await node.tasks(TaskState.RUNNING)) < 3:
            await asyncio.sleep(0.01)
        print("running", flush=True)
        await work

asyncio.run(main())
"""

SLEEP_60S = SLEEP_20MS.replace("20000000", "60000000000")


async def test_a_wave_killed_mid_run_is_found_lost_by_the_next_node(tmp_path: Path) -> None:
    module = build_wat(SLEEP_60S, tmp_path, "sleep60")
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_WAVE, str(home), str(module)],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"running\n"
    finally:
        proc.kill()
        proc.communicate()
    async with LocalNode(home) as node:
        tasks = await node.tasks()
        assert len(tasks) == 3
        for task in tasks:
            assert (task.state, task.exit_code) == (TaskState.FAILED, EXIT_LOST)
            assert task.reason is not None and task.reason.startswith("lost")
        assert await node.kv.scan("active/") == []  # the wave's marker went with them


async def test_a_wave_whose_record_changed_meanwhile_still_ends_each_task(
    tmp_path: Path,
) -> None:
    kv = LevelDBKV.open(str(tmp_path / "kv"))
    try:
        store = TaskStore(kv)
        spec = FunctionSpec("unused.wasm")
        tasks = [Task(id=new_task_id(), spec=spec).transition(TaskState.RUNNING) for _ in "ab"]
        marker = await store.create_wave(tasks)
        assert [e.key for e in await kv.scan("active/")] == [marker]
        # Another writer rewrites the first record: the wave's one write no longer fits.
        entry = await kv.get(f"tasks/{tasks[0].id}")
        assert entry is not None
        await kv.put(entry.key, entry.value)
        done = await store.finish_wave(
            marker, [(t, Outcome(TaskState.COMPLETED, 0)) for t in tasks]
        )
        assert [t.state for t in done] == [TaskState.COMPLETED] * 2
        assert [(await store.get(t.id)).state for t in tasks] == [TaskState.COMPLETED] * 2
        assert await kv.scan("active/") == []
    finally:
        await kv.aclose()


async def test_a_task_id_given_from_elsewhere_is_never_recorded_twice(tmp_path: Path) -> None:
    # Ids made here are new and written without a read (run, run_many); an id given from
    # elsewhere (a task forwarded by another node) is checked, and the first record kept.
    async with LocalNode(tmp_path / "home") as node:
        first = await node.controller.create(FunctionSpec(str(hello(tmp_path))))
        again = FunctionSpec(str(exits(tmp_path, 3)))
        with pytest.raises(InvalidArgument, match="exists already"):
            await node.controller.create(again, task_id=first.id)
        assert await node.task(first.id) == first


async def test_a_task_that_ends_while_its_wave_runs_on_is_finished_at_once(
    tmp_path: Path,
) -> None:
    """Ended, a task of a wave is recorded so, its room freed, its result kept and its
    waiters woken, while a task of its wave still runs: not when the slowest one ends."""
    sleeper, quick = _scripts(tmp_path)
    specs = [
        sleeper,  # on a thread, until cancelled
        quick,  # on a thread, ends at once
        FunctionSpec(str(hello(tmp_path))),  # run right here as the wave starts
    ]
    ids = [new_task_id() for _ in specs]
    async with LocalNode(tmp_path / "home", cpu_millis=300) as node:  # one wave
        controller = node.controller
        async with _many_beside(node, specs, ids) as done:
            with anyio.fail_after(10):
                while len(await node.tasks(TaskState.COMPLETED)) < 2:
                    await anyio.sleep(0.01)
                for task_id in ids[1:]:
                    assert (await controller.wait(task_id)).state is TaskState.COMPLETED
            assert [t.id for t in await node.tasks(TaskState.RUNNING)] == ids[:1]
            assert controller.free.cpu_millis == 200  # (their room is free)
            for task_id, output in zip(ids[1:], [b"quick\n", b"hello\n"], strict=True):
                with anyio.fail_after(10):  # (kept by a finished hook, after the wake-up)
                    while (value := await _value(node, f"results/{task_id}")) is None:
                        await anyio.sleep(0.01)
                assert value == output
            assert [e.key for e in await node.kv.scan("active/")] == [f"active/wave-{ids[0]}"]
            with anyio.fail_after(10):  # (answered once it ended: its wave has no other)
                cancelled = await controller.cancel(ids[0])
            assert cancelled.state is TaskState.CANCELLED
        assert [t.id for t in done] == ids
        assert [t.state for t in done] == [TaskState.CANCELLED] + [TaskState.COMPLETED] * 2
        for task in done:
            assert await node.task(task.id) == task
        assert controller.free == controller.capacity
        assert await node.kv.scan("active/") == []  # (the marker went with the last)


async def test_the_next_wave_starts_in_room_a_task_of_the_last_one_freed(
    tmp_path: Path,
) -> None:
    """First in, first out: the rest of a run_many take the room its ended tasks free,
    while a long task of an earlier wave runs on."""
    sleeper, quick = _scripts(tmp_path)
    specs = [sleeper] + [quick] * 4
    ids = [new_task_id() for _ in specs]
    async with LocalNode(tmp_path / "home", cpu_millis=200) as node:  # two at a time
        controller = node.controller
        async with _many_beside(node, specs, ids) as done:
            with anyio.fail_after(10):  # (one slot for all four, one after another)
                while len(await node.tasks(TaskState.COMPLETED)) < 4:
                    await anyio.sleep(0.01)
            assert [t.id for t in await node.tasks(TaskState.RUNNING)] == ids[:1]
            await controller.cancel(ids[0])
        assert [t.state for t in done] == [TaskState.CANCELLED] + [TaskState.COMPLETED] * 4
        assert controller.free == controller.capacity
        assert await node.kv.scan("active/") == []


async def test_each_task_is_said_admitted_as_its_room_is_reserved(tmp_path: Path) -> None:
    spec = FunctionSpec(str(hello(tmp_path)))
    async with LocalNode(tmp_path / "home", cpu_millis=200) as node:  # (three waves)
        admitted: list[tuple[str, int]] = []

        def seen(task: Task) -> None:
            admitted.append((task.id, node.controller.free.cpu_millis))

        done = await node.controller.run_many([spec] * 5, on_admitted=seen)
    assert [task_id for task_id, _ in admitted] == [t.id for t in done]
    assert all(free <= 100 for _, free in admitted)  # (said once its room is taken)


async def test_an_early_part_being_written_as_its_wave_ends_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last task of a wave ends while the ends of an early part are being written:
    that write goes on (the wave's end waits for it), the part's tasks are not lost."""
    _, quick = _scripts(tmp_path)
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nexec sleep 0.3\n")
    slow.chmod(0o755)
    async with LocalNode(tmp_path / "home", cpu_millis=200) as node:
        store = node.controller.store
        finish = store.finish_wave

        async def slow_part(marker: str, ends: Any, *, last: bool = True) -> Any:
            if not last:
                await anyio.sleep(1.0)  # (the wave's last task ends meanwhile)
            return await finish(marker, ends, last=last)

        monkeypatch.setattr(store, "finish_wave", slow_part)
        specs = [quick, FunctionSpec(str(slow), runtime=Runtime.PROCESS)]
        with anyio.fail_after(30):
            done = await node.controller.run_many(specs)
        assert [t.state for t in done] == [TaskState.COMPLETED] * 2
        assert [(await node.task(t.id)).state for t in done] == [TaskState.COMPLETED] * 2
        assert await node.kv.scan("active/") == []


def _scripts(tmp_path: Path) -> tuple[FunctionSpec, FunctionSpec]:
    """Two process tasks, run on threads: one sleeps until cancelled, one ends at once."""
    sleeper, quick = tmp_path / "sleeper.sh", tmp_path / "quick.sh"
    sleeper.write_text("#!/bin/sh\nexec sleep 3600\n")
    quick.write_text("#!/bin/sh\necho quick\n")
    for script in (sleeper, quick):
        script.chmod(0o755)
    spec = functools.partial(FunctionSpec, runtime=Runtime.PROCESS)
    return spec(str(sleeper)), spec(str(quick))


@contextlib.asynccontextmanager
async def _many_beside(
    node: LocalNode, specs: list[FunctionSpec], ids: list[str]
) -> AsyncIterator[list[Task]]:
    """`run_many(specs)` running beside the body; the tasks it returned, once it did (after
    the body). The body's end stops every task left: a failing test waits on for none."""
    done: list[Task] = []

    async def many() -> None:
        done.extend(await node.controller.run_many(specs, task_ids=ids))

    async with anyio.create_task_group() as tg:
        tg.start_soon(many)
        try:
            yield done
        finally:
            await node.controller.cancel_all("the test ended")


async def _value(node: LocalNode, key: str) -> bytes | None:
    try:
        value, _ = await node.objects.get(key)
    except NotFound:
        return None
    return bytes(value)
