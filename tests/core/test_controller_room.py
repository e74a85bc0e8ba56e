"""More of the task controller's rules (core/tasks/controller.py), each stated for a mutant
that the first tests let live (issue 22, docs/mutation/REPORT.md): every reservation is
given back exactly once, also by a task stopped while it ran after waiting for room; a
recorded task run with `execute` waits for room; a finished hook that breaks is logged and
the node goes on; a task's end is written again while the node's storage fails, a bounded
number of times; a retried task with no output keeps running. Real LocalNodes (LevelDB,
wasm and process tasks); a storage failure is injected into the real task store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
import wasmtime
from log_capture import SpearLog
from wat_tasks import exits, hello

from spear import FunctionSpec, LocalNode, Resources, TaskState
from spear.core.tasks import controller as controller_module
from spear.errors import SpearError, StorageError, Unavailable

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.models import Task
    from spear.core.tasks import TasksFinished

SLOT = Resources(cpu_millis=100, memory_bytes=64 * 1024 * 1024)
LOOP_WAT = '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'


def _loop(tmp_path: Path) -> FunctionSpec:
    path = tmp_path / "loop.wasm"
    path.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    return FunctionSpec(str(path), resources=SLOT)


def _hello(tmp_path: Path) -> FunctionSpec:
    return FunctionSpec(str(hello(tmp_path)), resources=SLOT)


async def _until(check: Any, seconds: float = 20.0) -> None:
    with anyio.fail_after(seconds):
        while not check():
            await anyio.sleep(0.01)


def _node(tmp_path: Path, slots: int) -> LocalNode:
    return LocalNode(
        tmp_path / "home",
        node_name="n1",
        cpu_millis=slots * SLOT.cpu_millis,
        memory_bytes=slots * SLOT.memory_bytes,
    )


async def test_each_task_gives_back_exactly_its_own_room(tmp_path: Path) -> None:
    """Room comes back once per task: a second release would free the room of a task
    still running (the count stops at zero, so only the running one shows it)."""
    async with _node(tmp_path, 2) as node:
        controller = node.controller
        full = controller.capacity
        looping = await controller.submit(_loop(tmp_path))
        assert controller.free == full - SLOT
        done = await controller.run(_hello(tmp_path))
        assert done.state is TaskState.COMPLETED
        assert controller.free == full - SLOT  # the loop's room is still taken
        submitted = await controller.submit(_hello(tmp_path))
        assert (await controller.wait(submitted.id)).state is TaskState.COMPLETED
        assert controller.free == full - SLOT
        failing = FunctionSpec(
            str(exits(tmp_path, 3)), resources=SLOT, max_retries=1, retry_on=("exit",)
        )
        with anyio.fail_after(30):
            retried = await controller.run(failing)  # two attempts, one reservation each
        assert (retried.state, retried.attempts) == (TaskState.FAILED, 1)
        assert controller.free == full - SLOT
        with anyio.fail_after(20):  # (a cancel that does not stop it fails here)
            await controller.cancel(looping.id)
        assert controller.free == full


async def test_a_task_stopped_while_running_after_waiting_for_room_gives_it_back(
    tmp_path: Path,
) -> None:
    async with _node(tmp_path, 1) as node:
        controller = node.controller
        holder = await controller.submit(_loop(tmp_path))
        ids: list[str] = []
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: controller.run(_loop(tmp_path), on_created=_keep(ids)))
                await _until(lambda: controller.waiting_count == 1)
                await controller.cancel(holder.id)  # the waiting task is admitted and runs
                await _until(lambda: bool(ids) and controller.waiting_count == 0)
                await _until(lambda: _running(node, ids[0]))
                tg.cancel_scope.cancel()  # its caller stops while it runs
        assert controller.free == controller.capacity
        record = await node.task(ids[0])
        assert record.state is TaskState.CANCELLED  # stopped with its caller, not left RUNNING


def _keep(ids: list[str]) -> Any:
    return lambda task: ids.append(task.id)


def _running(node: LocalNode, task_id: str) -> bool:
    return task_id in node.controller.live_ids and node.controller.free == Resources(0, 0)


async def test_a_recorded_task_executed_waits_for_room(tmp_path: Path) -> None:
    async with _node(tmp_path, 1) as node:
        controller = node.controller
        holder = await controller.submit(_loop(tmp_path))
        task = await controller.create(_hello(tmp_path))
        ended: list[Any] = []

        async def execute() -> None:
            ended.append(await controller.execute(task))  # not admitted: it must wait

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(execute)
                await _until(lambda: controller.waiting_count == 1 or bool(ended))
                assert ended == [] and controller.waiting_count == 1
                await controller.cancel(holder.id)
                await _until(lambda: bool(ended))
        assert ended[0].state is TaskState.COMPLETED
        assert controller.free == controller.capacity


async def test_a_submitted_task_refused_raises_its_refusal_and_holds_no_room(
    tmp_path: Path,
) -> None:
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"not wasm")
    async with _node(tmp_path, 1) as node:
        with pytest.raises(SpearError) as info:
            await node.controller.submit(FunctionSpec(str(junk), resources=SLOT))
        assert info.value.exit_code == 65
        assert node.controller.free == node.controller.capacity
        done = await node.controller.run(_hello(tmp_path))  # the room is there to use
        assert done.state is TaskState.COMPLETED


async def test_a_finished_hook_that_breaks_is_logged_and_the_node_goes_on(tmp_path: Path) -> None:
    async def broken(finished: TasksFinished) -> None:
        raise RuntimeError("a hook with a bug")

    with SpearLog("ERROR", "{level}|{extra}|{message}") as logged:
        async with _node(tmp_path, 1) as node:
            node.controller.add_finished_hook(broken)
            task = await node.controller.submit(_hello(tmp_path))
            await _until(lambda: bool(logged))
            node.controller.remove_finished_hook(broken)
            done = await node.controller.run(_hello(tmp_path))
            assert done.state is TaskState.COMPLETED
    assert len(logged) == 1
    assert logged[0].startswith(f"ERROR|{{}}|task {task.id} failed in the controller\n")
    assert "RuntimeError: a hook with a bug" in logged[0]
    assert (await _record(tmp_path, task.id)).state is TaskState.COMPLETED


async def _record(tmp_path: Path, task_id: str) -> Any:
    async with _node(tmp_path, 1) as node:
        return await node.task(task_id)


def _failing_ends(node: LocalNode, failures: int) -> list[int]:
    """Make the node's store fail to write a COMPLETED end `failures` times."""
    store = node.controller.store
    real = store.transition
    tries: list[int] = []

    async def transition(task_id: str, state: TaskState, *args: Any, **kw: Any) -> Any:
        if state is TaskState.COMPLETED:
            tries.append(1)
            if len(tries) <= failures:
                raise StorageError("no space left on device")
        return await real(task_id, state, *args, **kw)

    store.transition = transition  # type: ignore[method-assign]
    return tries


async def test_an_end_is_written_again_while_storage_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller_module, "_END_WRITE_MAX_WAIT_S", 0.05)
    with SpearLog("WARNING", "{level}|{extra}|{message}") as logged:
        async with _node(tmp_path, 1) as node:
            tries = _failing_ends(node, 2)
            with anyio.fail_after(30):
                done = await node.controller.run(_hello(tmp_path))
            assert done.state is TaskState.COMPLETED and len(tries) == 3
            assert (await node.task(done.id)).state is TaskState.COMPLETED
    expected = (
        f"WARNING|{{'task_id': '{done.id}'}}|task {done.id}: its end is not written yet "
        "(no space left on device): trying again\n"
    )
    assert logged == [expected, expected]


async def test_an_end_that_cannot_be_written_is_given_up_after_its_tries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller_module, "_END_WRITE_TRIES", 3)
    monkeypatch.setattr(controller_module, "_END_WRITE_MAX_WAIT_S", 0.05)
    async with _node(tmp_path, 1) as node:
        tries = _failing_ends(node, 1000)
        with anyio.fail_after(30), pytest.raises(StorageError) as info:
            await node.controller.run(_hello(tmp_path))
        assert str(info.value) == "no space left on device" and len(tries) == 3
        assert node.controller.free == node.controller.capacity


async def test_a_retried_task_with_no_output_runs_again(tmp_path: Path) -> None:
    spec = FunctionSpec(str(exits(tmp_path, 3)), max_retries=2, retry_on=("exit",))
    async with _node(tmp_path, 1) as node:
        with anyio.fail_after(30):
            done = await node.controller.run(spec)
        assert (done.state, done.exit_code, done.attempts, done.node) == (
            TaskState.FAILED,
            3,
            2,
            "n1",
        )
        assert [a.reason for a in done.attempt_log] == ["exit status 3"] * 2
        assert [a.node for a in done.attempt_log] == ["n1"] * 2


async def test_a_timed_out_task_retried_on_timeouts_runs_again_and_says_why(
    tmp_path: Path,
) -> None:
    spec = FunctionSpec(
        _loop(tmp_path).artifact, timeout_s=0.2, max_retries=1, retry_on=("timeout",)
    )
    with SpearLog("INFO", "{level}|{extra}|{message}") as logged:
        async with _node(tmp_path, 1) as node:
            with anyio.fail_after(30):
                done = await node.controller.run(spec)
    assert (done.state, done.attempts) == (TaskState.FAILED, 1)
    (attempt,) = done.attempt_log
    assert (attempt.reason, attempt.exit_code, done.reason) == ("timeout", 124, "timeout")
    retried = [m for m in logged if "attempt 2 of 2" in m]
    assert retried == [
        f"INFO|{{'task_id': '{done.id}'}}|task {done.id} failed ({attempt.reason}): "
        "attempt 2 of 2 here\n"
    ]


async def test_each_task_of_a_forwarded_wave_joins_its_own_callers_trace(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from trace_helpers import traced_node

    first = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    third = "00-1bf7651916cd43dd8448eb211c80319d-c7ad6b7169203332-01"
    spec = _hello(tmp_path)
    async with traced_node(tmp_path / "home", InMemorySpanExporter()) as node:
        done = await node.controller.run_many([spec] * 3, parents=[first, "", third])
    assert [t.state for t in done] == [TaskState.COMPLETED] * 3
    assert done[0].trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert done[2].trace_id == "1bf7651916cd43dd8448eb211c80319d"
    assert len(done[1].trace_id) == 32  # no parent: a trace of its own
    assert done[1].trace_id not in (done[0].trace_id, done[2].trace_id)


class _CannotStart:
    """The node's wasm agent, but it cannot start the tasks of one module (a runtime that
    refuses at start what it prepared: the outcome is then known before anything ran)."""

    def __init__(self, agent: Any, artifact: str) -> None:
        self._agent = agent
        self._artifact = artifact

    def __getattr__(self, name: str) -> Any:
        return getattr(self._agent, name)

    async def start(self, ctx: Any) -> Any:
        if ctx.task.spec.artifact == self._artifact:
            raise Unavailable("the runtime cannot start it now")
        return await self._agent.start(ctx)


async def test_a_task_its_runtime_cannot_start_fails_alone_in_a_run_and_a_wave(
    tmp_path: Path,
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    broken = FunctionSpec(str(hello(other)), resources=SLOT)
    async with _node(tmp_path, 3) as node:
        node.agents["wasm"] = _CannotStart(node.agents["wasm"], broken.artifact)
        alone = await node.controller.run(broken)
        assert (alone.state, alone.reason) == (TaskState.FAILED, "the runtime cannot start it now")
        done = await node.controller.run_many([_hello(tmp_path), broken, _hello(tmp_path)])
        assert [t.state for t in done] == [
            TaskState.COMPLETED,
            TaskState.FAILED,
            TaskState.COMPLETED,
        ]
        assert done[1].reason == "the runtime cannot start it now"
        assert done[1].exit_code == alone.exit_code == Unavailable.exit_code
        assert node.controller.free == node.controller.capacity


PURE_WAT = """(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $argsz (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (drop (call $argsz (i32.const 0) (i32.const 4)))))"""


async def test_short_guests_of_a_wave_run_right_here_and_end_recorded(tmp_path: Path) -> None:
    path = tmp_path / "pure.wasm"
    path.write_bytes(wasmtime.wat2wasm(PURE_WAT))
    spec = FunctionSpec(str(path), resources=SLOT)
    async with _node(tmp_path, 3) as node:
        agent: Any = node.agents["wasm"]
        # On a busy machine a quick run may count as long: try until a wave ran inline.
        for _ in range(100):
            before = dict(agent.run_stats)
            done = await node.controller.run_many([spec] * 3)
            assert [t.state for t in done] == [TaskState.COMPLETED] * 3
            if agent.run_stats["inline"] > before["inline"]:
                break
        assert agent.run_stats["inline"] > before["inline"]  # some ran on the event loop
        for task in done:
            assert (await node.task(task.id)).state is TaskState.COMPLETED
        assert node.controller.free == node.controller.capacity


async def test_a_task_cancelled_before_it_started_gives_back_the_room_it_was_given(
    tmp_path: Path,
) -> None:
    async with _node(tmp_path, 1) as node:
        controller = node.controller
        task = await controller.submit(_hello(tmp_path))  # admitted at once: room taken
        assert controller.free == controller.capacity - SLOT
        cancelled = await controller.cancel(task.id, "not wanted")
        assert (cancelled.state, cancelled.reason) == (TaskState.CANCELLED, "not wanted")
        assert controller.free == controller.capacity


async def test_a_task_whose_end_and_loss_cannot_be_written_is_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails for good: the task's end cannot be written, nor its loss; the
    caller hears the failure, and nothing here waits for the task any more."""
    monkeypatch.setattr(controller_module, "_END_WRITE_TRIES", 1)
    async with _node(tmp_path, 1) as node:
        store = node.controller.store
        real = store.transition
        ids: list[str] = []

        async def transition(task_id: str, state: TaskState, *args: Any, **kw: Any) -> Any:
            await anyio.lowlevel.checkpoint()  # (a waiter gets to wait meanwhile)
            if state in (TaskState.COMPLETED, TaskState.FAILED):
                raise StorageError("no space left on device")
            return await real(task_id, state, *args, **kw)

        store.transition = transition  # type: ignore[method-assign]
        waited: list[Task] = []

        async def waiter(task_id: str) -> None:
            waited.append(await node.controller.wait(task_id))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:

                def created(task: Task) -> None:
                    ids.append(task.id)
                    tg.start_soon(waiter, task.id)  # (waiting on the run, woken when let go)

                with pytest.raises(StorageError):
                    await node.controller.run(_hello(tmp_path), on_created=created)
        assert [t.id for t in waited] == ids
        assert ids and ids[0] not in node.controller.live_ids
        assert node.controller.running_count == 0
        assert node.controller.free == node.controller.capacity
        with anyio.fail_after(10):
            record = await node.controller.wait(ids[0])  # answered from the store at once
        assert record.id == ids[0]


def _echo(tmp_path: Path, words: str) -> FunctionSpec:
    from spear import Runtime

    script = tmp_path / f"echo-{words}.sh"
    script.write_text(f"#!/bin/sh\necho {words}\n")
    script.chmod(0o755)
    return FunctionSpec(str(script), runtime=Runtime.PROCESS, resources=SLOT)


async def test_an_attempt_placed_again_where_an_earlier_one_ran_keeps_only_its_output(
    tmp_path: Path,
) -> None:
    """A task lost elsewhere and placed here again, where an earlier attempt of it ran
    (before a restart): its result is this attempt's output alone."""
    import dataclasses

    async with _node(tmp_path, 1) as node:
        earlier = await node.controller.run(_echo(tmp_path, "earlier"))
        assert await node.logs_of(earlier.id) == b"earlier\n"
        lost = dataclasses.replace(earlier, attempts=1)  # as the cluster hands it on
        again = await node.controller.submit(
            _echo(tmp_path, "again"), task_id=earlier.id, previous=lost
        )
        done = await node.controller.wait(again.id)
        assert (done.id, done.state, done.attempts) == (earlier.id, TaskState.COMPLETED, 1)
        assert await node.logs_of(done.id) == b"again\n"
        assert done.trace_id == earlier.trace_id  # (its trace goes on too)


async def test_a_forwarded_task_joins_the_trace_it_was_forwarded_in(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from trace_helpers import by_name, traced_node

    from spear.core.models import Task, new_task_id

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    spec = _hello(tmp_path)
    exporter = InMemorySpanExporter()
    async with traced_node(tmp_path / "home", exporter) as node:
        sent = Task(id=new_task_id(), spec=spec, created_at=0.0, traceparent=parent)
        task = await node.controller.submit(spec, task_id=sent.id, previous=sent)
        done = await node.controller.wait(task.id)
    assert (done.id, done.state) == (sent.id, TaskState.COMPLETED)  # under its own id
    assert done.trace_id == "0af7651916cd43dd8448eb211c80319c"
    runs = by_name(exporter.get_finished_spans(), "spear.run")
    assert runs and all(f"{s.context.trace_id:032x}" == done.trace_id for s in runs)


async def test_a_task_exiting_with_a_refusals_code_is_still_retried_on_exit(
    tmp_path: Path,
) -> None:
    """An agent's own exit is retried whatever its code (65 is also what a refused module
    exits with: only the reason tells them apart)."""
    spec = FunctionSpec(str(exits(tmp_path, 65)), max_retries=1, retry_on=("exit",))
    async with _node(tmp_path, 1) as node:
        with anyio.fail_after(30):
            done = await node.controller.run(spec)
    assert (done.state, done.exit_code, done.attempts) == (TaskState.FAILED, 65, 1)
    assert [a.reason for a in done.attempt_log] == ["exit status 65"]


async def test_run_returns_after_its_finished_hooks_ran(tmp_path: Path) -> None:
    heard: list[str] = []

    async def hook(finished: TasksFinished) -> None:
        heard.extend(t.id for t in finished.tasks)

    async with _node(tmp_path, 1) as node:
        node.controller.add_finished_hook(hook)
        done = await node.controller.run(_hello(tmp_path))
        assert heard == [done.id]  # (unless asked with hooks_later)
        many = await node.controller.run_many([_hello(tmp_path)] * 2)
        assert heard == [done.id, *(t.id for t in many)]
