"""`TaskController.run(hooks_later=True)`: the call returns once the task's end is
recorded; the finished hooks (its result kept: in a cluster a commit with the SMS) run on
in the node's task group. A forwarded call answers this way (node/peer.py, issue 17)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
from wat_tasks import hello

from spear import FunctionSpec, LocalNode, TaskState

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from spear.core.models import Task
    from spear.core.tasks import TasksFinished


async def test_run_returns_before_its_hooks_and_they_still_run(tmp_path: Path) -> None:
    spec = FunctionSpec(str(hello(tmp_path)))
    async with LocalNode(tmp_path / "home", cpu_millis=200) as node:
        release, done = anyio.Event(), anyio.Event()
        heard: list[str] = []

        async def slow_hook(finished: TasksFinished, /) -> None:
            # (bounded: hooks are awaited shielded, and a run that awaited them here
            # must end, to fail by assertion, not hang)
            with anyio.move_on_after(8):
                await release.wait()
            heard.extend(t.id for t in finished.tasks)
            done.set()

        node.controller.add_finished_hook(slow_hook)
        try:
            with anyio.fail_after(10):  # (awaiting the hooks: this would wait for `release`)
                task = await node.controller.run(spec, hooks_later=True)
        finally:  # (else the node, stopping, would wait for the held hook forever)
            heard_before = list(heard)
            release.set()
        assert heard_before == []
        assert task.state is TaskState.COMPLETED
        with anyio.fail_after(10):
            await done.wait()
        assert heard == [task.id]
        # Its result is kept by the node's own hook, before the slow one, as always.
        value, _ = await node.objects.get(f"results/{task.id}")
        assert bytes(value) == b"hello\n"


async def test_run_many_returns_before_its_waves_hooks(tmp_path: Path) -> None:
    spec = FunctionSpec(str(hello(tmp_path)))
    async with LocalNode(tmp_path / "home", cpu_millis=200) as node:
        release, done = anyio.Event(), anyio.Event()
        heard: list[str] = []

        async def slow_hook(finished: TasksFinished, /) -> None:
            # (bounded: hooks are awaited shielded, and a run that awaited them here
            # must end, to fail by assertion, not hang)
            with anyio.move_on_after(8):
                await release.wait()
            heard.extend(t.id for t in finished.tasks)
            if len(heard) == 5:
                done.set()

        node.controller.add_finished_hook(slow_hook)
        try:
            with anyio.fail_after(10):  # five tasks, two at a time: three waves, none waiting
                tasks = await node.controller.run_many([spec] * 5, hooks_later=True)
        finally:  # (else the node, stopping, would wait for the held hook forever)
            heard_before = list(heard)
            release.set()
        assert {t.state for t in tasks} == {TaskState.COMPLETED} and heard_before == []
        with anyio.fail_after(10):
            await done.wait()
        assert sorted(heard) == sorted(t.id for t in tasks)


async def test_past_the_bound_a_run_waits_for_its_hooks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear.core.tasks import controller

    monkeypatch.setattr(controller, "_HOOKS_LATER_MAX", 1)
    spec = FunctionSpec(str(hello(tmp_path)))
    async with LocalNode(tmp_path / "home", cpu_millis=200) as node:
        release = anyio.Event()

        async def slow_hook(finished: TasksFinished, /) -> None:
            await release.wait()

        node.controller.add_finished_hook(slow_hook)
        with anyio.fail_after(10):
            await node.controller.run(spec, hooks_later=True)  # its hooks: the one allowed
        second: list[Task] = []

        async def run_second() -> None:
            second.append(await node.controller.run(spec, hooks_later=True))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_second)
            try:
                with anyio.move_on_after(0.5):  # (it must not return while the hook is held)
                    while not second:
                        await anyio.sleep(0.01)
                assert second == []
            finally:
                release.set()
        assert second[0].state is TaskState.COMPLETED
