"""Reports every change of this node's tasks to the cluster's task registry (the SMS).

It follows the node's own KV (`tasks/` entries: every transition is a write there), so the
task controller needs no knowledge of the cluster. Reports are sent in order, one task's
latest state replacing an unsent older one (a report waits 2 ms for them), up to 200 of
them (of as many tasks) in one call; while the SMS is unreachable they wait, and a
re-registration re-sends every unfinished task (every task this node keeps, when the SMS
had no record of the node: it lost its store). A record is decoded only when its report
is sent: a short task's PENDING and RUNNING records, replaced within the 2 ms, never are
(decoding every record was ~8% of a member's CPU under batches of short tasks).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import anyio

from spear._logging import logger
from spear.core.models import Task, TaskState
from spear.core.tasks.codec import decode_task
from spear.errors import SpearError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from spear.core.cluster import Cluster
    from spear.core.tasks import TaskStore
    from spear.store.kv import KV

_TASKS = "tasks/"
_RETRY_S = 0.5
_BATCH = 200  # reports in one call to the SMS
_LINGER_S = 0.002  # how long a report waits for later changes of its task


class TaskReporter:
    def __init__(self, cluster: Cluster, kv: KV, store: TaskStore) -> None:
        self.cluster = cluster
        self._kv = kv
        self._store = store
        # Each task's latest change not sent yet: the task, or its record as the KV holds
        # it (decoded when sent).
        self._pending: dict[str, Task | bytes] = {}
        self._wake = anyio.Event()
        self.sent = 0

    def offer(self, task: Task) -> None:
        self._offer(task.id, task)

    def _offer(self, task_id: str, change: Task | bytes) -> None:
        self._pending.pop(task_id, None)  # re-insert: keeps the order of the latest changes
        self._pending[task_id] = change
        self._wake.set()

    async def resync(self, known: bool = True) -> None:
        """After a (re-)registration: queue every unfinished task of this node, or, when
        the SMS did not `know` this node (it lost its store), every task this node still
        keeps, finished ones too. (The SMS ignores a report of a task it has finished.)"""
        if not known:  # (as records: each decoded when its report goes)
            for entry in await self._kv.scan(_TASKS):
                if entry.value:
                    self._offer(entry.key[len(_TASKS) :], entry.value)
            return
        for state in (TaskState.PENDING, TaskState.RUNNING):
            for task in await self._store.list_tasks(state):
                self.offer(task)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow)
            task_status.started()
            await self._send_forever()

    async def _follow(self) -> None:
        async for event in self._kv.watch(_TASKS):
            if event.value:
                self._offer(event.key[len(_TASKS) :], event.value)

    async def _send_forever(self) -> None:
        while True:
            if not self._pending:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            # A short task's later changes come within a moment: wait that long, so its
            # report is of its latest state (one call, not one per change).
            await anyio.sleep(_LINGER_S)
            # The oldest waiting reports, up to a batch, in one call (each of another task).
            waiting = list(itertools.islice(self._pending.items(), _BATCH))
            batch = self._decoded(waiting)
            if not batch:
                continue  # (every one unreadable, and dropped)
            try:
                await self.cluster.report_tasks(batch)
            except SpearError as exc:
                logger.debug("{} task report(s) postponed: {}", len(batch), exc)
                await anyio.sleep(_RETRY_S)
                continue
            self.sent += len(batch)
            for task_id, change in waiting:
                if self._pending.get(task_id) is change:  # (not changed again meanwhile)
                    del self._pending[task_id]

    def _decoded(self, waiting: list[tuple[str, Task | bytes]]) -> list[Task]:
        """The tasks of `waiting`, records decoded; an unreadable record is dropped (and
        said) rather than held up every report after it."""
        tasks: list[Task] = []
        for task_id, change in waiting:
            if isinstance(change, Task):
                tasks.append(change)
                continue
            try:
                tasks.append(decode_task(change))
            except (ValueError, KeyError, SpearError):
                logger.warning("unreadable task record {}{} not reported", _TASKS, task_id)
                if self._pending.get(task_id) is change:
                    del self._pending[task_id]
        return tasks
