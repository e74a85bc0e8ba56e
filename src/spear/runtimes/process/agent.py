"""The process worker agent: agents that are ordinary programs, run as child processes.

Each task's program runs in a process group of its own, so a timeout or a cancel reaches
everything it started: SIGTERM to the group, then SIGKILL after a grace period. The node
watches the leader by PID (a pidfd): once it exits, whatever it left in its group is
killed and it is reaped, so a task leaves neither zombies nor orphans. Limits are rlimits
set between fork and exec. stdout and stderr are pipes read in 64 KiB chunks into the
task's `TaskIO` sinks (files capped by `core/logs.py`, and the caller's live stream), so
a program writing gigabytes costs disk up to the cap, not memory.

One supervising thread per task (`supervisor.Supervisor`) does all of this with a
selector over the pipes, the pidfd and a wake-up pipe; the event loop only starts it and
awaits its outcome. A warm task that ends within 50 ms is watched by the event loop
itself (`loop_watch.py`), a wake-up fewer on its path. What runs is decided before
(`command.resolve_command`).
`.py` agents with `FunctionSpec.warm` run in children of a pre-started Python instead
(`forkserver.py`), forked ahead of time (`warm_spares` of them wait at once), under the
same supervision. A fork server no warm task used for `warm_idle_s` is stopped, with its
spares; the next warm task starts another. With `FunctionSpec.reuse`, a warm child that
ended its task cleanly is kept for the next task of the same function (`reuse.py`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from spear._logging import logger
from spear.core.models import Runtime, TaskState
from spear.core.worker import (
    Execution,
    Outcome,
    TaskContext,
    WorkerAgent,
)
from spear.runtimes.process.cgroups import NodeCgroup
from spear.runtimes.process.command import Command, resolve_command
from spear.runtimes.process.forkserver import DEFAULT_SPARES, WarmUnavailable
from spear.runtimes.process.loop_watch import watch_end_on_loop
from spear.runtimes.process.reuse import IdleWorker, ReuseKey, WorkerPool, reuse_key
from spear.runtimes.process.spare_cgroups import ChildCgroup
from spear.runtimes.process.supervisor import Child, Supervisor, spawn

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.models import Task
    from spear.runtimes.process.cgroups import TaskCgroup
    from spear.runtimes.process.channel import AgentChannel, Credential
    from spear.runtimes.process.forkserver import ForkServer, WarmChild

DEFAULT_GRACE_S = 2.0
DEFAULT_WARM_IDLE_S = 300.0


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
        warm_spares: int = DEFAULT_SPARES,
        warm_idle_s: float = DEFAULT_WARM_IDLE_S,
    ) -> None:
        if not 1 <= warm_spares <= 64 or warm_idle_s <= 0:
            raise ValueError("warm_spares must be 1-64 and warm_idle_s > 0")
        self._runtime_dir = runtime_dir
        self.grace_s = grace_s
        self.warm_spares = warm_spares  # children forked ahead, waiting for a warm task
        self.warm_idle_s = warm_idle_s  # a fork server unused this long is stopped
        self._limiter = anyio.CapacityLimiter(max_threads)
        self._commands: dict[str, Command] = {}
        self._channel: AgentChannel | None = None
        self._forkserver: ForkServer | None = None
        self._forkserver_lock = anyio.Lock()
        self._channel_lock = anyio.Lock()
        self.warm_starts = 0  # tasks started from the warm pool (for tests and benchmarks)
        self.ends_on_loop = 0  # tasks whose end the event loop saw (loop_watch.py)
        self._warm_running = 0
        self._warm_last = 0.0  # time.monotonic() when the last warm task ended
        self._idle_timer: asyncio.TimerHandle | None = None
        self._retiring: asyncio.Task[None] | None = None
        self._use_cgroups = cgroups
        self._cgroup: NodeCgroup | None = None
        self._cgroup_checked = False
        self.workers = WorkerPool()  # idle reused warm workers (FunctionSpec.reuse)

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

                node_cgroup = await self._node_cgroup()  # its spares make theirs in it
                cgroup_dir = str(node_cgroup.directory) if node_cgroup is not None else None
                server = ForkServer(self.warm_spares, cgroup_dir)
                await anyio.to_thread.run_sync(server.start)
                self._forkserver = server
            return self._forkserver

    def _warm_ended(self) -> None:
        self._warm_running -= 1
        self._warm_last = time.monotonic()
        if self._idle_timer is None and self._forkserver is not None:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(self.warm_idle_s, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        self._end_workers(self.workers.expired(self.warm_idle_s))
        if self._forkserver is None or self._retiring is not None:
            return
        left = self._warm_last + self.warm_idle_s - time.monotonic()
        if self._warm_running == 0 and left <= 0:
            self._retiring = asyncio.get_running_loop().create_task(self._retire_idle())
        elif self._warm_running == 0:
            self._idle_timer = asyncio.get_running_loop().call_later(left, self._idle_check)
        # (with warm tasks running, the last of them to end arms the timer again)

    async def _retire_idle(self) -> None:
        """Stop the fork server and its spares: no warm task came for `warm_idle_s`."""
        try:
            async with self._forkserver_lock:
                server = self._forkserver
                if server is None or self._warm_running:
                    return
                self._forkserver = None
                self._end_workers(self.workers.drain())
                logger.debug("stopping the idle warm Python worker (pid {})", server.pid)
                await anyio.to_thread.run_sync(server.stop)
        finally:
            self._retiring = None

    async def start(self, ctx: TaskContext) -> Execution:
        command = self._commands.pop(ctx.task.id, None) or resolve_command(ctx.task.spec)
        server = None
        worker: IdleWorker | None = None
        key = reuse_key(ctx.task.spec, command) if ctx.task.spec.reuse else None
        if ctx.task.spec.warm and command.python_script is not None:
            try:
                server = await self.forkserver()
                self.warm_starts += 1
                self._warm_running += 1  # (an idle fork server is not stopped under it)
            except OSError as exc:  # a cold start still runs the task
                logger.warning("warm Python worker unavailable ({}); starting cold", exc)
            if server is not None and key is not None:
                worker, dead = self.workers.take(key)
                self._end_workers(dead)
        try:
            cgroup = child_cgroup = None
            node_cgroup = await self._node_cgroup() if self._use_cgroups else None
            if worker is not None:
                cgroup = worker.cgroup  # its own since its first task (or none)
            elif node_cgroup is not None and server is not None and server.cgroup_dir:
                child_cgroup = ChildCgroup(node_cgroup)  # its spare's, known with its pid
            elif node_cgroup is not None:
                cgroup = node_cgroup.for_task(ctx.task.id)  # one mkdir: short
            channel = self._channel or await self.channel()
            credential = channel.register(ctx, cgroup)
            if child_cgroup is not None:
                credential.late_cgroup = child_cgroup.task_cgroup
        except BaseException:
            if server is not None:
                self._warm_ended()
            if worker is not None:
                self._end_workers([worker])
            raise
        command.env.update(credential.env())
        execution = _ProcessExecution(self, ctx, command, credential, server, cgroup)
        execution.child_cgroup = child_cgroup
        execution.reuse = key if server is not None else None
        execution.worker = worker
        return execution

    def _keep(self, worker: IdleWorker) -> None:
        """A worker that ended its task cleanly waits for the next task of its function."""
        self._end_workers(self.workers.put(worker))
        self._end_workers(self.workers.expired(self.warm_idle_s))

    def _end_workers(self, workers: list[IdleWorker]) -> None:
        for worker in workers:
            worker.close()  # (its fork server kills its group)
            if worker.cgroup is not None and self._cgroup is not None:
                self._cgroup.retire(worker.cgroup)

    async def _node_cgroup(self) -> NodeCgroup | None:
        if not self._cgroup_checked:
            async with self._channel_lock:  # one per node, also when tasks start together
                if not self._cgroup_checked:
                    self._cgroup = await anyio.to_thread.run_sync(NodeCgroup.create)
                    self._cgroup_checked = True
        return self._cgroup

    @property
    def cgroup(self) -> NodeCgroup | None:
        """The node's cgroup for process tasks (None where cgroup v2 is not writable)."""
        return self._cgroup

    async def aclose(self) -> None:
        self._end_workers(self.workers.drain())
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._retiring is not None:
            with anyio.CancelScope(shield=True):
                await self._retiring
        if self._forkserver is not None:  # (first: its spares are in the node's cgroup)
            await anyio.to_thread.run_sync(self._forkserver.stop)
            self._forkserver = None
        if self._cgroup is not None:
            await anyio.to_thread.run_sync(self._cgroup.close)
            self._cgroup = None
            self._cgroup_checked = False
        if self._channel is not None:
            await self._channel.aclose()
            self._channel = None


# How long a failed agent's last bytes on the channel may take to be read, for its reason.
_LAST_WORDS_S = 0.2


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
        self._warm = forkserver is not None
        self._cgroup = cgroup
        self.child_cgroup: ChildCgroup | None = None  # a warm child's own (spare_cgroups.py)
        self.reuse: ReuseKey | None = None  # its function, if its worker may be kept
        self.worker: IdleWorker | None = None  # the kept worker that takes it, if any
        self._warm_child: WarmChild | None = None
        self._supervisor = Supervisor(ctx, agent.grace_s, cgroup)
        credential.on_protocol_error = self._protocol_error

    def _protocol_error(self, message: str) -> None:
        self._supervisor.protocol_error = message

    def kill(self, reason: str = "cancelled") -> None:
        self._ctx.control.cancel(reason)
        self._supervisor.wake()

    def _start(self, stdin: int | None, stdout: int, stderr: int) -> Child:
        if self.child_cgroup is not None:  # a warm task started cold: a cgroup of its own
            self.child_cgroup = None
            self._cgroup = self._own_task_cgroup()
        return spawn(self._command, stdin, stdout, stderr, self._cgroup)

    def _own_task_cgroup(self) -> TaskCgroup | None:
        node_cgroup = self._agent._cgroup
        cgroup = node_cgroup.for_task(self._ctx.task.id) if node_cgroup is not None else None
        self._supervisor.cgroup = cgroup
        self._credential.cgroup = cgroup
        self._credential.late_cgroup = None
        return cgroup

    def _start_warm(self, stdin: int | None, stdout: int, stderr: int) -> Child:
        """On the event loop: one send that does not wait."""
        assert self._forkserver is not None
        worker, self.worker = self.worker, None
        if worker is not None:  # a kept worker of this function takes it
            try:
                child = worker.send(self._command, stdin, stdout, stderr, self._forkserver.devnull)
            except WarmUnavailable:
                self._agent._end_workers([worker])
                self._cgroup = self._own_task_cgroup()  # (it runs cold: a cgroup of its own)
                raise
            self._agent.workers.reused += 1
        else:
            procs = self._cgroup.procs if self._cgroup is not None else None
            child = self._forkserver.spawn(
                self._command, stdin, stdout, stderr, procs, block=False,
                cgroup=self.child_cgroup, reuse=self.reuse is not None,
            )  # fmt: skip
        self._warm_child = child
        return child

    def _start_warm_waiting(self, stdin: int | None, stdout: int, stderr: int) -> Child:
        """On a worker thread, when the fork server's queue was full: the send may wait."""
        assert self._forkserver is not None
        procs = self._cgroup.procs if self._cgroup is not None else None
        try:
            return self._forkserver.spawn(
                self._command, stdin, stdout, stderr, procs, cgroup=self.child_cgroup
            )
        except WarmUnavailable as exc:
            logger.warning("warm Python worker unavailable ({}); starting cold", exc)
            return self._start(stdin, stdout, stderr)

    async def wait(self) -> Outcome:
        outcome: Outcome | None = None
        try:
            outcome = await self._wait()
            if outcome.state is TaskState.FAILED and outcome.reason == (
                f"exit status {outcome.exit_code}"
            ):  # the channel may still be reading what the agent sent before it exited
                await self._credential.connections_ended(_LAST_WORDS_S)
                error = self._supervisor.protocol_error
                if error is not None:
                    reason = f"{outcome.reason} ({error})"
                    outcome = Outcome(outcome.state, outcome.exit_code, reason)
            return outcome
        finally:
            channel = self._agent._channel
            if channel is not None:
                with anyio.CancelScope(shield=True):
                    await channel.revoke(self._credential)
            self._keep_or_end(outcome)

    def _keep_or_end(self, outcome: Outcome | None) -> None:
        """A kept worker: back to the pool if its task completed, else ended now."""
        if self.worker is not None:  # taken for a task that never started (cancelled)
            self._agent._keep(self.worker)
            self.worker = None
        child = self._warm_child
        if child is None or not child.kept:
            return
        assert child.pid is not None and self.reuse is not None
        worker = IdleWorker(self.reuse, child.pid, child.status, self._supervisor.cgroup)
        ok = outcome is not None and outcome.state is TaskState.COMPLETED
        if ok and not self._ctx.control.cancelled and self._supervisor.protocol_error is None:
            self._agent._keep(worker)
        else:
            self._agent._end_workers([worker])

    async def _wait(self) -> Outcome:
        agent = self._agent
        supervisor = self._supervisor
        try:
            if self._forkserver is not None:
                # The request goes out from here (one send, no fork), so the child starts
                # while a worker thread wakes up to watch it.
                try:
                    started = supervisor.begin(
                        self._start_warm, reraise=(WarmUnavailable, BlockingIOError)
                    )
                except WarmUnavailable as exc:  # it died (or was stopped) before the task began
                    logger.warning("warm Python worker unavailable ({}); starting cold", exc)
                except BlockingIOError:  # many tasks at once: its queue is full
                    return await anyio.to_thread.run_sync(
                        supervisor.run, self._start_warm_waiting, limiter=agent._limiter
                    )
                else:
                    if isinstance(started, Outcome):
                        return started
                    try:
                        # A short task's end is seen on the loop (one wake-up, no thread).
                        outcome = await watch_end_on_loop(supervisor, started)
                        if outcome is not None:
                            agent.ends_on_loop += 1
                            return outcome
                        return await anyio.to_thread.run_sync(
                            supervisor.watch, started, limiter=agent._limiter
                        )
                    finally:
                        supervisor.abandon(started)  # (nothing, once watched)
            return await anyio.to_thread.run_sync(
                supervisor.run, self._start, limiter=agent._limiter
            )
        finally:
            supervisor.close()
            if self._warm:
                agent._warm_ended()
            cgroup = supervisor.cgroup  # (a warm child's is known once it started)
            kept = self._warm_child is not None and self._warm_child.kept
            if cgroup is not None and agent._cgroup is not None and not kept:
                agent._cgroup.retire(cgroup)
