"""A task that ends while the node's disk is full (issue 16's disk-full fault): its end
is written again until there is room, alone or in a wave, and the task ends as it ended,
not RUNNING for ever; so are a waiting task's start and a retried task's next attempt
(the chaos suite once saw a task left PENDING for ever on the full node). The failures
are the very error LevelDB's store raises for a full disk (NoSpace, a ResourceExhausted:
`store/diskspace.py`), not a StorageError; everything else is real: a LocalNode on
LevelDB running wasm tasks.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from log_capture import SpearLog
from wat_tasks import exits, hello

from spear import FunctionSpec, LocalNode, Resources, Runtime, TaskState
from spear.core.tasks import controller as controller_module
from spear.store.diskspace import no_space

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.models import Task
    from spear.errors import NoSpace

SLOT = Resources(cpu_millis=100, memory_bytes=64 * 1024 * 1024)


def _full_disk() -> NoSpace:
    error = no_space(OSError(errno.ENOSPC, "No space left on device"), "the database")
    assert error is not None
    return error


def _failing(
    node: LocalNode, method: str, failures: int, state: TaskState = TaskState.COMPLETED
) -> list[int]:
    """The node's task store's `method` fails `failures` times as a full disk does (a
    `transition`: only those to `state`)."""
    store = node.controller.store
    real = getattr(store, method)
    tries: list[int] = []

    async def write(*args: Any, **kw: Any) -> Any:
        if method != "transition" or args[1] is state:
            tries.append(1)
            if len(tries) <= failures:
                raise _full_disk()
        return await real(*args, **kw)

    setattr(store, method, write)
    return tries


@pytest.fixture(autouse=True)
def _short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "_END_WRITE_MAX_WAIT_S", 0.05)


async def test_an_end_that_meets_a_full_disk_is_written_once_there_is_room(
    tmp_path: Path,
) -> None:
    with SpearLog("WARNING", "{message}") as logged:
        async with LocalNode(tmp_path / "home", node_name="n1", cpu_millis=200) as node:
            tries = _failing(node, "transition", 2)
            with anyio.fail_after(30):
                done = await node.controller.run(FunctionSpec(str(hello(tmp_path))))
            assert (done.state, done.exit_code) == (TaskState.COMPLETED, 0)
            assert (await node.task(done.id)).state is TaskState.COMPLETED
            assert len(tries) == 3
    said = f"task {done.id}: its end is not written yet ({_full_disk()}): trying again\n"
    assert logged == [said, said]


async def test_the_ends_of_a_wave_that_meet_a_full_disk_are_written_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (the wave's ends in one write however far apart its tasks end: see EARLY_FINISH_S)
    monkeypatch.setattr(controller_module, "EARLY_FINISH_S", 3600.0)
    with SpearLog("WARNING", "{message}") as logged:
        async with LocalNode(tmp_path / "home", node_name="n1", cpu_millis=300) as node:
            tries = _failing(node, "finish_wave", 2)
            spec = FunctionSpec(str(hello(tmp_path)), resources=SLOT)
            with anyio.fail_after(30):
                done = await node.controller.run_many([spec, spec, spec])
            assert [t.state for t in done] == [TaskState.COMPLETED] * 3
            for task in done:
                assert (await node.task(task.id)).state is TaskState.COMPLETED
            assert len(tries) == 3
    said = f"the ends of 3 tasks are not written yet ({_full_disk()}): trying again\n"
    assert logged == [said, said]


async def test_a_start_that_meets_a_full_disk_is_written_once_there_is_room(
    tmp_path: Path,
) -> None:
    with SpearLog("WARNING", "{extra}|{message}") as logged:
        async with LocalNode(tmp_path / "home", node_name="n1", cpu_millis=200) as node:
            tries = _failing(node, "transition", 2, TaskState.RUNNING)
            submitted = await node.controller.submit(FunctionSpec(str(hello(tmp_path))))
            assert submitted.state is TaskState.PENDING
            with anyio.fail_after(30):
                done = await node.controller.wait(submitted.id)
            assert (done.state, done.exit_code) == (TaskState.COMPLETED, 0)
            assert (await node.task(done.id)).state is TaskState.COMPLETED
            assert len(tries) == 3
    said = f"task {done.id}: its start is not written yet ({_full_disk()}): trying again\n"
    assert logged == [f"{{'task_id': '{done.id}'}}|{said}"] * 2  # (bound to the task)


async def test_a_next_attempt_that_meets_a_full_disk_is_written_once_there_is_room(
    tmp_path: Path,
) -> None:
    spec = FunctionSpec(str(exits(tmp_path, 3)), max_retries=1, retry_on=("exit",))
    with SpearLog("WARNING", "{extra}|{message}") as logged:
        async with LocalNode(tmp_path / "home", node_name="n1", cpu_millis=200) as node:
            tries = _failing(node, "update", 2)
            with anyio.fail_after(30):
                done = await node.controller.run(spec)
            assert (done.state, done.exit_code, done.attempts) == (TaskState.FAILED, 3, 1)
            assert [a.reason for a in done.attempt_log] == ["exit status 3"]
            assert len(tries) == 3
    said = f"task {done.id}: its next attempt is not written yet ({_full_disk()}): trying again\n"
    bound = f"{{'task_id': '{done.id}'}}|{said}"  # (bound to the task)
    assert [line for line in logged if "next attempt" in line] == [bound, bound]


async def test_the_ends_of_a_waves_early_part_that_meet_a_full_disk_are_written_once_there_is_room(
    tmp_path: Path,
) -> None:
    """(A task of a wave finished while another runs on: see EARLY_FINISH_S.)"""
    sleeper, quick = tmp_path / "sleeper.sh", tmp_path / "quick.sh"
    sleeper.write_text("#!/bin/sh\nexec sleep 3600\n")
    quick.write_text("#!/bin/sh\nexit 0\n")
    for script in (sleeper, quick):
        script.chmod(0o755)
    specs = [FunctionSpec(str(s), runtime=Runtime.PROCESS) for s in (sleeper, quick)]
    with SpearLog("WARNING", "{message}") as logged:
        async with LocalNode(tmp_path / "home", node_name="n1", cpu_millis=200) as node:
            controller = node.controller
            tries = _failing(node, "finish_wave", 2)
            done: list[Task] = []

            async def many() -> None:
                done.extend(await controller.run_many(specs))

            async with anyio.create_task_group() as tg:
                tg.start_soon(many)
                try:
                    with anyio.fail_after(30):
                        while len(await node.tasks(TaskState.COMPLETED)) < 1:
                            await anyio.sleep(0.01)
                    [running] = await node.tasks(TaskState.RUNNING)  # (the sleeper)
                    await controller.cancel(running.id)
                finally:
                    await controller.cancel_all("the test ended")
            assert [t.state for t in done] == [TaskState.CANCELLED, TaskState.COMPLETED]
            assert len(tries) == 4  # (the early part's three, the wave's last)
    said = f"the ends of 1 tasks are not written yet ({_full_disk()}): trying again\n"
    assert logged == [said, said]
