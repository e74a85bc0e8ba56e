"""Warm children in a cgroup of their own before their task comes.

A process moved into a cgroup (a write to `cgroup.procs`) waits for the kernel's
threadgroup lock, whose writer waits out an RCU grace period: ~0.07 ms on a quiet
machine, 0.3-2.5 ms on this 2-core one under load (measured from the child, between its
request and its start), on the path of every warm task that joined its task's cgroup.
Instead each spare makes `<node cgroup>/warm-<its pid>` and moves itself in while it
waits, and the task it takes runs there: the node learns which cgroup a task is in from
the child's pid, the first message on the task's status socket.

The hostcall channel admits a connection only from a process in the task's cgroup; the
pid message is sent before the child runs anything, so when its agent connects the pid is
known to the node, or still in the status socket's buffer (`ChildCgroup.task_cgroup`
peeks at it there).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from typing import TYPE_CHECKING

from spear.runtimes.process.cgroups import TaskCgroup

if TYPE_CHECKING:
    from spear.runtimes.process.cgroups import NodeCgroup

_PREFIX = "warm-"


def join_own(parent: str) -> OSError | None:
    """In a spare, off the task's path: make its cgroup and move in (the error, if not)."""
    directory = os.path.join(parent, f"{_PREFIX}{os.getpid()}")
    try:
        os.mkdir(directory)
        fd = os.open(os.path.join(directory, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"%d" % os.getpid())
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    return None


def remove_unused(parent: str, pid: int) -> None:
    """In the fork server: the cgroup of a spare that died without a task (now empty)."""
    with contextlib.suppress(OSError):
        os.rmdir(os.path.join(parent, f"{_PREFIX}{pid}"))


class ChildCgroup:
    """The node's view of a warm task's cgroup: the cgroup its child made, once the
    child's pid is known (`None` before, and when the child could not join its own)."""

    def __init__(self, node: NodeCgroup) -> None:
        self.node = node
        self.pid: int | None = None
        self.joined = False
        self.lock = threading.Lock()  # the pid message is read on a thread or the loop
        self._status: socket.socket | None = None

    def watch(self, status: socket.socket) -> None:
        """The task's status socket (set before the request goes out)."""
        self._status = status

    def started(self, message: dict[str, object]) -> None:
        """The child's pid message (under `lock`, read with it)."""
        self.pid = int(message["pid"])  # type: ignore[call-overload]
        self.joined = bool(message.get("cgroup"))

    def task_cgroup(self) -> TaskCgroup | None:
        with self.lock:
            if self.pid is None and self._status is not None:
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    peeked = self._status.recv(256, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    message = json.loads(peeked)
                    if "pid" in message:
                        self.started(message)
            if self.pid is None or not self.joined:
                return None
            name = f"{_PREFIX}{self.pid}"
            return TaskCgroup(self.node.directory / name, f"{self.node.path}/{name}")
