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
