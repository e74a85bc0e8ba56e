"""Admission: a node's CPU and memory reserved for the tasks it runs (seed §5.1)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import anyio

from spear.core.models import Resources
from spear.errors import ResourceExhausted

if TYPE_CHECKING:
    from collections.abc import Sequence


class Admission:
    """Reserves CPU and memory for running tasks; waiters are served first in, first out."""

    def __init__(self, capacity: Resources) -> None:
        self.capacity = capacity
        self.used = Resources(cpu_millis=0, memory_bytes=0)
        self._waiters: deque[tuple[Resources, anyio.Event]] = deque()

    @property
    def free(self) -> Resources:
        return self.capacity - self.used

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, need: Resources) -> bool:
        """Reserve `need` if it fits now and nobody waits before it."""
        used, capacity = self.used, self.capacity
        if (
            not self._waiters
            and used.cpu_millis + need.cpu_millis <= capacity.cpu_millis
            and used.memory_bytes + need.memory_bytes <= capacity.memory_bytes
        ):
            self.used = used + need
            return True
        return False

    def check(self, need: Resources) -> None:
        """Raise if `need` can never fit this node."""
        if not need.fits_in(self.capacity):
            raise ResourceExhausted(
                f"the task needs {need.cpu_millis}m CPU and {need.memory_bytes} bytes; "
                f"this node has {self.capacity.cpu_millis}m and {self.capacity.memory_bytes}"
            )

    async def acquire(self, need: Resources) -> None:
        self.check(need)
        if self.try_acquire(need):
            return
        event = anyio.Event()
        item = (need, event)
        self._waiters.append(item)
        try:
            await event.wait()
        except BaseException:
            if item in self._waiters:
                self._waiters.remove(item)
            else:  # granted just as we were cancelled: give it back
                self.release(need)
            raise

    def release_many(self, needs: Sequence[Resources]) -> None:
        cpu = sum(need.cpu_millis for need in needs)
        memory = sum(need.memory_bytes for need in needs)
        self.release(Resources(cpu_millis=cpu, memory_bytes=memory))

    def release(self, need: Resources) -> None:
        self.used = self.used - need
        while self._waiters and self._waiters[0][0].fits_in(self.free):
            granted, event = self._waiters.popleft()
            self.used = self.used + granted
            event.set()
