"""Deleting finished tasks: their records, logs and results (the seed's "destroy").

`delete_tasks` removes named finished tasks; `expired` picks the finished tasks a
retention policy no longer keeps: those that ended more than `older_than_s` ago, and
those beyond the newest `keep` finished ones. A node applies its configured policy
(`task_retention_s`, `task_retention_records`) on its pruning round (core/node.py);
`spear tasks rm` asks for either by hand (docs/security.md).

A running or pending task is never deleted: cancel it first. Deleting is per node: a
task's record, logs and result are where it ran; on a cluster member the SMS's record of
each deleted task goes too (`Spearlet.forget_tasks`, core/sms_retention.py).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from typing import TYPE_CHECKING

from spear.core.namespaces import result_key
from spear.errors import Conflict, InvalidArgument, NotFound, SpearError
from spear.store.kv import Write

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spear.core.models import Task
    from spear.core.node import Spearlet

_TASKS = "tasks/"  # (core/tasks/store.py's key of a record)
_BATCH = 500  # records deleted per KV commit


def expired(
    tasks: Sequence[Task],
    *,
    older_than_s: float | None = None,
    keep: int | None = None,
    now: float | None = None,
) -> list[Task]:
    """The finished tasks of `tasks` a policy no longer keeps: ended more than
    `older_than_s` ago, or beyond the newest `keep` finished ones (None: that rule is off).
    Unfinished tasks are never chosen."""
    if older_than_s is not None and older_than_s < 0:
        raise InvalidArgument("older-than must not be negative")
    if keep is not None and keep < 0:
        raise InvalidArgument("keep must not be negative")
    now = time.time() if now is None else now
    finished = [t for t in tasks if t.state.terminal]
    finished.sort(key=_ended_at, reverse=True)  # newest end first
    out: list[Task] = []
    for rank, task in enumerate(finished):
        old = older_than_s is not None and now - _ended_at(task) > older_than_s
        beyond = keep is not None and rank >= keep
        if old or beyond:
            out.append(task)
    return out


def _ended_at(task: Task) -> float:
    if task.finished_at is not None:
        return task.finished_at
    return task.history[-1][1] if task.history else task.created_at


async def delete_tasks(node: Spearlet, tasks: Sequence[Task]) -> list[str]:
    """Delete finished `tasks` from `node`: records, log files, result objects. Refuses
    (Conflict) before deleting anything if one is unfinished. Returns the ids deleted."""
    for task in tasks:
        if not task.state.terminal:
            raise Conflict(f"task {task.id} is {task.state.value}: cancel it before deleting it")
    gone: list[str] = []
    for start in range(0, len(tasks), _BATCH):
        batch = tasks[start : start + _BATCH]
        await node.kv.commit([Write(_TASKS + t.id, None) for t in batch])
        for task in batch:
            shutil.rmtree(node.logs.directory(task.id), ignore_errors=True)
            store = node.services.objects
            if store is not None:
                with contextlib.suppress(NotFound):
                    await store.delete(result_key(task.spec.namespace, task.id), force=True)
            gone.append(task.id)
        await _forget_at_sms(node, [t.id for t in batch])
    return gone


async def _forget_at_sms(node: Spearlet, task_ids: list[str]) -> None:
    """On a cluster member, the SMS's records of the tasks deleted here go too, so no
    member lists them any more (core/sms_retention.py)."""
    forget = node.forget_tasks
    if forget is None or not task_ids:
        return
    try:
        await forget(task_ids)
    except SpearError as exc:
        raise type(exc)(
            f"deleted {len(task_ids)} task(s) on this node, but the SMS still lists them: {exc}"
        ) from exc


async def delete_by_policy(
    node: Spearlet,
    *,
    older_than_s: float | None = None,
    keep: int | None = None,
    namespace: str | None = None,
) -> list[str]:
    """Delete the finished tasks of `node` (of `namespace` only, if named) that the policy
    no longer keeps; returns their ids."""
    if older_than_s is None and keep is None:
        return []
    tasks = await node.tasks()
    if namespace is not None:
        tasks = [t for t in tasks if t.spec.namespace == namespace]
    return await delete_tasks(node, expired(tasks, older_than_s=older_than_s, keep=keep))
