"""A node's task results and references, kept in its object store.

When tasks end, their result objects (`results/<id>`: the stdout, unless the task set one
with the `result_set` hostcall) are stored, the empty ones in one write, and the
references they took through hostcalls are dropped. The object store itself knows
nothing of tasks or nodes; this finished hook is where the two meet.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING

from spear._logging import logger
from spear.core.namespaces import result_key
from spear.errors import SpearError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

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
        except SpearError as exc:
            _not_stored(tasks, exc)
            return
        # Each namespace's results together (in a cluster, their commits go grouped), at
        # the namespace's keys; one namespace's failure does not keep the others'.
        by_namespace: dict[str, list[Task]] = {}
        for task in tasks:
            by_namespace.setdefault(task.spec.namespace, []).append(task)
        for namespace, group in by_namespace.items():
            try:
                await self._store.store_results(
                    [(t.id, self._logs.stdout_file(t.id)) for t in group],
                    key=functools.partial(result_key, namespace),
                )
            except SpearError as exc:  # the tasks are over either way: say why
                _not_stored(group, exc)


def _not_stored(tasks: Sequence[Task], exc: SpearError) -> None:
    ids = ", ".join(t.id for t in tasks)
    logger.warning("task(s) {}: references or result not stored: {}", ids, exc)


@contextlib.asynccontextmanager
async def serving_objects(
    node: Spearlet, store: ObjectStore, task_group: TaskGroup
) -> AsyncIterator[None]:
    """While the node runs: its tasks' results kept, and the store swept for garbage."""
    node.controller.add_finished_hook(TaskResults(store, node.logs))
    async with store.sweeping(task_group):
        yield
