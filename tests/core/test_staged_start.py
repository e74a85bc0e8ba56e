"""A called task's start staged to go with its end (`KV.commit_later`, TaskController.run):
one LevelDB write a short call, not two; a guest that runs on has its start written
before it is waited for; and a start whose write failed is written again, the task's end
after it. Everything real: a LocalNode on LevelDB running wasm tasks, the writes seen as
LevelDB's write batches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import plyvel
import pytest
from wat_tasks import build_wat, ticker

from spear import FunctionSpec, LocalNode, Runtime, TaskState
from spear.core.tasks import controller as controller_module
from spear.core.tasks.codec import decode_task
from spear.errors import StorageError
from spear.runtimes.wasm.agent import INLINE_AFTER_RUNS
from spear.store.kv import Write
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from pathlib import Path


class _Batches:
    """Every LevelDB write batch of `kv` (raw key: stored bytes or None), as written;
    `fail` makes the next batch naming a key that contains it fail, once."""

    def __init__(self, kv: LevelDBKV) -> None:
        self.written: list[dict[bytes, bytes | None]] = []
        self.fail: bytes | None = None
        real = kv._write_batch

        def write_batch(db: Any, staged: dict[bytes, bytes | None]) -> None:
            if self.fail is not None and any(self.fail in key for key in staged):
                self.fail = None
                raise plyvel.IOError(b"injected: the write failed")
            real(db, staged)
            self.written.append(dict(staged))

        kv._write_batch = write_batch  # type: ignore[method-assign]

    def of(self, key: str) -> list[bytes | None]:
        """What each batch that named `key` wrote there, in order."""
        return [b[raw] for b in self.written for raw in b if key.encode() in raw]


def _trivial(directory: Path) -> str:
    """A guest that does nothing: proven short, it runs on the event loop."""
    wat = '(module (memory (export "memory") 1) (func (export "_start")))'
    return str(build_wat(wat, directory, "trivial"))


def _states(values: list[bytes | None]) -> list[TaskState]:
    return [decode_task(v[8:]).state for v in values if v is not None]


async def test_a_staged_write_is_readable_at_once_and_goes_with_the_next(tmp_path: Path) -> None:
    async with LevelDBKV.open(str(tmp_path / "kv")) as kv:
        batches = _Batches(kv)
        version, staged = await kv.commit_later([Write("a", b"1")])
        assert version > 0 and (await kv.get("a")) is not None  # readable here at once
        assert batches.written == [] and not staged.lost()
        await kv.put("b", b"2")
        assert [sorted(b) for b in batches.written] == [[b"\x00meta/revision", b"d/a", b"d/b"]]
        assert not staged.lost()  # (written, and well)
        await staged.written()  # written already: at once
        assert len(batches.written) == 1
        # Alone, `written` writes it.
        _, alone = await kv.commit_later([Write("c", b"3")])
        await alone.written()
        assert [sorted(b) for b in batches.written][1] == [b"\x00meta/revision", b"d/c"]


async def test_a_staged_write_whose_batch_failed_says_so(tmp_path: Path) -> None:
    async with LevelDBKV.open(str(tmp_path / "kv")) as kv:
        batches = _Batches(kv)
        _, staged = await kv.commit_later([Write("a", b"1")])
        batches.fail = b"d/b"
        with pytest.raises(StorageError, match="injected"):
            await kv.put("b", b"2")  # the batch with the staged write fails
        assert staged.lost()
        with pytest.raises(StorageError, match="injected"):
            await staged.written()
        assert await kv.get("a") is None  # gone with its batch


async def test_a_database_opened_per_write_writes_at_once(tmp_path: Path) -> None:
    kv = LevelDBKV.open(str(tmp_path / "kv"), hold=False)  # (as a `spear run` process)
    try:
        _, staged = await kv.commit_later([Write("a", b"1")])
        await staged.written()
        assert not staged.lost()
    finally:
        await kv.aclose()
    again = LevelDBKV.open(str(tmp_path / "kv"), hold=False)
    try:
        assert (await again.get("a")) is not None  # on disk
    finally:
        await again.aclose()


async def test_a_short_calls_start_goes_with_its_end(tmp_path: Path) -> None:
    module = _trivial(tmp_path)
    async with LocalNode(tmp_path / "home") as node:
        for _ in range(INLINE_AFTER_RUNS + 1):  # (proven short: it runs on the loop now)
            await node.run(FunctionSpec(module))
        batches = _Batches(node.kv)
        task = await node.run(FunctionSpec(module))
        assert task.state is TaskState.COMPLETED
        # One write of its record, already finished; its unfinished marker never written.
        assert _states(batches.of(f"tasks/{task.id}")) == [TaskState.COMPLETED]
        assert batches.of(f"active/{task.id}") == [None]


async def test_a_guest_that_runs_on_has_its_start_written_before_it_ends(
    tmp_path: Path,
) -> None:
    module = str(ticker(tmp_path, 3, 100))  # (it naps: on a thread)
    async with LocalNode(tmp_path / "home") as node:
        batches = _Batches(node.kv)
        async with anyio.create_task_group() as tg:
            ran: list[TaskState] = []

            async def call() -> None:
                ran.append((await node.run(FunctionSpec(module))).state)

            tg.start_soon(call)
            with anyio.fail_after(10):
                while not batches.of("tasks/"):
                    await anyio.sleep(0.01)
            assert _states(batches.of("tasks/")) == [TaskState.RUNNING]  # while it runs
        assert ran == [TaskState.COMPLETED]
        assert _states(batches.of("tasks/")) == [TaskState.RUNNING, TaskState.COMPLETED]


@pytest.mark.parametrize("inline", [True, False], ids=["on the loop", "on a thread"])
async def test_a_start_lost_with_its_batch_is_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    monkeypatch.setattr(controller_module, "_END_WRITE_MAX_WAIT_S", 0.01)
    module = _trivial(tmp_path) if inline else str(ticker(tmp_path, 1, 100))
    async with LocalNode(tmp_path / "home") as node:
        for _ in range(INLINE_AFTER_RUNS + 1 if inline else 0):
            await node.run(FunctionSpec(module))
        batches = _Batches(node.kv)
        batches.fail = b"tasks/"  # the first write of the next task's record fails
        task = await node.run(FunctionSpec(module))
        assert task.state is TaskState.COMPLETED
        assert (await node.task(task.id)).state is TaskState.COMPLETED
        states = _states(batches.of(f"tasks/{task.id}"))
        assert states == [TaskState.RUNNING, TaskState.COMPLETED]  # written again, then ended
        assert await node.kv.get(f"active/{task.id}") is None  # and not left unfinished


async def test_a_start_is_written_first_where_staging_it_would_not_do(tmp_path: Path) -> None:
    # Staged only for a WASM call admitted at once with nobody told of it: a task that waits
    # for room, one whose caller is told of it (`on_created`) and a process task have
    # their records on disk before they start.
    module = _trivial(tmp_path)
    async with LocalNode(tmp_path / "home", cpu_millis=1000) as node:
        batches = _Batches(node.kv)
        on_disk_at_start: dict[str, list[TaskState]] = {}
        running = node.controller._running
        real_start = running.start

        async def start(task: Any, *args: Any, **kw: Any) -> Any:
            on_disk_at_start[task.id] = _states(batches.of(f"tasks/{task.id}"))
            return await real_start(task, *args, **kw)

        running.start = start  # type: ignore[method-assign]
        told: list[str] = []
        called = await node.controller.run(
            FunctionSpec(module), on_created=lambda task: told.append(task.id)
        )
        assert on_disk_at_start[called.id] == [TaskState.RUNNING] and told == [called.id]

        process = await node.run(FunctionSpec("/bin/true", runtime=Runtime.PROCESS))
        assert process.state is TaskState.COMPLETED
        assert on_disk_at_start[process.id] == [TaskState.RUNNING]

        plain = await node.run(FunctionSpec(module))
        assert on_disk_at_start[plain.id] == []  # (staged: it goes with its end)

        hold = node.controller._admission.try_acquire(node.controller.capacity)
        assert hold  # the node's room all taken: the next call waits for it, PENDING
        async with anyio.create_task_group() as tg:
            tg.start_soon(node.run, FunctionSpec(module))
            with anyio.fail_after(10):
                while not (new := [k for k in _task_keys(batches) if k not in on_disk_at_start]):
                    await anyio.sleep(0.01)
            assert _states(batches.of(f"tasks/{new[0]}")) == [TaskState.PENDING]  # on disk
            node.controller._admission.release(node.controller.capacity)


def _task_keys(batches: _Batches) -> list[str]:
    return sorted({raw.decode()[len("d/tasks/") :] for b in batches.written for raw in b
                   if raw.startswith(b"d/tasks/")})  # fmt: skip


async def test_a_start_written_again_says_so_while_it_cannot_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from log_capture import SpearLog

    module = str(ticker(tmp_path, 1, 100))  # (on a thread: its start is written first)
    async with LocalNode(tmp_path / "home") as node:
        batches = _Batches(node.kv)
        batches.fail = b"tasks/"  # the staged start's batch fails...
        store = node.controller.store
        real_create = store.create
        failures = [1]

        async def create(task: Any, **kw: Any) -> Any:
            if kw.get("fresh") and not kw.get("later") and failures:
                failures.pop()  # ...and so does writing it again, once
                raise StorageError("injected: the disk is not there")
            return await real_create(task, **kw)

        monkeypatch.setattr(store, "create", create)
        with SpearLog("WARNING", "{message}") as logged:
            task = await node.run(FunctionSpec(module))
        assert task.state is TaskState.COMPLETED
        said = f"task {task.id}: its start is not written yet (injected: the disk is not there)"
        assert f"{said}: trying again\n" in logged
