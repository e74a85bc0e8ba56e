"""The task controller's waits, stated for the mutants its fifth mutation run let live
(issue 22, docs/mutation/REPORT.md): how long it waits before writing a task's end again
while the node's storage fails (doubling from 0.1 s up to 3 s), how a retry's back-off is
slept (in short steps a cancel can end), and that a submitted task can be waited for at
once. The controller's own sleeps are recorded (and made instant) through its `anyio`;
everything else is real: a LocalNode on LevelDB running wasm tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
import wasmtime
from test_controller_room import _failing_ends
from wat_tasks import exits, hello

from spear import FunctionSpec, LocalNode, Resources, TaskState
from spear.core import retries
from spear.core.models import Runtime
from spear.core.tasks import TaskController
from spear.core.tasks import controller as controller_module
from spear.core.tasks.running import CALLER_GONE
from spear.core.worker import EXIT_CANCELLED
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.models import Task
    from spear.core.tasks import TasksFinished

SLOT = Resources(cpu_millis=100, memory_bytes=64 * 1024 * 1024)
LOOP_WAT = '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'


class _Sleeps:
    """The controller's `anyio`, its sleeps recorded and not slept (yielding once)."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await anyio.sleep(0)


def _node(tmp_path: Path) -> LocalNode:
    return LocalNode(
        tmp_path / "home",
        node_name="n1",
        cpu_millis=SLOT.cpu_millis,
        memory_bytes=SLOT.memory_bytes,
    )


async def test_an_end_not_written_is_tried_again_after_a_pause_doubling_up_to_3_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps = _Sleeps()
    monkeypatch.setattr(controller_module, "anyio", sleeps)
    async with _node(tmp_path) as node:
        tries = _failing_ends(node, 8)
        with anyio.fail_after(30):
            done = await node.controller.run(FunctionSpec(str(hello(tmp_path)), resources=SLOT))
        assert done.state is TaskState.COMPLETED and len(tries) == 9
    assert sleeps.slept == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0])


async def test_a_retry_waits_its_back_off_in_steps_a_cancel_can_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps = _Sleeps()
    monkeypatch.setattr(controller_module, "anyio", sleeps)
    monkeypatch.setattr(retries, "backoff_s", lambda attempts: 0.32)
    spec = FunctionSpec(str(exits(tmp_path, 3)), resources=SLOT, max_retries=1, retry_on=("exit",))
    async with _node(tmp_path) as node:
        with anyio.fail_after(30):
            done = await node.controller.run(spec)
    assert (done.state, done.attempts) == (TaskState.FAILED, 1)
    # 0.32 s in 0.05 s steps: 7 of them (a cancel is noticed within one step)
    assert sleeps.slept == pytest.approx([0.05] * 7)


async def test_a_submitted_task_can_be_waited_for_at_once(tmp_path: Path) -> None:
    """`submit` registers the task's run before it starts; `execute` must go on with that
    run (a waiter may already wait on it), not put a new one in its place."""
    async with _node(tmp_path) as node:
        with anyio.fail_after(20):  # (a waiter left on a run nobody ends fails here)
            task = await node.controller.submit(FunctionSpec(str(hello(tmp_path)), resources=SLOT))
            done = await node.controller.wait(task.id)
        assert (done.id, done.state) == (task.id, TaskState.COMPLETED)
        assert node.controller.live_ids == []


async def test_at_most_the_bound_of_runs_leave_their_hooks_running_and_each_frees_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for two batches of hooks running after their answers, two runs return
    while their hooks are held, a third waits for its own; once the hooks are done, their
    places are free again (the same again)."""
    monkeypatch.setattr(controller_module, "_HOOKS_LATER_MAX", 2)
    spec = FunctionSpec(str(hello(tmp_path)), resources=SLOT)
    gate = anyio.Event()
    heard: list[str] = []

    async def held(finished: TasksFinished, /) -> None:
        with anyio.move_on_after(10):  # (bounded: a run awaiting a held hook must end)
            await gate.wait()
        heard.extend(t.id for t in finished.tasks)

    async with _node(tmp_path) as node:
        node.controller.add_finished_hook(held)
        for _ in range(2):
            with anyio.fail_after(5):
                for _ in range(2):
                    done = await node.controller.run(spec, hooks_later=True)
                    assert done.id not in heard  # answered before its hooks ran
            third: list[Task] = []

            async def run_into(into: list[Task]) -> None:
                into.append(await node.controller.run(spec, hooks_later=True))

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_into, third)
                try:
                    with anyio.move_on_after(0.5):  # (not returning while its hook is held)
                        while not third:
                            await anyio.sleep(0.01)
                    assert third == []
                finally:
                    gate.set()
            with anyio.fail_after(10):
                while len(heard) % 3:
                    await anyio.sleep(0.01)
            gate = anyio.Event()
        assert len(heard) == 6


async def test_hooks_running_after_the_answer_finish_when_the_node_is_stopped(
    tmp_path: Path,
) -> None:
    """A node stopped by its owner's cancel (Ctrl-C) still lets the hooks running after an
    answer finish: they keep the task's result (in a cluster, its commit with the SMS)."""
    heard: list[str] = []

    async def slow(finished: TasksFinished, /) -> None:
        await anyio.sleep(0.2)
        heard.extend(t.id for t in finished.tasks)

    with anyio.fail_after(20), anyio.CancelScope() as owner:
        async with _node(tmp_path) as node:
            node.controller.add_finished_hook(slow)
            done = await node.controller.run(
                FunctionSpec(str(hello(tmp_path)), resources=SLOT), hooks_later=True
            )
            assert heard == []
            owner.cancel()  # the node stops, cancelled
    assert owner.cancelled_caught
    assert heard == [done.id]


async def test_a_task_stopped_by_its_caller_is_recorded_though_the_write_yields(
    tmp_path: Path,
) -> None:
    """A store on the network (etcd) yields on every write: the record of a task whose
    caller stopped must still be written, not cancelled with the caller."""
    loop = tmp_path / "loop.wasm"
    loop.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    async with _node(tmp_path) as node:
        store = node.controller.store
        real = store.transition

        async def transition(*args: Any, **kw: Any) -> Any:
            await anyio.lowlevel.checkpoint()  # (as a write over the network would)
            return await real(*args, **kw)

        store.transition = transition  # type: ignore[method-assign]
        ids: list[str] = []
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: node.controller.run(
                        FunctionSpec(str(loop), resources=SLOT),
                        on_created=lambda task: ids.append(task.id),
                    )
                )
                while not (ids and node.controller.free == Resources(0, 0)):
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()  # its caller stops while it runs
        record = await node.task(ids[0])
        assert (record.state, record.exit_code) == (TaskState.CANCELLED, EXIT_CANCELLED)
        assert record.reason == CALLER_GONE
        assert node.controller.free == node.controller.capacity


async def test_a_runs_hooks_finish_though_its_caller_stops_while_they_run(
    tmp_path: Path,
) -> None:
    """The finished hooks keep a task's result (in a cluster, its commit with the SMS): a
    caller that stops while they run does not cut them short."""
    started = anyio.Event()
    heard: list[str] = []

    async def slow(finished: TasksFinished, /) -> None:
        started.set()
        await anyio.sleep(0.2)
        heard.extend(t.id for t in finished.tasks)

    async with _node(tmp_path) as node:
        node.controller.add_finished_hook(slow)
        ids: list[str] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: node.controller.run(
                        FunctionSpec(str(hello(tmp_path)), resources=SLOT),
                        on_created=lambda task: ids.append(task.id),
                    )
                )
                await started.wait()
                tg.cancel_scope.cancel()  # its caller stops while its hooks run
        assert heard == ids
        assert (await node.task(ids[0])).state is TaskState.COMPLETED


async def test_a_runtime_the_node_does_not_offer_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "true.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o755)
    async with _node(tmp_path) as node:
        controller = node.controller
        # (a node built without the process runtime: only its wasm agent)
        monkeypatch.setattr(controller, "_agents", {"wasm": controller._agents["wasm"]})
        with pytest.raises(InvalidArgument) as info:
            await controller.run(FunctionSpec(str(script), runtime=Runtime.PROCESS))
        message = "runtime 'process' is not available on this node"
        assert str(info.value) == message
        (record,) = await node.tasks()
        assert (record.state, record.reason) == (TaskState.FAILED, message)


async def test_a_node_not_started_refuses_a_submission(tmp_path: Path) -> None:
    node = _node(tmp_path)
    with pytest.raises(RuntimeError) as info:
        await node.controller.submit(FunctionSpec(str(hello(tmp_path)), resources=SLOT))
    assert str(info.value) == "the task controller is not started"
    async with node:  # (started, it takes it)
        task = await node.controller.submit(FunctionSpec(str(hello(tmp_path)), resources=SLOT))
        with anyio.fail_after(20):
            assert (await node.controller.wait(task.id)).state is TaskState.COMPLETED


async def test_a_node_stopping_stops_its_running_tasks_and_says_why(tmp_path: Path) -> None:
    loop = tmp_path / "loop.wasm"
    loop.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    with anyio.fail_after(30):
        async with _node(tmp_path) as node:
            task = await node.controller.submit(FunctionSpec(str(loop), resources=SLOT))
            while node.controller.free != Resources(0, 0):
                await anyio.sleep(0.01)
            await node.shutdown("maintenance")
        async with _node(tmp_path) as node:
            record = await node.task(task.id)
    assert (record.state, record.reason) == (TaskState.CANCELLED, "maintenance")


async def test_a_controller_made_without_services_runs_tasks_untraced(tmp_path: Path) -> None:
    async with _node(tmp_path) as node:
        parts = node.controller
        controller = TaskController(parts.store, parts._agents, parts._logs, SLOT, "n2")
        assert controller.tracing is None
        with anyio.fail_after(20):
            done = await controller.run(FunctionSpec(str(hello(tmp_path)), resources=SLOT))
        assert (done.state, done.node) == (TaskState.COMPLETED, "n2")
