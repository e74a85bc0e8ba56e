"""Deleting finished tasks' records at the SMS (a member's `spear delete` or retention).

A member deletes its own copy of a finished task (core/retention.py) and then asks the
SMS to forget the task too, so `spear tasks` on any member stops listing it. Only
finished tasks are deleted here, only of the caller's namespace (when it names one), and
only those that ran on the caller (`node`, when the caller is a node): an unknown id is
skipped, as one already deleted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.core.tasks.codec import decode_task
from spear.errors import Conflict, NotFound, PermissionDenied
from spear.store.kv import Write

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spear.store.kv import KV

_TASKS = "tasks/"  # (core/sms.py's keys)
_BATCH = 500  # records deleted per KV commit


async def delete_finished_records(
    kv: KV,
    task_ids: Sequence[str],
    *,
    namespace: str | None = None,
    node: str | None = None,
) -> list[str]:
    """Delete the SMS records of `task_ids` (finished, of `namespace`, run on `node`, when
    named); refuses (Conflict, PermissionDenied, NotFound) before deleting anything."""
    writes: list[Write] = []
    gone: list[str] = []
    for task_id in dict.fromkeys(task_ids):  # (a key may appear once in a commit)
        entry = await kv.get(_TASKS + task_id)
        if entry is None:
            continue
        task = decode_task(entry.value)
        if namespace is not None and task.spec.namespace != namespace:
            raise NotFound(f"no task {task_id!r} in namespace {namespace!r}")
        if not task.state.terminal:
            raise Conflict(f"task {task_id} is {task.state.value}: cancel it before deleting it")
        if node is not None and task.node not in (None, node):
            raise PermissionDenied(f"task {task_id} ran on {task.node}, not on {node}")
        writes.append(Write(_TASKS + task_id, None, entry.version))
        gone.append(task_id)
    for start in range(0, len(writes), _BATCH):
        if await kv.commit(writes[start : start + _BATCH]) < 0:
            raise Conflict("a task record changed while it was being deleted: try again")
    return gone
