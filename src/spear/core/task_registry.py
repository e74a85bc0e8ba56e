"""Task reports applied in batches: the SMS's side of ReportTasks.

One report alone (`MetadataServer.report_task`) costs a read, a compare-and-swap of the
task's record and a write of its `node-tasks/` index entry. A batch (a SPEARlet sends up
to 200 reports a call) reads every record at once, decides each report as `report_task`
would (a finished task stays finished; a report with a shorter history than the stored
one is late and ignored), and writes the records and their index entries in a few atomic
commits, each record on the version it was read at. A commit whose versions moved (a
report of the same task raced it) changes nothing, and its reports are applied one by
one instead. Measured in the scale simulation (benchmarks/scale_sim.py, docs/scale.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.core.tasks.codec import decode_task, encode_task
from spear.store.kv import Write

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from spear.core.models import Task
    from spear.store.kv import KV, Entry

TASKS = "tasks/"
NODE_TASKS = "node-tasks/"
_WRITES_PER_COMMIT = 120  # etcd allows 128 operations a transaction; a report takes <= 3


def _writes_for(task: Task, entry: Entry | None) -> list[Write] | None:
    """The writes that apply `task`'s report over the stored `entry`; None: ignore it."""
    old = None if entry is None else decode_task(entry.value)
    if old is not None and (old.state.terminal or len(old.history) > len(task.history)):
        return None
    writes = [Write(TASKS + task.id, encode_task(task), 0 if entry is None else entry.version)]
    if old is not None and old.node and old.node != task.node:
        writes.append(Write(f"{NODE_TASKS}{old.node}/{task.id}", None))
    if task.node:
        index = f"{NODE_TASKS}{task.node}/{task.id}"
        writes.append(Write(index, None if task.state.terminal else b""))
    return writes


async def apply_reports(
    kv: KV, tasks: Sequence[Task], report_one: Callable[[Task], Awaitable[object]]
) -> None:
    """Apply every report of `tasks` (distinct tasks) in batched commits; `report_one`
    applies a report alone (for the reports of a commit that lost a race)."""
    if len({t.id for t in tasks}) != len(tasks):  # the same task twice: one at a time
        for task in tasks:
            await report_one(task)
        return
    entries = await kv.get_many([TASKS + task.id for task in tasks])
    batch: list[Write] = []
    members: list[Task] = []
    for task, entry in zip(tasks, entries, strict=True):
        writes = _writes_for(task, entry)
        if writes is None:
            continue
        if len(batch) + len(writes) > _WRITES_PER_COMMIT:
            await _commit(kv, batch, members, report_one)
            batch, members = [], []
        batch.extend(writes)
        members.append(task)
    if batch:
        await _commit(kv, batch, members, report_one)


async def _commit(
    kv: KV,
    writes: list[Write],
    tasks: list[Task],
    report_one: Callable[[Task], Awaitable[object]],
) -> None:
    if await kv.commit(writes) > 0:
        return
    for task in tasks:  # a record moved under us: each report on its own
        await report_one(task)
