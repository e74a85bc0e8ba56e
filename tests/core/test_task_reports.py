"""A member's task reports to the SMS (core/task_reports.py), on a real MetadataServer and
real LevelDB stores: the node's records followed through its KV's watch, each task's
latest state reported, a record that cannot be read dropped without holding up the rest."""

from __future__ import annotations

import contextlib
import secrets
from typing import TYPE_CHECKING

import anyio
from test_sms import TIMINGS, Clock, node

from spear.core.models import FunctionSpec, Task, TaskState
from spear.core.sms import MetadataServer
from spear.core.task_reports import TaskReporter
from spear.core.tasks import TaskStore
from spear.errors import NotFound
from spear.store.kv import Write
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import pytest


def _task() -> Task:
    return Task(
        id=secrets.token_hex(6),
        spec=FunctionSpec("m.wasm"),
        created_at=1.0,
        node="a",
        history=(("PENDING", 1.0),),
    )


@contextlib.asynccontextmanager
async def _member(tmp_path: Path) -> AsyncIterator[tuple[MetadataServer, LevelDBKV, TaskStore]]:
    """A real SMS with node "a" registered, and that member's real task store (LevelDB)."""
    async with (
        LevelDBKV.open(str(tmp_path / "sms.ldb")) as sms_kv,
        LevelDBKV.open(str(tmp_path / "node.ldb")) as node_kv,
    ):
        sms = MetadataServer(sms_kv, TIMINGS, Clock())
        await sms.register(node("a"))
        yield sms, node_kv, TaskStore(node_kv)


async def _reported(sms: MetadataServer, task_id: str, state: TaskState) -> Task:
    """The SMS's record of `task_id` once it is in `state` (polled, within 5 s)."""
    with anyio.fail_after(5):
        while True:
            try:
                seen = await sms.task(task_id)
            except NotFound:
                seen = None
            if seen is not None and seen.state is state:
                return seen
            await anyio.sleep(0.005)


async def test_each_tasks_latest_state_is_reported_and_a_bad_record_is_skipped(
    tmp_path: Path,
) -> None:
    async with _member(tmp_path) as (sms, node_kv, store):
        reporter = TaskReporter(sms, node_kv, store)
        async with anyio.create_task_group() as tg:
            await tg.start(reporter.run)
            short, long = _task(), _task()
            for task in (short, long):
                await store.create(task)
            # A record nobody can read, between the others: dropped, said, not sent.
            await node_kv.commit([Write("tasks/" + "f" * 12, b"{not json", None)])
            for state in (TaskState.RUNNING, TaskState.COMPLETED):  # within the linger
                await store.transition(short.id, state)
            await store.transition(long.id, TaskState.RUNNING)
            done = await _reported(sms, short.id, TaskState.COMPLETED)
            assert done.history[-1][0] == "COMPLETED"
            await _reported(sms, long.id, TaskState.RUNNING)
            with anyio.fail_after(5):
                while reporter._pending:  # (the bad record too: not retried forever)
                    await anyio.sleep(0.005)
            with_bad = [t.id for t in await sms.tasks(node="a")]
            assert sorted(with_bad) == sorted([short.id, long.id])
            # Later changes still go (the reporter kept running past the bad record).
            await store.transition(long.id, TaskState.FAILED)
            await _reported(sms, long.id, TaskState.FAILED)
            tg.cancel_scope.cancel()


class _Away:
    """The SMS behind a link that fails while `down`: every report call noted."""

    def __init__(self, sms: MetadataServer) -> None:
        self.sms = sms
        self.down = False
        self.calls: list[list[tuple[str, str]]] = []
        self.arrived: anyio.Event | None = None
        self.gate: anyio.Event | None = None  # (set: a report waits for it, in flight)

    async def report_tasks(self, tasks: list[Task]) -> None:
        from spear.errors import Unavailable

        self.calls.append([(t.id, t.state.value) for t in tasks])
        if self.arrived is not None:
            self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise Unavailable("the SMS is away")
        await self.sms.report_tasks(tasks)


async def test_reports_wait_while_the_sms_is_away_in_batches_in_order_and_none_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear.core import task_reports

    monkeypatch.setattr(task_reports, "_BATCH", 2)
    monkeypatch.setattr(task_reports, "_RETRY_S", 0.01)
    async with _member(tmp_path) as (sms, node_kv, store):
        link = _Away(sms)
        link.down = True
        reporter = TaskReporter(link, node_kv, store)  # type: ignore[arg-type]
        tasks = [_task() for _ in range(5)]
        async with anyio.create_task_group() as tg:
            await tg.start(reporter.run)
            for task in tasks:
                await store.create(task)
            with anyio.fail_after(5):
                while len(link.calls) < 3:  # (tried, and tried again: still away)
                    await anyio.sleep(0.005)
            assert reporter.sent == 0 and len(reporter._pending) == 5
            link.down = False
            for task in tasks:
                await _reported(sms, task.id, TaskState.PENDING)
            with anyio.fail_after(5):  # (the SMS has the last ones: the reporter hears so next)
                while reporter.sent < 5:
                    await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    assert all(len(call) <= 2 for call in link.calls)
    sent = [task_id for call in link.calls[-3:] for task_id, _ in call]
    assert sent == [t.id for t in tasks]  # (the oldest first, each once)
    assert reporter.sent == 5 and not reporter._pending


async def test_a_change_made_while_its_report_is_on_the_way_is_reported_after_it(
    tmp_path: Path,
) -> None:
    async with _member(tmp_path) as (sms, node_kv, store):
        link = _Away(sms)
        reporter = TaskReporter(link, node_kv, store)  # type: ignore[arg-type]
        task = _task()
        async with anyio.create_task_group() as tg:
            await tg.start(reporter.run)
            link.arrived, link.gate = anyio.Event(), anyio.Event()
            await store.create(task)
            with anyio.fail_after(5):
                await link.arrived.wait()  # (its PENDING report is on the way)
            link.arrived = None
            await store.transition(task.id, TaskState.RUNNING)
            with anyio.fail_after(5):
                while not isinstance(reporter._pending.get(task.id), bytes):
                    await anyio.sleep(0.001)  # (the change seen: it waits behind the report)
            gate, link.gate = link.gate, None
            gate.set()
            await _reported(sms, task.id, TaskState.RUNNING)
            tg.cancel_scope.cancel()


async def test_a_resync_offers_every_unfinished_task_and_no_finished_one_unless_forgotten(
    tmp_path: Path,
) -> None:
    async with LevelDBKV.open(str(tmp_path / "node.ldb")) as node_kv:
        store = TaskStore(node_kv)
        waiting, running, done = _task(), _task(), _task()
        for task in (waiting, running, done):
            await store.create(task)
        await store.transition(running.id, TaskState.RUNNING)
        await store.transition(done.id, TaskState.RUNNING)
        await store.transition(done.id, TaskState.COMPLETED)
        reporter = TaskReporter(None, node_kv, store)  # type: ignore[arg-type]
        await reporter.resync()
        offered = {task_id: task.state for task_id, task in reporter._pending.items()}
        assert offered == {waiting.id: TaskState.PENDING, running.id: TaskState.RUNNING}
        # An SMS that did not know this node is sent every task, finished ones too (as
        # the records kept here).
        reporter = TaskReporter(None, node_kv, store)  # type: ignore[arg-type]
        await reporter.resync(known=False)
        assert set(reporter._pending) == {waiting.id, running.id, done.id}
        records = reporter._decoded(list(reporter._pending.items()))
        assert {t.id: t.state for t in records} == {
            waiting.id: TaskState.PENDING,
            running.id: TaskState.RUNNING,
            done.id: TaskState.COMPLETED,
        }


async def test_a_lone_unreadable_record_is_dropped_and_said_and_offered_tasks_still_go(
    tmp_path: Path,
) -> None:
    from log_capture import SpearLog

    async with _member(tmp_path) as (sms, node_kv, store):
        reporter = TaskReporter(sms, node_kv, store)
        async with anyio.create_task_group() as tg:
            await tg.start(reporter.run)
            with SpearLog("WARNING", "{message}") as logged:
                await node_kv.commit([Write("tasks/" + "e" * 12, b"{not json", None)])
                with anyio.fail_after(5):
                    while not logged or reporter._pending:  # (dropped, not resent forever)
                        await anyio.sleep(0.005)
            assert [line.rstrip() for line in logged] == [
                "unreadable task record tasks/" + "e" * 12 + " not reported"
            ]
            one, two = _task(), _task()  # offered as tasks (a resync's), in one batch
            reporter.offer(one)
            reporter.offer(two)
            for task in (one, two):
                await _reported(sms, task.id, TaskState.PENDING)
            tg.cancel_scope.cancel()


async def test_a_tasks_newer_change_waits_behind_older_changes_of_others(tmp_path: Path) -> None:
    async with LevelDBKV.open(str(tmp_path / "node.ldb")) as node_kv:
        reporter = TaskReporter(None, node_kv, TaskStore(node_kv))  # type: ignore[arg-type]
        a, b = _task(), _task()
        reporter.offer(a)
        reporter.offer(b)
        reporter.offer(a.transition(TaskState.RUNNING))
        assert list(reporter._pending) == [b.id, a.id]
        assert reporter._pending[a.id].state is TaskState.RUNNING  # type: ignore[union-attr]
