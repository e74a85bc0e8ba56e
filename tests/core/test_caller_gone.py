"""A call that runs a task and is cancelled while its guest runs (its client went away, a
forwarding node's connection dropped): the guest is stopped and waited for before the
cancel goes on, and the task is recorded CANCELLED with why. Before, a WASM guest ran on on
its thread after its room was freed and its task recorded lost, and a cancelled call of a
process waited for the process to end of itself, then recorded it lost as well.

A LocalNode on LevelDB, real WASM guests and real processes.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import anyio
import wasmtime

from spear import FunctionSpec, LocalNode, Resources, Runtime, TaskState
from spear.core import retries
from spear.core.models import new_task_id
from spear.core.tasks.running import CALLER_GONE, STOPPED
from spear.core.worker import EXIT_CANCELLED, EXIT_LOST, Outcome

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pytest

LOOP_WAT = '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'


def _loop(tmp_path: Path) -> FunctionSpec:
    path = tmp_path / "loop.wasm"
    path.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    return FunctionSpec(str(path))


def _sleeper(tmp_path: Path, name: str) -> FunctionSpec:
    """A process that writes its pid to `name`.pid, then sleeps for a minute."""
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\necho $$ > {tmp_path / name}.pid\nexec sleep 60\n")
    script.chmod(0o755)
    return FunctionSpec(str(script), runtime=Runtime.PROCESS)


def _pid(tmp_path: Path, name: str) -> int | None:
    path = tmp_path / f"{name}.pid"
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = f"/proc/{pid}/status"
    return os.path.exists(status) and "\nState:\tZ" not in open(status).read()


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await anyio.sleep(0.01)


def _stopped_with_its_caller(task_state: object) -> None:
    assert task_state == (TaskState.CANCELLED, EXIT_CANCELLED, CALLER_GONE)


async def test_a_run_whose_caller_goes_away_stops_its_process(tmp_path: Path) -> None:
    async with LocalNode(tmp_path / "home") as node:
        controller = node.controller
        ids: list[str] = []
        with anyio.fail_after(30):  # (before: the cancel waited out the minute's sleep)
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: controller.run(
                        _sleeper(tmp_path, "one"), on_created=lambda t: ids.append(t.id)
                    )
                )
                await _until(lambda: _pid(tmp_path, "one") is not None)
                tg.cancel_scope.cancel()  # its caller goes away while it runs
        pid = _pid(tmp_path, "one")
        assert pid is not None and not _alive(pid)  # stopped before the cancel returned
        record = await node.task(ids[0])
        _stopped_with_its_caller((record.state, record.exit_code, record.reason))
        assert controller.free == controller.capacity
        assert controller.running_count == 0


async def test_a_run_cancelled_as_grpc_cancels_a_handler_stops_its_guest(tmp_path: Path) -> None:
    """grpc.aio cancels a handler's asyncio task once (no cancel scope that goes on
    cancelling): the guest is stopped and waited for all the same."""
    async with LocalNode(tmp_path / "home", cpu_millis=1000) as node:
        controller = node.controller
        ids: list[str] = []
        call = asyncio.ensure_future(
            controller.run(_loop(tmp_path), on_created=lambda t: ids.append(t.id))
        )
        with anyio.fail_after(30):
            await _until(lambda: bool(ids) and controller.running_count == 1)
            await anyio.sleep(0.05)  # (on its thread, running)
            call.cancel()
            done, _ = await asyncio.wait([call])
        assert call.cancelled()
        record = await node.task(ids[0])
        _stopped_with_its_caller((record.state, record.exit_code, record.reason))
        assert controller.free == controller.capacity
        assert controller.running_count == 0


async def test_a_batch_whose_caller_goes_away_stops_every_guest(tmp_path: Path) -> None:
    ids = [new_task_id(), new_task_id(), new_task_id()]
    specs = [_sleeper(tmp_path, "a"), _loop(tmp_path), _sleeper(tmp_path, "b")]
    async with LocalNode(tmp_path / "home", cpu_millis=1000) as node:
        controller = node.controller
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(controller.run_many, specs, ids)
                await _until(
                    lambda: (
                        controller.running_count == 3
                        and _pid(tmp_path, "a") is not None
                        and _pid(tmp_path, "b") is not None
                    )
                )
                tg.cancel_scope.cancel()
        for name in ("a", "b"):
            pid = _pid(tmp_path, name)
            assert pid is not None and not _alive(pid)
        for task_id in ids:
            record = await node.task(task_id)
            _stopped_with_its_caller((record.state, record.exit_code, record.reason))
        assert await node.kv.scan("active/") == []  # the wave's marker went with them
        assert controller.free == controller.capacity
        assert controller.running_count == 0


async def test_a_guest_that_ends_as_its_caller_goes_away_keeps_its_own_end(
    tmp_path: Path,
) -> None:
    """The stop comes too late for a guest that already ended: its end is recorded as it
    was (here COMPLETED), not as stopped."""
    script = tmp_path / "quick.sh"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    script.chmod(0o755)
    spec = FunctionSpec(str(script), runtime=Runtime.PROCESS, resources=Resources(100, 1))
    async with LocalNode(tmp_path / "home") as node:
        controller = node.controller
        ids: list[str] = []
        gate = anyio.Event()
        real_wait = controller._running.start

        async def start(*args: object, **kw: object) -> object:
            execution = await real_wait(*args, **kw)  # type: ignore[arg-type]
            wait = execution.wait  # type: ignore[union-attr]

            async def ended_then_held() -> object:
                outcome = await wait()
                gate.set()
                await anyio.sleep(0.2)  # (its end is known; the caller goes away meanwhile)
                return outcome

            execution.wait = ended_then_held  # type: ignore[union-attr]
            return execution

        controller._running.start = start  # type: ignore[method-assign]
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: controller.run(spec, on_created=lambda t: ids.append(t.id)))
                await gate.wait()
                tg.cancel_scope.cancel()
        record = await node.task(ids[0])
        assert (record.state, record.exit_code) == (TaskState.COMPLETED, 0)
        assert (tmp_path / "ran").exists()
        assert controller.free == controller.capacity


async def test_a_caller_gone_between_attempts_cancels_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a failed attempt and the next (the retry's back-off, the task PENDING again)
    no guest runs: the task is recorded cancelled with its caller all the same, not lost
    with the node, and no attempt follows."""
    tried = tmp_path / "tried"
    script = tmp_path / "fails.sh"
    script.write_text(f"#!/bin/sh\necho x >> {tried}\nexit 3\n")
    script.chmod(0o755)
    spec = FunctionSpec(str(script), runtime=Runtime.PROCESS, max_retries=5, retry_on=("exit",))
    monkeypatch.setattr(retries, "BACKOFF_FIRST_S", 10.0)  # (ample time to look meanwhile)
    async with LocalNode(tmp_path / "home") as node:
        controller = node.controller
        ids: list[str] = []
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: controller.run(spec, on_created=lambda t: ids.append(t.id)))
                await _until(lambda: tried.exists() and bool(ids))
                while (await node.task(ids[0])).attempts < 1:
                    await anyio.sleep(0.005)  # (the next attempt recorded: backing off)
                tg.cancel_scope.cancel()
        record = await node.task(ids[0])
        _stopped_with_its_caller((record.state, record.exit_code, record.reason))
        assert record.attempts == 1 and record.attempt_log[0].reason == "exit status 3"
        await anyio.sleep(0.5)
        assert tried.read_text() == "x\n"  # (no attempt after its caller went away)


async def test_how_a_run_cut_short_ends(tmp_path: Path) -> None:
    """A cancel while the node runs on is its caller's; anything else, or any cut while
    the node stops, is the task lost with the node."""
    async with LocalNode(tmp_path / "home") as node:
        running = node.controller._running
        cancel = anyio.get_cancelled_exc_class()()
        assert running.cut_short(cancel) == Outcome(TaskState.CANCELLED, 130, CALLER_GONE)
        lost = Outcome(TaskState.FAILED, EXIT_LOST, STOPPED)
        assert running.cut_short(RuntimeError("broke")) == lost
        running.stopping = "node stopped"
        assert running.cut_short(cancel) == lost
        running.stopping = None
