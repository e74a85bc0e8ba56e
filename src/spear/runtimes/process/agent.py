"""The process worker agent: agents that are ordinary programs, run as child processes.

Each task's program runs in a process group of its own, so a timeout or a cancel reaches
everything it started: SIGTERM to the group, then SIGKILL after a grace period. The node
watches the leader by PID (a pidfd): once it exits, whatever it left in its group is
killed and it is reaped, so a task leaves neither zombies nor orphans. Limits are rlimits
set between fork and exec. stdout and stderr are pipes read in 64 KiB chunks into the
task's `TaskIO` sinks (files capped by `core/logs.py`, and the caller's live stream), so
a program writing gigabytes costs disk up to the cap, not memory.

One supervising thread per task (`process_supervisor.Supervisor`) does all of this with a
selector over the pipes, the pidfd and a wake-up pipe; the event loop only starts it and
awaits its outcome. What runs is decided before (`process_command.resolve_command`).
`.py` agents with `FunctionSpec.warm` are forked from a pre-started Python instead
(`forkserver.py`), under the same supervision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from spear._logging import logger
from spear.core.models import Runtime
from spear.core.worker import (
    Execution,
    Outcome,
    TaskContext,
    WorkerAgent,
)
from spear.runtimes.process.cgroups import NodeCgroup
from spear.runtimes.process.command import Command, resolve_command
from spear.runtimes.process.supervisor import Child, Supervisor, spawn

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.models import Task
    from spear.runtimes.process.cgroups import TaskCgroup
    from spear.runtimes.process.channel import AgentChannel, Credential
    from spear.runtimes.process.forkserver import ForkServer

DEFAULT_GRACE_S = 2.0


# -- the worker agent -----------------------------------------------------------------


class ProcessWorkerAgent(WorkerAgent):
    """Runs `process` tasks: any executable, `.py` files with this node's Python."""

    runtime = Runtime.PROCESS

    def __init__(
        self,
        runtime_dir: Path,
        *,
        grace_s: float = DEFAULT_GRACE_S,
        max_threads: int = 64,
        cgroups: bool = True,
    ) -> None:
        self._runtime_dir = runtime_dir
        self.grace_s = grace_s
        self._limiter = anyio.CapacityLimiter(max_threads)
        self._commands: dict[str, Command] = {}
        self._channel: AgentChannel | None = None
        self._forkserver: ForkServer | None = None
        self._forkserver_lock = anyio.Lock()
        self._channel_lock = anyio.Lock()
        self.warm_starts = 0  # tasks started from the warm pool (for tests and benchmarks)
        self._use_cgroups = cgroups
        self._cgroup: NodeCgroup | None = None
        self._cgroup_checked = False

    async def prepare(self, task: Task) -> None:
        command = resolve_command(task.spec)
        if len(self._commands) > 100_000:  # prepared, never started
            self._commands.clear()
        self._commands[task.id] = command

    async def channel(self) -> AgentChannel:
        """The hostcall channel for this node's process agents (started on first use)."""
        async with self._channel_lock:
            if self._channel is None:
                from spear.runtimes.process.channel import AgentChannel

                channel = AgentChannel(self._runtime_dir)
                await channel.start()
                self._channel = channel
            return self._channel

    async def forkserver(self) -> ForkServer:
        """The pre-started Python that warm `.py` agents are forked from."""
        async with self._forkserver_lock:
            if self._forkserver is None or not self._forkserver.alive:
                from spear.runtimes.process.forkserver import ForkServer

                if self._forkserver is not None:  # it died: reap it, close our end
                    await anyio.to_thread.run_sync(self._forkserver.stop)

                server = ForkServer()
                await anyio.to_thread.run_sync(server.start)
                self._forkserver = server
            return self._forkserver

    async def start(self, ctx: TaskContext) -> Execution:
        command = self._commands.pop(ctx.task.id, None) or resolve_command(ctx.task.spec)
        server = None
        if ctx.task.spec.warm and command.python_script is not None:
            try:
                server = await self.forkserver()
                self.warm_starts += 1
            except OSError as exc:  # a cold start still runs the task
                logger.warning("warm Python worker unavailable ({}); starting cold", exc)
        cgroup = None
        if self._use_cgroups:
            async with self._channel_lock:  # one per node, also when tasks start together
                if not self._cgroup_checked:
                    self._cgroup = await anyio.to_thread.run_sync(NodeCgroup.create)
                    self._cgroup_checked = True
            if self._cgroup is not None:
                cgroup = await anyio.to_thread.run_sync(self._cgroup.for_task, ctx.task.id)
        channel = await self.channel()
        credential = channel.register(ctx, cgroup)
        command.env.update(credential.env())
        return _ProcessExecution(self, ctx, command, credential, server, cgroup)

    @property
    def cgroup(self) -> NodeCgroup | None:
        """The node's cgroup for process tasks (None where cgroup v2 is not writable)."""
        return self._cgroup

    async def aclose(self) -> None:
        if self._cgroup is not None:
            await anyio.to_thread.run_sync(self._cgroup.close)
            self._cgroup = None
            self._cgroup_checked = False
        if self._forkserver is not None:
            await anyio.to_thread.run_sync(self._forkserver.stop)
            self._forkserver = None
        if self._channel is not None:
            await self._channel.aclose()
            self._channel = None


class _ProcessExecution(Execution):
    def __init__(
        self,
        agent: ProcessWorkerAgent,
        ctx: TaskContext,
        command: Command,
        credential: Credential,
        forkserver: ForkServer | None,
        cgroup: TaskCgroup | None = None,
    ) -> None:
        self._agent = agent
        self._ctx = ctx
        self._command = command
        self._credential = credential
        self._forkserver = forkserver
        self._cgroup = cgroup
        self._supervisor = Supervisor(ctx, agent.grace_s, cgroup)
        credential.on_protocol_error = self._protocol_error

    def _protocol_error(self, message: str) -> None:
        self._supervisor.protocol_error = message

    def kill(self, reason: str = "cancelled") -> None:
        self._ctx.control.cancel(reason)
        self._supervisor.wake()

    def _start(self, stdin: int | None, stdout: int, stderr: int) -> Child:
        if self._forkserver is not None:
            procs = self._cgroup.procs if self._cgroup is not None else None
            return self._forkserver.spawn(self._command, stdin, stdout, stderr, procs)
        return spawn(self._command, stdin, stdout, stderr, self._cgroup)

    async def wait(self) -> Outcome:
        try:
            return await anyio.to_thread.run_sync(
                self._supervisor.run, self._start, limiter=self._agent._limiter
            )
        finally:
            self._supervisor.close()
            channel = self._agent._channel
            if channel is not None:
                await channel.revoke(self._credential)
