"""A member's task reports to the SMS (core/task_reports.py), on a real MetadataServer and
real LevelDB stores: the node's records followed through its KV's watch, each task's
latest state reported, a record that cannot be read dropped without holding up the rest."""

from __future__ import annotations

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
    from pathlib import Path


def _task() -> Task:
    return Task(
        id=secrets.token_hex(6),
        spec=FunctionSpec("m.wasm"),
        created_at=1.0,
        node="a",
        history=(("PENDING", 1.0),),
    )


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
    async with (
        LevelDBKV.open(str(tmp_path / "sms.ldb")) as sms_kv,
        LevelDBKV.open(str(tmp_path / "node.ldb")) as node_kv,
    ):
        sms = MetadataServer(sms_kv, TIMINGS, Clock())
        await sms.register(node("a"))
        store = TaskStore(node_kv)
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
