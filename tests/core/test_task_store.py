"""TaskStore (core/tasks/store.py): task records on a real LevelDB, what a node and a user
rely on: a record is written once, each change is kept even when another writer got there
first, a finished task leaves no "unfinished" marker, and a task whose process died is
found and marked lost by the next store that looks (and only that one).

Written for mutation testing (issue 22): each test states one behaviour exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from spear.core.models import FunctionSpec, Task, TaskState, new_task_id
from spear.core.tasks import TaskStore, decode_task, encode_task
from spear.core.worker import EXIT_LOST, Outcome
from spear.errors import InvalidArgument, NotFound
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from spear.store.kv import WatchEvent

WATCH_LIMIT_S = 20
LOST_REASON = "lost: the process running it exited without finishing it"
SPEC = FunctionSpec("unused.wasm")


@pytest.fixture
async def kv(tmp_path: Path) -> AsyncIterator[LevelDBKV]:
    store = LevelDBKV.open(str(tmp_path / "kv"))
    try:
        yield store
    finally:
        await store.aclose()


def _task(**fields: object) -> Task:
    return Task(id=new_task_id(), spec=SPEC, **fields)  # type: ignore[arg-type]


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[19].decode()


async def _put_owner(kv: LevelDBKV, name: str, owner: object) -> None:
    await kv.put(f"active/{name}", orjson.dumps(owner))


# -- create, get -----------------------------------------------------------------------


async def test_a_created_task_reads_back_and_is_marked_unfinished_by_this_process(
    kv: LevelDBKV,
) -> None:
    store = TaskStore(kv)
    task = _task(node="n1")
    await store.create(task)
    assert await store.get(task.id) == task
    marker = await kv.get(f"active/{task.id}")
    assert marker is not None
    owner = orjson.loads(marker.value)
    assert (owner["pid"], owner["node"]) == (os.getpid(), "n1")
    assert owner["start"] == _start_time(os.getpid())
    # The record and its marker are one write: one revision.
    record = await kv.get(f"tasks/{task.id}")
    assert record is not None and record.version == marker.version


async def test_an_id_that_exists_is_refused_and_the_first_record_kept(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    first = _task()
    await store.create(first)
    with pytest.raises(InvalidArgument, match=f"^task {first.id} exists already$"):
        await store.create(Task(id=first.id, spec=FunctionSpec("other.wasm")))
    # A second store (another process) is refused too: the check is the KV's, not a cache.
    with pytest.raises(InvalidArgument):
        await TaskStore(kv).create(Task(id=first.id, spec=FunctionSpec("other.wasm")))
    assert await store.get(first.id) == first


async def test_a_fresh_id_is_written_without_a_check(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    first = _task()
    await store.create(first)
    again = Task(id=first.id, spec=FunctionSpec("other.wasm"))
    await store.create(again, fresh=True)
    assert await store.get(first.id) == again


async def test_a_missing_task_is_not_found_by_name(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    with pytest.raises(NotFound, match="^no such task: nope$"):
        await store.get("nope")
    with pytest.raises(NotFound, match="^no such task: nope$"):
        await store.transition("nope", TaskState.RUNNING)


# -- transition ------------------------------------------------------------------------


async def test_a_transition_is_recorded_and_an_end_drops_the_marker(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    task = _task()
    await store.create(task)
    running = await store.transition(task.id, TaskState.RUNNING)
    assert running.state is TaskState.RUNNING
    assert await store.get(task.id) == running
    assert await kv.get(f"active/{task.id}") is not None  # still unfinished
    done = await store.transition(task.id, TaskState.COMPLETED, exit_code=0, reason="ok")
    assert (done.state, done.exit_code, done.reason) == (TaskState.COMPLETED, 0, "ok")
    assert await store.get(task.id) == done
    assert await kv.get(f"active/{task.id}") is None
    assert [s for s, _ in done.history] == ["RUNNING", "COMPLETED"]


async def test_each_transition_builds_on_the_last_one_written(kv: LevelDBKV) -> None:
    # The store keeps the record it wrote: the next transition must start from it, so the
    # history grows one step at a time, and after an end the record is read afresh.
    store = TaskStore(kv)
    task = _task()
    await store.create(task)
    await store.transition(task.id, TaskState.RUNNING)
    await store.transition(task.id, TaskState.COMPLETED, exit_code=0)
    with pytest.raises(InvalidArgument, match="cannot go from COMPLETED to RUNNING"):
        await store.transition(task.id, TaskState.RUNNING)
    assert [s for s, _ in (await store.get(task.id)).history] == ["RUNNING", "COMPLETED"]


async def test_a_change_made_by_another_writer_meanwhile_is_kept(kv: LevelDBKV) -> None:
    mine, theirs = TaskStore(kv), TaskStore(kv)
    task = _task()
    await mine.create(task)
    # Another writer moves it on; my store's remembered record is now stale.
    await theirs.transition(task.id, TaskState.RUNNING, reason="theirs")
    done = await mine.transition(task.id, TaskState.FAILED, exit_code=2)
    assert [s for s, _ in done.history] == ["RUNNING", "FAILED"]
    assert (done.reason, done.exit_code) == ("theirs", 2)
    assert await mine.get(task.id) == done
    assert await kv.get(f"active/{task.id}") is None


async def test_a_stale_end_is_retried_and_still_drops_the_marker(kv: LevelDBKV) -> None:
    mine = TaskStore(kv)
    task = _task()
    await mine.create(task)
    await mine.transition(task.id, TaskState.RUNNING)
    entry = await kv.get(f"tasks/{task.id}")
    assert entry is not None
    await kv.put(entry.key, entry.value)  # rewritten as it was: a new version
    done = await mine.transition(task.id, TaskState.CANCELLED)
    assert done.state is TaskState.CANCELLED
    assert (await mine.get(task.id)).state is TaskState.CANCELLED
    assert await kv.get(f"active/{task.id}") is None


async def test_only_from_leaves_a_task_in_another_state_alone(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    task = _task()
    await store.create(task)
    done = await store.transition(task.id, TaskState.CANCELLED)
    back = await store.transition(
        task.id, TaskState.FAILED, only_from=frozenset({TaskState.RUNNING})
    )
    assert back == done
    assert await store.get(task.id) == done
    other = _task()
    await store.create(other)
    running = await store.transition(
        other.id, TaskState.RUNNING, only_from=frozenset({TaskState.PENDING})
    )
    assert running.state is TaskState.RUNNING


# -- listing ---------------------------------------------------------------------------


async def test_tasks_are_listed_newest_first_filtered_and_limited(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    ids = []
    for state in ["a", "b", "c", "d", "e"]:
        task = _task(reason=state)
        ids.append(task.id)
        await store.create(task)
    await store.transition(ids[1], TaskState.RUNNING)
    await store.transition(ids[3], TaskState.RUNNING)
    await store.transition(ids[4], TaskState.RUNNING)
    newest_first = ids[::-1]
    assert [t.id for t in await store.list_tasks()] == newest_first
    assert [t.id for t in await store.list_tasks(limit=2)] == newest_first[:2]
    running = [ids[4], ids[3], ids[1]]
    assert [t.id for t in await store.list_tasks(TaskState.RUNNING)] == running
    assert [t.id for t in await store.list_tasks(TaskState.RUNNING, limit=2)] == running[:2]
    assert [t.id for t in await store.list_tasks(TaskState.RUNNING, limit=1)] == running[:1]
    assert [t.id for t in await store.list_tasks(TaskState.PENDING)] == [ids[2], ids[0]]
    assert await store.list_tasks(TaskState.COMPLETED) == []


# -- watch -----------------------------------------------------------------------------


async def test_a_watch_sees_the_task_then_each_change_and_ends_with_it(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    task = _task()
    await store.create(task)
    seen: list[TaskState] = []
    with anyio.fail_after(WATCH_LIMIT_S):  # a watch that never ends fails, not hangs
        async for now in store.watch(task.id):
            seen.append(now.state)
            if now.state is TaskState.PENDING:
                await store.transition(task.id, TaskState.RUNNING)
            elif now.state is TaskState.RUNNING:
                # A rewrite that changes nothing is no new state: not seen twice.
                entry = await kv.get(f"tasks/{task.id}")
                assert entry is not None
                await kv.put(entry.key, entry.value)
                await store.transition(task.id, TaskState.COMPLETED, exit_code=0)
    assert seen == [TaskState.PENDING, TaskState.RUNNING, TaskState.COMPLETED]


async def test_a_watch_of_a_finished_task_gives_it_once(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    task = _task()
    await store.create(task)
    done = await store.transition(task.id, TaskState.CANCELLED)
    with anyio.fail_after(WATCH_LIMIT_S):
        assert [t async for t in store.watch(task.id)] == [done]


async def test_a_watched_task_that_is_deleted_is_not_found(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    task = _task()
    await store.create(task)
    with anyio.fail_after(WATCH_LIMIT_S):
        with pytest.raises(NotFound, match=f"^task {task.id} was deleted$"):
            async for _ in store.watch(task.id):
                await kv.delete(f"tasks/{task.id}")


class LateWatchKV(LevelDBKV):
    """A KV whose watch hears nothing (as a remote KV's watch may start after a change
    was made): a TaskStore watch must still see each change, by reading the record
    again."""

    async def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        await anyio.sleep_forever()
        yield  # type: ignore[misc]  # (never reached: an async generator that waits)


async def test_a_watch_that_hears_nothing_still_sees_each_change(tmp_path: Path) -> None:
    kv = LateWatchKV.open(str(tmp_path / "late"))
    try:
        store = TaskStore(kv)
        task = _task()
        await store.create(task)
        seen: list[TaskState] = []
        with anyio.fail_after(WATCH_LIMIT_S):
            async for now in store.watch(task.id):
                seen.append(now.state)
                if now.state is TaskState.PENDING:
                    await store.transition(task.id, TaskState.RUNNING)
                elif now.state is TaskState.RUNNING:
                    await store.transition(task.id, TaskState.FAILED, exit_code=1)
        assert seen == [TaskState.PENDING, TaskState.RUNNING, TaskState.FAILED]
    finally:
        await kv.aclose()


# -- lost tasks ------------------------------------------------------------------------


async def test_a_task_whose_process_died_is_marked_lost(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    running, pending, done = _task(), _task(), _task()
    for task in (running, pending, done):
        await store.create(task)
    await store.transition(running.id, TaskState.RUNNING)
    await store.transition(done.id, TaskState.RUNNING)
    await store.transition(done.id, TaskState.COMPLETED, exit_code=0)
    dead = {"pid": _dead_pid(), "start": "1", "node": None}
    for task in (running, pending, done):
        await _put_owner(kv, task.id, dead)
    lost = await TaskStore(kv).recover_lost()
    assert sorted(lost) == sorted([running.id, pending.id])
    for task_id in (running.id, pending.id):
        task = await store.get(task_id)
        assert (task.state, task.exit_code, task.reason) == (
            TaskState.FAILED,
            EXIT_LOST,
            LOST_REASON,
        )
    finished = await store.get(done.id)
    assert (finished.state, finished.exit_code) == (TaskState.COMPLETED, 0)
    assert await kv.scan("active/") == []


async def test_a_task_whose_process_lives_is_left_alone(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    mine, unknown_start = _task(), _task()
    await store.create(mine)  # owned by this process, with its start time
    await store.create(unknown_start)
    await _put_owner(kv, unknown_start.id, {"pid": os.getpid(), "start": None})
    assert await TaskStore(kv).recover_lost() == []
    for task in (mine, unknown_start):
        assert (await store.get(task.id)).state is TaskState.PENDING
        assert await kv.get(f"active/{task.id}") is not None


async def test_a_reused_pid_is_not_taken_for_the_owner(kv: LevelDBKV) -> None:
    # The owner's pid now names another process (this one), started at another time.
    store = TaskStore(kv)
    task = _task()
    await store.create(task)
    await _put_owner(kv, task.id, {"pid": os.getpid(), "start": "12345"})
    assert await store.recover_lost() == [task.id]
    assert (await store.get(task.id)).state is TaskState.FAILED


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"start": "1"}', b'{"pid": "1"}', b"[]", b'{"pid": null}'],
    ids=["garbage", "no-pid", "pid-as-text", "a-list", "null-pid"],
)
async def test_a_marker_without_a_live_owner_counts_as_dead(kv: LevelDBKV, raw: bytes) -> None:
    store = TaskStore(kv)
    task = _task()
    await store.create(task)
    await kv.put(f"active/{task.id}", raw)
    assert await store.recover_lost() == [task.id]
    assert await kv.scan("active/") == []


async def test_a_marker_of_a_task_that_is_gone_is_dropped(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    other = _task()
    await store.create(other)
    await _put_owner(kv, "gone", {"pid": _dead_pid()})
    await _put_owner(kv, other.id, {"pid": _dead_pid()})
    assert await store.recover_lost() == [other.id]
    assert await kv.scan("active/") == []


async def test_a_dead_waves_tasks_are_marked_lost_and_its_marker_dropped(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    tasks = [_task(node="n").transition(TaskState.RUNNING) for _ in range(3)]
    marker = await store.create_wave(tasks)
    assert marker == f"active/wave-{tasks[0].id}"
    owner = orjson.loads((await kv.get(marker)).value)  # type: ignore[union-attr]
    assert owner["tasks"] == [t.id for t in tasks]
    assert (owner["pid"], owner["node"]) == (os.getpid(), "n")
    assert await store.recover_lost() == []  # its process (this one) lives
    await kv.put(marker, orjson.dumps({**owner, "pid": _dead_pid()}))
    assert sorted(await store.recover_lost()) == sorted(t.id for t in tasks)
    for task in tasks:
        got = await store.get(task.id)
        assert (got.state, got.exit_code, got.reason) == (TaskState.FAILED, EXIT_LOST, LOST_REASON)
    assert await kv.scan("active/") == []


@pytest.mark.parametrize("tasks", ['"x"', "null", "{}"])
async def test_a_dead_wave_marker_that_names_no_tasks_is_dropped(kv: LevelDBKV, tasks: str) -> None:
    store = TaskStore(kv)
    task = _task()
    await store.create(task, fresh=True)
    await kv.delete(f"active/{task.id}")
    owner = f'{{"pid": {_dead_pid()}, "tasks": {tasks}}}'
    await kv.put(f"active/wave-{task.id}", owner.encode())
    assert await store.recover_lost() == []
    assert (await store.get(task.id)).state is TaskState.PENDING
    assert await kv.scan("active/") == []


# -- waves -----------------------------------------------------------------------------


async def test_a_wave_is_recorded_and_finished_in_one_write_each(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    tasks = [_task().transition(TaskState.RUNNING) for _ in range(3)]
    marker = await store.create_wave(tasks)
    versions = {(await kv.get(f"tasks/{t.id}")).version for t in tasks}  # type: ignore[union-attr]
    assert len(versions) == 1
    assert versions == {(await kv.get(marker)).version}  # type: ignore[union-attr]
    ends = [
        (tasks[0], Outcome(TaskState.COMPLETED, 0)),
        (tasks[1], Outcome(TaskState.FAILED, 3, "three")),
        (tasks[2], Outcome(TaskState.CANCELLED, None, "stop")),
    ]
    done = await store.finish_wave(marker, ends)
    assert [(t.id, t.state, t.exit_code, t.reason) for t in done] == [
        (tasks[0].id, TaskState.COMPLETED, 0, None),
        (tasks[1].id, TaskState.FAILED, 3, "three"),
        (tasks[2].id, TaskState.CANCELLED, None, "stop"),
    ]
    assert [await store.get(t.id) for t in tasks] == done
    written = {(await kv.get(f"tasks/{t.id}")).version for t in tasks}  # type: ignore[union-attr]
    assert len(written) == 1 and written != versions
    assert await kv.scan("active/") == []
    # Each ended task is read afresh from now on: another end is refused by its record.
    with pytest.raises(InvalidArgument):
        await store.transition(tasks[0].id, TaskState.FAILED)


async def test_a_wave_with_a_task_ended_elsewhere_ends_each_task_once(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    tasks = [_task().transition(TaskState.RUNNING) for _ in range(2)]
    marker = await store.create_wave(tasks)
    cancelled = await store.transition(tasks[1].id, TaskState.CANCELLED)
    with pytest.raises(InvalidArgument):  # the second can no longer complete
        await store.finish_wave(marker, [(t, Outcome(TaskState.COMPLETED, 0)) for t in tasks])
    assert (await store.get(tasks[0].id)).state is TaskState.COMPLETED
    assert await store.get(tasks[1].id) == cancelled


async def test_a_wave_never_overwrites_a_task_another_writer_ended(kv: LevelDBKV) -> None:
    mine, theirs = TaskStore(kv), TaskStore(kv)
    tasks = [_task().transition(TaskState.RUNNING) for _ in range(2)]
    marker = await mine.create_wave(tasks)
    cancelled = await theirs.transition(tasks[1].id, TaskState.CANCELLED, reason="theirs")
    with pytest.raises(InvalidArgument, match="cannot go from CANCELLED to COMPLETED"):
        await mine.finish_wave(marker, [(t, Outcome(TaskState.COMPLETED, 0)) for t in tasks])
    assert (await mine.get(tasks[0].id)).state is TaskState.COMPLETED
    assert await mine.get(tasks[1].id) == cancelled


async def test_a_wave_whose_records_were_rewritten_keeps_each_ending(kv: LevelDBKV) -> None:
    store = TaskStore(kv)
    tasks = [_task().transition(TaskState.RUNNING) for _ in range(2)]
    marker = await store.create_wave(tasks)
    for task in tasks:  # rewritten as they were: new versions, same records
        entry = await kv.get(f"tasks/{task.id}")
        assert entry is not None
        await kv.put(entry.key, entry.value)
    ends = [
        (tasks[0], Outcome(TaskState.FAILED, 4, "four")),
        (tasks[1], Outcome(TaskState.CANCELLED, None, "stopped")),
    ]
    done = await store.finish_wave(marker, ends)
    got = [(t.state, t.exit_code, t.reason) for t in done]
    assert got == [(TaskState.FAILED, 4, "four"), (TaskState.CANCELLED, None, "stopped")]
    assert [await store.get(t.id) for t in tasks] == done
    assert await kv.scan("active/") == []


async def test_a_wave_another_store_wrote_is_ended_through_the_records(kv: LevelDBKV) -> None:
    tasks = [_task().transition(TaskState.RUNNING) for _ in range(2)]
    marker = await TaskStore(kv).create_wave(tasks)
    other = TaskStore(kv)  # knows none of the records
    done = await other.finish_wave(marker, [(t, Outcome(TaskState.COMPLETED, 0)) for t in tasks])
    assert [t.state for t in done] == [TaskState.COMPLETED] * 2
    assert [await other.get(t.id) for t in tasks] == done
    assert await kv.scan("active/") == []


# -- the codec -------------------------------------------------------------------------


def test_records_of_different_specs_each_keep_their_own_spec() -> None:
    a, b = FunctionSpec("a.wasm", args=("1",)), FunctionSpec("b.wasm", timeout_s=2.0)
    for spec in (a, b, a, FunctionSpec("a.wasm", args=("1",)), b):
        task = Task(id=new_task_id(), spec=spec)
        assert decode_task(encode_task(task)) == task
        assert orjson.loads(encode_task(task)) == orjson.loads(orjson.dumps(task.to_json()))
