"""The task controller's rules (core/tasks/controller.py) stated exactly, on a real
LocalNode with wasm tasks: what a refused task's record says, the ids a forwarded wave
keeps, which refusal belongs to which task, a wave that waits for room behind other work
and runs in order, that every reservation comes back (also when a wave cannot even be
recorded), and a finished hook removed is no longer called. Written for mutation testing
(issue 22); the broader behaviour is in test_local_node.py, test_run_many.py and
test_finished_hooks.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
import wasmtime
from wat_tasks import exits, hello, ticker

from spear import FunctionSpec, LocalNode, Resources, Runtime, TaskState
from spear.core.models import Task, new_task_id
from spear.core.tasks.running import CALLER_GONE
from spear.core.worker import EXIT_CANCELLED
from spear.errors import NotFound, SpearError

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.tasks import TasksFinished

LOOP_WAT = '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'


def _junk(tmp_path: Path) -> str:
    path = tmp_path / "junk.wasm"
    path.write_bytes(b"not wasm")
    return str(path)


def _loop(tmp_path: Path) -> str:
    path = tmp_path / "loop.wasm"
    path.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    return str(path)


async def _until(check: object, seconds: float = 20.0) -> None:
    with anyio.fail_after(seconds):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.01)


async def test_a_refused_task_is_recorded_failed_with_the_refusals_words(
    tmp_path: Path,
) -> None:
    async with LocalNode(tmp_path / "home") as node:
        task_id = new_task_id()
        with pytest.raises(SpearError) as info:
            await node.controller.run(FunctionSpec(_junk(tmp_path)), task_id=task_id)
        record = await node.task(task_id)
        assert (record.state, record.exit_code) == (TaskState.FAILED, info.value.exit_code)
        assert record.reason == str(info.value) and record.reason
        assert node.controller.free == node.controller.capacity


async def test_a_wave_keeps_the_ids_it_is_given_and_maps_each_refusal(tmp_path: Path) -> None:
    ok, junk = str(hello(tmp_path)), _junk(tmp_path)
    ids = [new_task_id() for _ in range(3)]
    async with LocalNode(tmp_path / "home") as node:
        refusals: dict[str, SpearError] = {}
        done = await node.controller.run_many(
            [FunctionSpec(ok), FunctionSpec(junk), FunctionSpec(ok)],
            task_ids=ids,
            refusals=refusals,
        )
        assert [t.id for t in done] == ids
        assert [t.state for t in done] == [
            TaskState.COMPLETED,
            TaskState.FAILED,
            TaskState.COMPLETED,
        ]
        assert list(refusals) == [ids[1]]
        refusal = refusals[ids[1]]
        assert isinstance(refusal, SpearError)
        assert done[1].reason == str(refusal) and done[1].exit_code == refusal.exit_code
        for task in done:
            assert await node.task(task.id) == task


async def test_a_wave_is_recorded_running_from_its_creation(tmp_path: Path) -> None:
    async with LocalNode(tmp_path / "home") as node:
        (done,) = await node.controller.run_many([FunctionSpec(str(hello(tmp_path)))])
        (pending, pending_at), (running, running_at), (ended, _) = done.history
        assert (pending, running, ended) == ("PENDING", "RUNNING", "COMPLETED")
        assert running_at == pending_at == done.created_at  # one write: admitted at once


async def test_a_wave_behind_other_work_waits_for_room_and_runs_in_order(
    tmp_path: Path,
) -> None:
    first = FunctionSpec(str(hello(tmp_path)), resources=Resources(100, 1 << 20))
    second = FunctionSpec(str(exits(tmp_path, 3)), resources=Resources(200, 2 << 20))
    async with LocalNode(tmp_path / "home", cpu_millis=300) as node:
        controller = node.controller
        blocker = await controller.submit(
            FunctionSpec(_loop(tmp_path), resources=Resources(250, 1 << 20))
        )
        await _until(lambda: controller.free.cpu_millis == 50)
        ended: list[list[str]] = []

        async def run() -> None:
            done = await controller.run_many([first, second, first])
            ended.append([f"{t.state}:{t.exit_code}:{t.spec.artifact}" for t in done])

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await _until(lambda: controller.waiting_count == 1)  # the wave waits in turn
            assert ended == []
            await controller.cancel(blocker.id)
        assert ended == [
            [
                f"COMPLETED:0:{first.artifact}",
                f"FAILED:3:{second.artifact}",
                f"COMPLETED:0:{first.artifact}",
            ]
        ]
        assert controller.free == controller.capacity  # every reservation returned
        assert controller.running_count == 0 and controller.waiting_count == 0


async def test_a_wave_that_cannot_be_recorded_gives_its_room_back(tmp_path: Path) -> None:
    task_id = new_task_id()
    spec = FunctionSpec(str(hello(tmp_path)))
    async with LocalNode(tmp_path / "home") as node:
        # One id twice: the wave's one write is refused (by LevelDBKV.commit).
        with pytest.raises(ValueError, match="names a key more than once"):
            await node.controller.run_many([spec, spec], task_ids=[task_id, task_id])
        assert node.controller.free == node.controller.capacity
        (after,) = await node.controller.run_many([spec])
        assert after.state is TaskState.COMPLETED


async def test_a_removed_finished_hook_is_not_called_again(tmp_path: Path) -> None:
    heard: list[str] = []

    async def hook(finished: TasksFinished, /) -> None:
        heard.extend(t.id for t in finished.tasks)

    spec = FunctionSpec(str(hello(tmp_path)))
    async with LocalNode(tmp_path / "home") as node:
        node.controller.add_finished_hook(hook)
        one = await node.run(spec)
        node.controller.remove_finished_hook(hook)
        await node.run(spec)
        await node.run_many([spec])
        assert heard == [one.id]


async def test_a_wave_task_past_its_timeout_fails_as_a_single_one_does(tmp_path: Path) -> None:
    spec = FunctionSpec(_loop(tmp_path), timeout_s=0.2)
    async with LocalNode(tmp_path / "home") as node:
        with anyio.fail_after(30):
            single = await node.controller.run(spec)
            (waved,) = await node.controller.run_many([spec])
        assert single.state is TaskState.FAILED
        assert (waved.state, waved.exit_code, waved.reason) == (
            single.state,
            single.exit_code,
            single.reason,
        )
        # The deadline counts from the start: a guest ends well before its timeout.
        in_time = FunctionSpec(str(ticker(tmp_path, 1, 50)), timeout_s=30)  # (a 50 ms nap)
        with anyio.fail_after(30):
            assert (await node.controller.run(in_time)).state is TaskState.COMPLETED
            (waved,) = await node.controller.run_many([in_time])
        assert waved.state is TaskState.COMPLETED


async def test_a_running_wave_task_can_be_cancelled(tmp_path: Path) -> None:
    ids = [new_task_id(), new_task_id()]
    spec = FunctionSpec(_loop(tmp_path))
    async with LocalNode(tmp_path / "home") as node:
        controller = node.controller
        ended: list[Task] = []

        async def run() -> None:
            ended.extend(await controller.run_many([spec, spec], task_ids=ids))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await _until(lambda: controller.running_count == 2)
                # (Both at once: a wave's ends are written together, so a cancel of one
                # of its tasks returns once the whole wave has ended.)
                tg.start_soon(controller.cancel, ids[0], "enough")
                tg.start_soon(controller.cancel, ids[1])
        assert [(t.id, t.state, t.exit_code, t.reason) for t in ended] == [
            (ids[0], TaskState.CANCELLED, EXIT_CANCELLED, "enough"),
            (ids[1], TaskState.CANCELLED, EXIT_CANCELLED, "cancelled"),
        ]
        assert controller.free == controller.capacity


async def test_a_wave_stopped_by_its_caller_stops_its_guests_and_records_why(
    tmp_path: Path,
) -> None:
    ids = [new_task_id(), new_task_id()]
    spec = FunctionSpec(_loop(tmp_path))
    async with LocalNode(tmp_path / "home") as node:
        controller = node.controller
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(controller.run_many, [spec, spec], ids)
                await _until(lambda: controller.running_count == 2)
                tg.cancel_scope.cancel()
        for task_id in ids:
            record = await node.task(task_id)
            assert (record.state, record.exit_code, record.reason) == (
                TaskState.CANCELLED,
                EXIT_CANCELLED,
                CALLER_GONE,
            )
        assert await node.kv.scan("active/") == []  # the wave's marker went with them
        assert controller.free == controller.capacity
        assert controller.running_count == 0


# -- cancel and wait ----------------------------------------------------------------------


async def test_a_recorded_task_not_yet_started_is_cancelled_in_its_record(
    tmp_path: Path,
) -> None:
    async with LocalNode(tmp_path / "home") as node:
        controller = node.controller
        task = await controller.create(FunctionSpec(str(hello(tmp_path))))
        with anyio.fail_after(20):
            cancelled = await controller.cancel(task.id, "changed my mind")
            assert (cancelled.id, cancelled.state, cancelled.reason, cancelled.exit_code) == (
                task.id,
                TaskState.CANCELLED,
                "changed my mind",
                EXIT_CANCELLED,
            )
            assert await node.task(task.id) == cancelled
            assert await controller.cancel(task.id, "again") == cancelled  # it stays so
            assert await controller.wait(task.id) == cancelled
            done = await controller.run(FunctionSpec(str(hello(tmp_path))))
            assert await controller.cancel(done.id) == done  # a finished task stays done
            with pytest.raises(NotFound):
                await controller.cancel(new_task_id())


async def test_a_task_waiting_for_room_and_a_running_one_are_cancelled(
    tmp_path: Path,
) -> None:
    async with LocalNode(tmp_path / "home", cpu_millis=100) as node:
        controller = node.controller
        with anyio.fail_after(20):
            running = await controller.submit(FunctionSpec(_loop(tmp_path)))
            waiting = await controller.submit(FunctionSpec(str(hello(tmp_path))))
            await _until(lambda: controller.waiting_count == 1)
            cancelled = await controller.cancel(waiting.id, "not needed")
            assert (cancelled.state, cancelled.reason, cancelled.exit_code) == (
                TaskState.CANCELLED,
                "not needed",
                EXIT_CANCELLED,
            )
            assert [s for s, _ in cancelled.history] == ["PENDING", "CANCELLED"]  # never ran
            stopped = await controller.cancel(running.id)
            assert (stopped.state, stopped.reason, stopped.exit_code) == (
                TaskState.CANCELLED,
                "cancelled",
                EXIT_CANCELLED,
            )
            assert await controller.wait(running.id) == stopped == await node.task(running.id)
            assert await controller.wait(waiting.id) == cancelled
        assert controller.free == controller.capacity and controller.waiting_count == 0


# -- submit and retries: what is handed on --------------------------------------------------


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


async def test_a_submitted_task_gets_its_id_its_stdin_and_its_earlier_attempts(
    tmp_path: Path,
) -> None:
    spec = FunctionSpec(_script(tmp_path, "cat.sh", "cat"), runtime=Runtime.PROCESS)
    async with LocalNode(tmp_path / "home", node_name="n1") as node:
        controller = node.controller
        task_id = new_task_id()
        earlier = Task(id=task_id, spec=spec, node="n0", attempts=1)
        with anyio.fail_after(30):
            task = await controller.submit(
                spec, stdin=b"from the caller\n", task_id=task_id, previous=earlier
            )
            assert (task.id, task.node, task.attempts) == (task_id, "n1", 1)
            done = await controller.wait(task_id)
        assert (done.state, done.attempts) == (TaskState.COMPLETED, 1)
        assert await node.logs_of(task_id) == b"from the caller\n"


async def test_a_controller_not_started_says_so() -> None:
    from spear.core.tasks import TaskController

    controller = TaskController.__new__(TaskController)
    controller._task_group = None
    with pytest.raises(RuntimeError) as info:
        await controller.submit(FunctionSpec("x.wasm"))
    assert str(info.value) == "the task controller is not started"


async def test_a_retried_failure_is_logged_and_kept_with_its_code_and_reason(
    tmp_path: Path,
) -> None:
    from loguru import logger

    spec = FunctionSpec(
        _script(tmp_path, "three.sh", "echo out; exit 3"),
        runtime=Runtime.PROCESS,
        max_retries=1,
        retry_on=("exit",),
    )
    logged: list[str] = []
    sink = logger.add(logged.append, level="INFO", format="{message}", filter="spear")
    logger.enable("spear")
    try:
        async with LocalNode(tmp_path / "home", node_name="n1") as node:
            with anyio.fail_after(60):
                done = await node.controller.run(spec)
            assert (done.state, done.exit_code, done.attempts) == (TaskState.FAILED, 3, 1)
            (attempt,) = done.attempt_log
            assert (attempt.node, attempt.exit_code, attempt.reason) == ("n1", 3, "exit status 3")
            assert await node.logs_of(done.id) == b"out\n"  # the last attempt's output alone
    finally:
        logger.disable("spear")
        logger.remove(sink)
    retried = [m for m in logged if "attempt" in m]
    assert retried == [f"task {done.id} failed (exit status 3): attempt 2 of 2 here\n"]


async def test_run_hands_on_stdin_tees_both_streams_and_tells_the_caller_the_id(
    tmp_path: Path,
) -> None:
    spec = FunctionSpec(_script(tmp_path, "both.sh", "cat; echo err >&2"), runtime=Runtime.PROCESS)
    out: list[bytes] = []
    err: list[bytes] = []
    created: list[Task] = []
    async with LocalNode(tmp_path / "home") as node:
        with anyio.fail_after(30):
            done = await node.controller.run(
                spec,
                stdin=b"in\n",
                tee_stdout=out.append,
                tee_stderr=err.append,
                on_created=created.append,
            )
        assert done.state is TaskState.COMPLETED
        assert (b"".join(out), b"".join(err)) == (b"in\n", b"err\n")
        assert [t.id for t in created] == [done.id]
        # Admitted at once: recorded RUNNING from its creation (one write).
        (_, pending_at), (running, running_at), _ = done.history
        assert (running, running_at) == ("RUNNING", pending_at)
        assert created[0].state is TaskState.RUNNING


async def test_a_wave_task_whose_program_is_gone_fails_and_the_rest_still_run(
    tmp_path: Path,
) -> None:
    gone = _script(tmp_path, "gone.sh", "echo never")
    first = _script(tmp_path, "first.sh", f"rm {gone}; echo first")
    last = _script(tmp_path, "last.sh", "echo last")
    specs = [  # the first takes the whole node: the other two run in the next wave
        FunctionSpec(first, runtime=Runtime.PROCESS, resources=Resources(200)),
        FunctionSpec(gone, runtime=Runtime.PROCESS),
        FunctionSpec(last, runtime=Runtime.PROCESS),
    ]
    async with LocalNode(tmp_path / "home", cpu_millis=200) as node:
        with anyio.fail_after(30):
            done = await node.controller.run_many(specs)
        assert [(t.state, t.exit_code) for t in done] == [
            (TaskState.COMPLETED, 0),
            (TaskState.FAILED, 127),
            (TaskState.COMPLETED, 0),
        ]
        assert done[1].reason == f"cannot execute {gone}: No such file or directory"
        assert await node.logs_of(done[2].id) == b"last\n"
        assert node.controller.free == node.controller.capacity
