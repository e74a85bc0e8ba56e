"""Cluster-wide task quotas, kept by the SMS: how many unfinished tasks a namespace may
have across every node at once (docs/security.md).

A member takes a slot, named by the task's id, before the task starts (`take`), wherever
it was submitted; the slot is the task's until its record at the SMS is finished, or until
the member gives it back (`release`: a call that ended, a submit that failed). A slot whose
task the SMS has never heard of is dropped after `grace_s` (a member that died between
taking it and starting the task). Like the node's TaskSlots (node/quotas.py), a slot's
task is looked up only when the namespace is at its limit, so one under it pays nothing.

The slots live in the leading SMS's memory: after a failover the new leader starts with
none, and counts a namespace's tasks from the slots taken after it leads.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from spear.errors import ResourceExhausted

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

GRACE_S = 30.0
MAX_HOLD_S = 86400.0  # a slot held until released, by a member that died: dropped then


class ClusterTaskSlots:
    """`limit_of(namespace)`: its cluster-wide quota of unfinished tasks (None: none);
    `finished(task_id)`: True once its record is terminal, None if there is no record."""

    def __init__(
        self,
        limit_of: Callable[[str], int | None],
        finished: Callable[[str], Awaitable[bool | None]],
        grace_s: float = GRACE_S,
    ) -> None:
        self._limit_of = limit_of
        self._finished = finished
        self._grace_s = grace_s
        # namespace -> task id -> (taken at, held until released)
        self._held: dict[str, dict[str, tuple[float, bool]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def take(self, namespace: str, task_id: str, *, until_released: bool = False) -> bool:
        """Hold a slot of `namespace` for `task_id` (`until_released`: whatever its
        record says, for a run its caller waits on); False if the namespace has no quota.
        ResourceExhausted, naming the quota, when it has none free."""
        limit = self._limit_of(namespace)
        if limit is None:
            return False
        held = self._held.setdefault(namespace, {})
        async with self._locks.setdefault(namespace, asyncio.Lock()):
            if task_id in held:
                return True
            if len(held) >= limit:
                now = time.monotonic()
                for other, (taken_at, by_release) in list(held.items()):
                    age = now - taken_at
                    if by_release:
                        gone = age > MAX_HOLD_S
                    else:
                        done = await self._finished(other)
                        gone = bool(done) or (done is None and age > self._grace_s)
                    if gone:
                        held.pop(other, None)
            if len(held) >= limit:
                raise ResourceExhausted(
                    f"namespace {namespace!r} is at its cluster-wide quota of {limit}"
                    " unfinished tasks"
                )
            held[task_id] = (time.monotonic(), until_released)
        return True

    def release(self, namespace: str, task_id: str) -> None:
        """Give a slot back (its task ended, or never started)."""
        self._held.get(namespace, {}).pop(task_id, None)

    def held(self, namespace: str) -> int:
        return len(self._held.get(namespace, {}))
