"""Task records in the KV (seed §4), each change a compare-and-swap on its version.

Keys: `tasks/<id>` holds a task's record (codec.py); `active/<id>` marks a task not yet
finished and names the process that owns it, so a task whose process died (kill -9,
power loss) is found and marked FAILED ("lost") by the next node that opens the data
dir, instead of staying RUNNING forever. `active/wave-<first id>` marks the tasks of a
wave (`TaskController.run_many`) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from spear.core.models import Task, TaskState
from spear.core.tasks.codec import decode_task, encode_task
from spear.core.worker import EXIT_LOST
from spear.errors import InvalidArgument, NotFound
from spear.store.kv import WRITTEN, EventKind, Write

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from spear.core.worker import Outcome
    from spear.store.kv import KV, Staged

_TASKS = "tasks/"
_WATCH_RECHECK_S = 1.0  # a watcher re-reads the record when no change came for this long
_ACTIVE = "active/"
_UNFINISHED = frozenset({TaskState.PENDING, TaskState.RUNNING})
_WAVE = "wave-"  # active/wave-<first task id>: the marker of a wave's tasks (run_many)


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (guards against pid reuse), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"


_SELF = {"pid": os.getpid(), "start": _process_start_time(os.getpid())}


def _owner_alive(owner: Mapping[str, Any]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    start = _process_start_time(pid)
    return start is not None and (start == "?" or owner.get("start") in (None, "?", start))


class TaskStore:
    """Task records in a KV, each change a compare-and-swap."""

    def __init__(self, kv: KV) -> None:
        self._kv = kv
        # The record this store last wrote for each unfinished task, with its version: a
        # transition that reads back that same version reuses it instead of decoding JSON.
        self._written: dict[str, tuple[int, Task]] = {}

    def _remember(self, task: Task, version: int) -> None:
        if task.state.terminal:
            self._written.pop(task.id, None)
            return
        if len(self._written) >= 100_000:  # tasks another process finished: forget them
            self._written.clear()
        self._written[task.id] = (version, task)

    async def create(self, task: Task, *, fresh: bool = False, later: bool = False) -> Staged:
        """Record a new task and mark it unfinished, in one atomic write. Raises if its id
        exists already, unless `fresh`: the id is a new one made here (`new_task_id`, see
        `create_wave`), written without reading it back first. A `fresh` one may be
        written `later`, with the next write (`KV.commit_later`): what is returned says
        when."""
        if later and fresh:
            version, staged = await self._kv.commit_later(_creation(task, fresh))
        else:
            version, staged = await self._kv.commit(_creation(task, fresh)), WRITTEN
        if version < 0 and task.attempts:
            version = await self._over_earlier_attempt(task)
        if version < 0:
            raise InvalidArgument(f"task {task.id} exists already")
        self._remember(task, version)
        return staged

    async def _over_earlier_attempt(self, task: Task) -> int:
        """`create` of a retried task over this node's finished record of an earlier
        attempt of it (run here before a restart, found lost, then placed here again by
        the cluster: core/retry_placement.py); -1 if the record here is not that."""
        entry = await self._kv.get(_TASKS + task.id)
        if entry is None:
            return -1
        earlier = decode_task(entry.value)
        if not earlier.state.terminal or earlier.attempts >= task.attempts:
            return -1
        return await self._kv.commit(_creation(task, False, over=entry.version))

    async def create_wave(self, tasks: Sequence[Task]) -> str:
        """Record new tasks and one unfinished marker naming them all, in one atomic
        write; returns the marker's key, for `finish_wave`.

        Their ids must be new ones made here (`new_task_id`, unique in this process and
        unlike another's but by a 2^-40 chance): unlike `create`, which may be given an
        id from elsewhere, this does not read each back to see that it is new.
        """
        marker = f"{_ACTIVE}{_WAVE}{tasks[0].id}"
        writes = [Write(_TASKS + task.id, encode_task(task)) for task in tasks]
        owner = {**_SELF, "node": tasks[0].node, "tasks": [task.id for task in tasks]}
        writes.append(Write(marker, orjson.dumps(owner)))
        version = await self._kv.commit(writes)
        for task in tasks:
            self._remember(task, version)
        return marker

    async def finish_wave(
        self, marker: str, ends: Sequence[tuple[Task, Outcome]], *, last: bool = True
    ) -> list[Task]:
        """Move the tasks of a wave (`create_wave`) to how they ended and drop its marker
        (unless not `last`: others of the wave run on), in one atomic write; if another
        writer changed one meanwhile, each goes through `transition`, and the marker goes
        last. (`recover_lost` passes over the wave's tasks that have ended.)"""
        news: list[Task] = []
        writes: list[Write] = []
        for task, outcome in ends:
            known = self._written.get(task.id)
            if known is None or known[1].state.terminal:
                break
            new = known[1].transition(
                outcome.state, exit_code=outcome.exit_code, reason=outcome.reason
            )
            news.append(new)
            writes.append(Write(_TASKS + task.id, encode_task(new), known[0]))
        else:
            if last:
                writes.append(Write(marker, None))
            version = await self._kv.commit(writes)
            if version >= 0:
                for new in news:
                    self._remember(new, version)
                return news
        out = [
            await self.transition(
                task.id, outcome.state, exit_code=outcome.exit_code, reason=outcome.reason
            )
            for task, outcome in ends
        ]
        if last:
            await self._kv.delete(marker)
        return out

    async def get(self, task_id: str) -> Task:
        entry = await self._kv.get(_TASKS + task_id)
        if entry is None:
            raise NotFound(f"no such task: {task_id}")
        return decode_task(entry.value)

    async def transition(
        self,
        task_id: str,
        state: TaskState,
        *,
        only_from: frozenset[TaskState] | None = None,
        **changes: Any,
    ) -> Task:
        """Move a task to `state`, retrying if another writer got there in between.

        The record this store wrote last is tried first without reading it back; a
        compare-and-swap that finds it changed since reads it, and tries again.
        """
        known = self._written.get(task_id)
        while True:
            if known is not None:
                version, task = known
                known = None
            else:
                entry = await self._kv.get(_TASKS + task_id)
                if entry is None:
                    raise NotFound(f"no such task: {task_id}")
                version, task = entry.version, decode_task(entry.value)
            if only_from is not None and task.state not in only_from:
                return task
            new = task.transition(state, **changes)
            if state.terminal:
                new_version = await self._kv.commit(_ending(new, version))
            else:
                new_version = await self._kv.compare_and_swap(
                    _TASKS + task_id, encode_task(new), version
                )
            if new_version >= 0:
                self._remember(new, new_version)
                return new

    async def update(self, task_id: str, change: Callable[[Task], Task]) -> Task:
        """Replace an unfinished task's record by `change(record)` (a retry's next attempt,
        core/retries.py), retrying if another writer got there in between."""
        while True:
            entry = await self._kv.get(_TASKS + task_id)
            if entry is None:
                raise NotFound(f"no such task: {task_id}")
            new = change(decode_task(entry.value))
            version = await self._kv.compare_and_swap(
                _TASKS + task_id, encode_task(new), entry.version
            )
            if version >= 0:
                self._remember(new, version)
                return new

    async def list_tasks(
        self, state: TaskState | None = None, limit: int | None = None
    ) -> list[Task]:
        """Tasks newest first, optionally only those in `state`."""
        if state is None:
            entries = await self._kv.scan(_TASKS, reverse=True, limit=limit)
            return [decode_task(e.value) for e in entries]
        out: list[Task] = []
        for entry in await self._kv.scan(_TASKS, reverse=True):
            task = decode_task(entry.value)
            if task.state is state:
                out.append(task)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        """The task as it is now, then after each state change, ending once it is terminal."""
        events = self._kv.watch(_TASKS + task_id)
        # Register the watcher before reading the current record, so no change falls between.
        pending = asyncio.ensure_future(anext(events))
        try:
            await asyncio.sleep(0)
            task = await self.get(task_id)
            yield task
            while not task.state.terminal:
                done, _ = await asyncio.wait({pending}, timeout=_WATCH_RECHECK_S)
                if done:
                    event = pending.result()
                    pending = asyncio.ensure_future(anext(events))
                    if event.kind is EventKind.DELETE:
                        raise NotFound(f"task {task_id} was deleted")
                    new = decode_task(event.value)
                else:  # a KV whose watch starts late (a remote one) may have missed a change
                    new = await self.get(task_id)
                if len(new.history) > len(task.history):
                    task = new
                    yield task
        finally:
            pending.cancel()
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await pending

    async def recover_lost(self) -> list[str]:
        """Mark FAILED every unfinished task whose owning process is gone."""
        lost = []
        for entry in await self._kv.scan(_ACTIVE):
            name = entry.key[len(_ACTIVE) :]
            try:
                owner = orjson.loads(entry.value)
            except ValueError:
                owner = {}
            if not isinstance(owner, dict):  # valid JSON, but not a marker: no owner
                owner = {}
            if _owner_alive(owner):
                continue
            ids = [name]
            if name.startswith(_WAVE):
                tasks = owner.get("tasks")
                ids = [str(t) for t in tasks] if isinstance(tasks, list) else []
            for task_id in ids:
                try:
                    task = await self.transition(
                        task_id,
                        TaskState.FAILED,
                        only_from=_UNFINISHED,
                        reason="lost: the process running it exited without finishing it",
                        exit_code=EXIT_LOST,
                    )
                except NotFound:
                    continue
                if task.exit_code == EXIT_LOST:
                    lost.append(task_id)
            await self._kv.delete(entry.key)
        return lost


_OWNER: dict[str | None, bytes] = {}  # the unfinished marker's value, per node name


def _creation(task: Task, fresh: bool, over: int = 0) -> list[Write]:
    """The writes that record a new task: its record (only if absent, unless `fresh`; or
    over the record at version `over`), its marker."""
    owner = _OWNER.get(task.node)
    if owner is None:
        owner = _OWNER[task.node] = orjson.dumps({**_SELF, "node": task.node})
    record = Write(_TASKS + task.id, encode_task(task), None if fresh else over)
    return [record, Write(_ACTIVE + task.id, owner)]


def _ending(task: Task, version: int) -> list[Write]:
    """The writes that record a task's end over its record at `version`: the record, and
    its unfinished marker gone, in one commit."""
    return [Write(_TASKS + task.id, encode_task(task), version), Write(_ACTIVE + task.id, None)]
