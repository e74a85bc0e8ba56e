"""Finished hooks: registered through TaskController.add_finished_hook, called once per
batch of ended tasks (one task, or a run_many wave) with what the store recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
from wat_tasks import exits, hello

from spear import FunctionSpec, LocalNode, Resources, TaskState
from spear.errors import ResourceExhausted

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.tasks import TasksFinished


class _Recorder:
    """A FinishedHook that keeps each batch it is given, and what the node had stored by
    then (hooks run in order: the object store's came first)."""

    def __init__(self, node: LocalNode) -> None:
        self.node = node
        self.batches: list[list[str]] = []
        self.results: dict[str, bytes] = {}
        self._heard = anyio.Event()

    async def __call__(self, finished: TasksFinished, /) -> None:
        self.batches.append([task.id for task in finished.tasks])
        for task in finished.tasks:
            assert task.state.terminal
            assert await self.node.task(task.id) == task  # its end is recorded
            value, _ = await self.node.objects.get(f"results/{task.id}")
            self.results[task.id] = bytes(value)
        self._heard.set()
        self._heard = anyio.Event()

    async def heard(self, batches: int) -> list[list[str]]:
        """The batches once there are `batches` of them (a hook may run after `wait`)."""
        with anyio.fail_after(10):
            while len(self.batches) < batches:
                await self._heard.wait()
        return self.batches


async def test_each_end_is_heard_once_with_its_record(tmp_path: Path) -> None:
    ok, three = str(hello(tmp_path)), str(exits(tmp_path, 3))
    async with LocalNode(tmp_path / "home", cpu_millis=200) as node:
        hook = _Recorder(node)
        node.controller.add_finished_hook(hook)

        one = await node.run(FunctionSpec(ok))
        assert hook.batches == [[one.id]] and hook.results[one.id] == b"hello\n"

        wave = await node.run_many([FunctionSpec(ok), FunctionSpec(three)])
        assert [t.exit_code for t in wave] == [0, 3]
        assert [sorted(b) for b in hook.batches[1:]] == [sorted(t.id for t in wave)]  # at once

        # Too big for this node: it fails waiting for room, and is heard of once.
        big = await node.submit(FunctionSpec(ok, resources=Resources(cpu_millis=10**6)))
        final = await node.wait(big.id)
        assert (final.state, final.exit_code) == (TaskState.FAILED, ResourceExhausted.exit_code)
        assert (await hook.heard(3))[2:] == [[big.id]]
        after = await node.run(FunctionSpec(ok))
        assert hook.batches[2:] == [[big.id], [after.id]]  # and not twice


async def test_a_waiter_is_woken_once_the_hooks_have_run(tmp_path: Path) -> None:
    # `wait` returns once the finished hooks ran: the task's result object is there to
    # read, and a hook added later has heard of it too.
    ok = str(hello(tmp_path))
    async with LocalNode(tmp_path / "home") as node:
        heard: list[str] = []
        release = anyio.Event()

        async def slow(finished: TasksFinished, /) -> None:
            await release.wait()
            heard.extend(t.id for t in finished.tasks)

        node.controller.add_finished_hook(slow)
        task = await node.submit(FunctionSpec(ok))
        ended: list[TaskState] = []

        async def waiter() -> None:
            ended.append((await node.wait(task.id)).state)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.2)  # the task ended long since; its hooks wait
            assert ended == [] and heard == []
            assert node.controller.running_count == 0  # (over: nothing to cancel)
            late: list[TaskState] = []  # a waiter that comes while the hooks run waits too
            tg.start_soon(lambda: _append_wait(node, task.id, late))
            await anyio.sleep(0.05)
            assert late == []
            release.set()
        assert ended == late == [TaskState.COMPLETED] and heard == [task.id]
        value, _ = await node.objects.get(f"results/{task.id}")
        assert bytes(value) == b"hello\n"


async def _append_wait(node: LocalNode, task_id: str, into: list[TaskState]) -> None:
    into.append((await node.wait(task_id)).state)


async def test_a_hook_that_fails_still_wakes_the_waiters(tmp_path: Path) -> None:
    ok = str(hello(tmp_path))
    async with LocalNode(tmp_path / "home") as node:

        async def broken(finished: TasksFinished, /) -> None:
            raise RuntimeError("a broken hook")

        node.controller.add_finished_hook(broken)
        task = await node.submit(FunctionSpec(ok))
        with anyio.fail_after(10):
            assert (await node.wait(task.id)).state is TaskState.COMPLETED


async def test_a_hook_may_cancel_another_task_of_the_same_wave(tmp_path: Path) -> None:
    # (a parent's hook stops its children: one of them may have ended in the same wave)
    ok = str(hello(tmp_path))
    async with LocalNode(tmp_path / "home") as node:
        cancelled: list[TaskState] = []

        async def stop_the_others(finished: TasksFinished, /) -> None:
            for task in finished.tasks[1:]:
                cancelled.append((await node.cancel(task.id)).state)

        node.controller.add_finished_hook(stop_the_others)
        with anyio.fail_after(10):
            wave = await node.run_many([FunctionSpec(ok), FunctionSpec(ok)])
        assert [t.state for t in wave] == [TaskState.COMPLETED] * 2
        assert cancelled == [TaskState.COMPLETED]  # it had ended: it stays COMPLETED
