"""A concurrency limit shared fairly between tasks.

A backend runs at most `slots` inferences at once. Callers past that wait in a queue per
task, and a freed slot goes to the tasks in turn (round robin), so one task with a hundred
requests in flight cannot starve a task with one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class FairLimiter:
    """At most `slots` holders; waiters served round robin by owner (a task id)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise InvalidArgument("a concurrency limit must be at least 1")
        self.slots = slots
        self.in_use = 0
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def acquire(self, owner: str) -> None:
        if self.in_use < self.slots and not self._queues:
            self.in_use += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(owner, deque()).append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled: pass it on
            else:
                future.cancel()
                queue = self._queues.get(owner)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(future)
                    if not queue:
                        del self._queues[owner]
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._grant()

    def _grant(self) -> None:
        while self.in_use < self.slots and self._queues:
            owner, queue = self._queues.popitem(last=False)
            future = queue.popleft()
            if queue:
                self._queues[owner] = queue  # to the back of the line: the next owner's turn
            if future.done():
                continue
            self.in_use += 1
            future.set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self, owner: str) -> AsyncIterator[None]:
        await self.acquire(owner)
        try:
            yield
        finally:
            self.release()
