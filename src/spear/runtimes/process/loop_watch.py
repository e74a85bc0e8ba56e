"""A short task's end, seen on the event loop instead of a supervising thread.

A warm Python agent that does little is over in a millisecond or two, and on this 2-core
machine each wake-up of a sleeping thread costs 30-75 us idle and milliseconds under
load. Watched from a worker thread, its end takes two in a row: the thread wakes on the
child's exit message, then wakes the event loop with the outcome. Here the event loop
waits on the child's status socket itself (`loop.add_reader`) for up to `LOOP_WINDOW_S`:
one wake-up, and no hand-off to a thread at the start either.

Only the end is watched here. The child closes its stdout and stderr before it reports
its exit, so by then the pipes hold at most a pipe's capacity each (a child that writes
more blocks until somebody reads, and does not end within the window): the output read
on the loop is bounded. Everything else goes to `Supervisor.watch` on a thread, which
does it all: a child still running after the window, a cancel or a deadline (the
signals and the grace period), stdin to feed, pipes something outside the task's group
still holds open after it ended (read on for `DRAIN_S`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING

import anyio

from spear.runtimes.process.supervisor import CHUNK

if TYPE_CHECKING:
    from spear.core.worker import Outcome
    from spear.runtimes.process.supervisor import Started, Supervisor

# How long the loop waits for a child's end before a thread takes over. Long enough for a
# trivial agent under load, short enough that a longer task's wait moves to a thread.
LOOP_WINDOW_S = 0.05


async def watch_end_on_loop(supervisor: Supervisor, started: Started) -> Outcome | None:
    """The outcome of a child that ends within `LOOP_WINDOW_S` (and of its output), or
    None: then `supervisor.watch(started)` on a thread goes on from where this stopped."""
    if started.pump is not None or started.watched:
        return None
    control = supervisor.ctx.control
    window = LOOP_WINDOW_S
    if control.deadline is not None:
        window = min(window, control.deadline - time.monotonic())
    if control.cancelled or window <= 0:
        return None
    child = started.child
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    ended: tuple[int, float] | None = None

    def on_status() -> None:
        nonlocal ended
        got = child.collect()
        if got is None:  # its start (the pid); its end is the next message
            supervisor.child_started(child)
            return
        ended = got
        loop.remove_reader(child.exit_fd)
        woken.set()

    loop.add_reader(child.exit_fd, on_status)
    loop.add_reader(supervisor.wake_fd, woken.set)  # a cancel: the thread handles it
    try:
        # Shielded like the thread it stands for: a task's end is always collected.
        with anyio.CancelScope(shield=True), anyio.move_on_after(window):
            await woken.wait()
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(supervisor.wake_fd)
        if ended is None:
            loop.remove_reader(child.exit_fd)
    if ended is None:
        return None
    started.ended = ended
    if not _drain(supervisor, started):  # held open outside the group: the thread reads on
        return None
    return supervisor.finish(started)


def _drain(supervisor: Supervisor, started: Started) -> bool:
    """Read what the ended child left in its pipes; True if both are at their end."""
    io = supervisor.ctx.io
    for name, sink in (("out_r", io.stdout), ("err_r", io.stderr)):
        fd: int = getattr(started, name)
        os.set_blocking(fd, False)
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                break
            if not data:
                os.close(fd)
                setattr(started, name, -1)
                break
            sink(data)
    return started.out_r < 0 and started.err_r < 0
