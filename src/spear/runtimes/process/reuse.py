"""Reused warm workers (`FunctionSpec.reuse`): a warm child that ran a task of a function
cleanly takes the next task of the same function, without a new fork.

As AWS Lambda reuses an execution environment and Ray a worker: the process, the modules
it imported and its script's `__main__` globals stay between tasks of one function. A
function is its script, namespace, environment from the spec, working directory and
limits (`ReuseKey`); workers of different functions are never shared.

A task ends its worker (killed as a warm task's process always is) unless it exited 0,
was neither cancelled nor timed out, and left its worker alone: one thread and no child
process (checked by the worker, which is a subreaper, so orphaned grandchildren count).
What every task gets afresh: its stdin/stdout/stderr, environment, working directory,
argv, `sys.path`, rlimits, atexit handlers, hostcall credential and the SDK's shared
connection.

The node keeps an idle worker's status socket (`IdleWorker`); the next task's request
goes on it, with the task's three pipes. Closing it ends the worker: the fork server
sees the hang-up and kills its group. Its cgroup (the one its spare made) stays with it
and is removed when the worker ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spear.runtimes.process.forkserver import WarmChild, WarmUnavailable

if TYPE_CHECKING:
    from spear.core.models import FunctionSpec
    from spear.runtimes.process.cgroups import TaskCgroup
    from spear.runtimes.process.command import Command

MAX_IDLE_WORKERS = 64  # on one node, all functions together; the longest idle goes first

ReuseKey = tuple[object, ...]


def reuse_key(spec: FunctionSpec, command: Command) -> ReuseKey | None:
    """Which function a task is, for reuse; None if its worker is not to be reused (not
    asked for, not a warm `.py` agent, or a CPU time limit: RLIMIT_CPU counts a
    process's whole life, so it would be spent across tasks)."""
    if not (spec.reuse and spec.warm) or command.python_script is None:
        return None
    if spec.cpu_time_s is not None:
        return None
    return (
        spec.namespace,
        command.python_script,
        tuple(sorted(spec.env)),
        command.cwd,
        command.limits,
    )


@dataclass(eq=False)
class IdleWorker:
    """A kept warm worker, waiting on its status socket for its next task."""

    key: ReuseKey
    pid: int
    status: socket.socket
    cgroup: TaskCgroup | None
    idle_since: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        """Nothing arrived on its socket since it was kept (the fork server reports a
        worker it reaped there; an empty read is the server gone)."""
        try:
            self.status.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def send(
        self, command: Command, stdin: int | None, stdout: int, stderr: int, devnull: int
    ) -> WarmChild:
        """Give it the next task (from the event loop: one send, no wait). The worker
        returns to the task's pool as a `WarmChild` whose pid is known already."""
        request = {
            "argv": command.argv[1:],
            "env": command.env,
            "cwd": command.cwd or os.getcwd(),
            "rlimits": command.limits.as_rlimits() if command.limits else [],
            "cgroup_procs": None,
        }
        fds = [devnull if stdin is None else stdin, stdout, stderr]
        try:
            socket.send_fds(self.status, [json.dumps(request).encode()], fds, socket.MSG_DONTWAIT)
        except OSError as exc:  # it ended since `alive` (killed, its server gone)
            raise WarmUnavailable(exc.errno, f"the reused worker is gone: {exc}") from None
        return WarmChild(self.status, None, keep=True, pid=self.pid)

    def close(self) -> None:
        """End it: the fork server sees the hang-up and kills its group."""
        with contextlib.suppress(OSError):
            self.status.close()


class WorkerPool:
    """The node's idle reused workers, by function."""

    def __init__(self, limit: int = MAX_IDLE_WORKERS) -> None:
        self.limit = limit
        self._idle: dict[ReuseKey, list[IdleWorker]] = {}
        self._count = 0
        self.reused = 0  # tasks a kept worker took (for tests and benchmarks)

    def __len__(self) -> int:
        return self._count

    def take(self, key: ReuseKey) -> tuple[IdleWorker | None, list[IdleWorker]]:
        """The most recently kept live worker of `key` (or None), and the dead ones
        found on the way (for the caller to end: their cgroups)."""
        workers = self._idle.get(key)
        dead: list[IdleWorker] = []
        while workers:
            worker = workers.pop()
            self._count -= 1
            if worker.alive():
                if not workers:
                    del self._idle[key]
                return worker, dead
            dead.append(worker)
        self._idle.pop(key, None)
        return None, dead

    def put(self, worker: IdleWorker) -> list[IdleWorker]:
        """Keep `worker` idle; the workers pushed out by the limit (to be ended)."""
        worker.idle_since = time.monotonic()
        self._idle.setdefault(worker.key, []).append(worker)
        self._count += 1
        out: list[IdleWorker] = []
        while self._count > self.limit:
            oldest = min((ws[0] for ws in self._idle.values() if ws), key=lambda w: w.idle_since)
            out.append(self._remove(oldest))
        return out

    def expired(self, idle_s: float) -> list[IdleWorker]:
        """Remove and return the workers idle for `idle_s` or longer."""
        limit = time.monotonic() - idle_s
        old = [w for ws in self._idle.values() for w in ws if w.idle_since <= limit]
        return [self._remove(w) for w in old]

    def drain(self) -> list[IdleWorker]:
        """Remove and return all of them."""
        out = [w for ws in self._idle.values() for w in ws]
        self._idle.clear()
        self._count = 0
        return out

    def _remove(self, worker: IdleWorker) -> IdleWorker:
        workers = self._idle[worker.key]
        workers.remove(worker)
        if not workers:
            del self._idle[worker.key]
        self._count -= 1
        return worker
