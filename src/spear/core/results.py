"""A node's task results and references, kept in its object store.

When tasks end, their result objects (`results/<id>`: the stdout, unless the task set one
with the `result_set` hostcall) are stored, the empty ones in one write, and the
references they took through hostcalls are dropped. The object store itself knows
nothing of tasks or nodes; this finished hook is where the two meet.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio

from spear._logging import logger
from spear.core.namespaces import DEFAULT, result_key
from spear.errors import Conflict, ResourceExhausted, SpearError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import TaskGroup

    from spear.core.logs import TaskLogs
    from spear.core.models import Task
    from spear.core.node import Spearlet
    from spear.core.tasks import TasksFinished
    from spear.store.objects import ObjectStore


class TaskResults:
    """The finished hook that keeps ended tasks' results and releases their references."""

    def __init__(self, store: ObjectStore, logs: TaskLogs) -> None:
        self._store = store
        self._logs = logs

    async def __call__(self, finished: TasksFinished, /) -> None:
        tasks = finished.tasks
        try:
            await self._store.release_holders([t.id for t in tasks])
            plain = [t for t in tasks if t.spec.namespace == DEFAULT]
            await self._store.store_results([(t.id, self._logs.stdout_file(t.id)) for t in plain])
            namespaced = [t for t in tasks if t.spec.namespace != DEFAULT]
            if len(namespaced) > 1:  # together: in a cluster, their commits go grouped
                async with anyio.create_task_group() as tg:
                    for task in namespaced:
                        tg.start_soon(self._store_in_namespace_or_say, task)
            elif namespaced:
                await self._store_in_namespace(namespaced[0])
        except SpearError as exc:  # the tasks are over either way; say why there is no result
            ids = ", ".join(t.id for t in tasks)
            logger.warning("task(s) {}: references or result not stored: {}", ids, exc)

    async def _store_in_namespace_or_say(self, task: Task) -> None:
        try:
            await self._store_in_namespace(task)
        except SpearError as exc:
            logger.warning("task {}: result not stored: {}", task.id, exc)

    async def _store_in_namespace(self, task: Task) -> None:
        """A result kept in its task's namespace (core/namespaces.py): the store's own
        `store_result`, at the namespace's key."""
        key = result_key(task.spec.namespace, task.id)
        stdout = self._logs.stdout_file(task.id)
        try:
            if stdout is not None:
                await self._store.put_file(key, stdout, expected_version=0)
            else:
                await self._store.put(key, b"", expected_version=0)
        except Conflict:
            pass  # set explicitly by the task
        except ResourceExhausted as exc:
            logger.warning("task {}: result not stored: {}", task.id, exc)


@contextlib.asynccontextmanager
async def serving_objects(
    node: Spearlet, store: ObjectStore, task_group: TaskGroup
) -> AsyncIterator[None]:
    """While the node runs: its tasks' results kept, and the store swept for garbage."""
    node.controller.add_finished_hook(TaskResults(store, node.logs))
    async with store.sweeping(task_group):
        yield
