"""What every task goes through once admitted, one at a time (`TaskController.execute`)
or in a wave (`run_many`): started in its runtime with its deadline and log writer, its
outcome (a SpearError is a FAILED one), its resources and writer released, then the
finished hooks told and its waiters woken. And what `cancel` and `wait` find meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING

import anyio

from spear.core.models import TaskState
from spear.core.tasks.hooks import TasksFinished
from spear.core.worker import EXIT_CANCELLED, EXIT_LOST, Outcome, TaskContext
from spear.errors import ResourceExhausted, SpearError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from spear.core.logs import TaskLogs, TaskLogWriter
    from spear.core.models import Task
    from spear.core.tasks.admission import Admission
    from spear.core.tasks.hooks import FinishedHook
    from spear.core.tasks.store import TaskStore
    from spear.core.worker import Execution, ExecutionControl, NodeServices, WorkerAgent
    from spear.store.kv import Staged

STOPPED = "node stopped while the task ran"  # the reason of a task the node left running
# The reason of a task stopped because the call that ran it was cancelled (its client went
# away, a forwarding node's connection dropped): see `outcome_of` and `cut_short`.
CALLER_GONE = "its caller went away"
# The reason of a task stopped because its output filled the disk (core/logs.py).
NO_SPACE = "no space left on device: the task's output filled the disk (its log was released)"
_UNFINISHED = frozenset({TaskState.PENDING, TaskState.RUNNING})


def failure(exc: SpearError) -> Outcome:
    """The outcome of a task whose runtime raised `exc` starting or running it."""
    return Outcome(TaskState.FAILED, exc.exit_code, str(exc))


def _filled(outcome: Outcome) -> Outcome:
    """A task stopped because the disk filled failed (it did not choose to stop)."""
    if outcome.reason == NO_SPACE:
        return Outcome(TaskState.FAILED, ResourceExhausted.exit_code, NO_SPACE)
    return outcome


def outcome_now(execution: Execution) -> Outcome | None:
    """Run a short guest to its end right here (None: it runs on, `wait` for it)."""
    try:
        outcome = execution.run_now()
        return None if outcome is None else _filled(outcome)
    except SpearError as exc:
        return failure(exc)


async def outcome_of(run: Run) -> Outcome:
    """How the task of `run` ended, once it did (its guest started: `run.execution`).

    The guest is waited for in a task of its own, shielded from the waiter: a waiter
    cancelled meanwhile (its caller went away) stops the guest, waits for its end and
    keeps it in `run.ended`, and only then lets the cancel go on. So a guest never runs on
    past the room it holds, nor is its end taken for a lost task's."""
    execution = run.execution
    assert execution is not None
    waiting = asyncio.ensure_future(_wait(execution))
    try:
        return await asyncio.shield(waiting)
    except asyncio.CancelledError:
        execution.kill(CALLER_GONE)
        run.ended = await _uncancelled(waiting)
        raise


async def _wait(execution: Execution) -> Outcome:
    try:
        return _filled(await execution.wait())
    except SpearError as exc:
        return failure(exc)


async def _uncancelled(waiting: asyncio.Future[Outcome]) -> Outcome:
    """`waiting`'s result, once it is there, whatever cancels come meanwhile (the waiter's
    cancel scope goes on cancelling; a caller's own cancel of its task comes once)."""
    while not waiting.done():
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(waiting)
    return waiting.result()


@dataclasses.dataclass(slots=True)
class Run:
    """One task this node runs (or will run, once admitted)."""

    control: ExecutionControl
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    execution: Execution | None = None  # once started: what `cancel` kills
    ended: Outcome | None = None  # its guest's end, when its waiter was cancelled (outcome_of)
    final: Task | None = None  # once its end is recorded
    waiting: anyio.CancelScope | None = None  # while it waits for room: what cancel ends
    # Its start's record, staged to be written with its end (TaskController.run) until
    # the controller knows it kept (`TaskController._start_kept`).
    staged: Staged | None = None


class RunningTasks:
    """The runs of a node's task controller, by task id, and the steps each goes through."""

    def __init__(
        self,
        store: TaskStore,
        agents: Mapping[str, WorkerAgent],
        logs: TaskLogs,
        admission: Admission,
        services: NodeServices,
    ) -> None:
        self.runs: dict[str, Run] = {}
        self.settling: dict[str, Run] = {}  # ended, their finished hooks running (`settle`)
        self._store = store
        self._agents = agents
        self._logs = logs
        self._admission = admission
        self._services = services
        self._hooks: list[FinishedHook] = []
        # Set by `cancel_all` (the node is stopping): a guest that starts after it is
        # stopped at once. A task can still reach `start` then (a forwarded one taken on a
        # connection the closing server still serves, a run admitted as the cancelled ones
        # freed room): without this it would run on, unseen by `cancel_all`, and the
        # node's task group would never close (issue 17's hang of the placement races).
        self.stopping: str | None = None

    def add_hook(self, hook: FinishedHook) -> None:
        self._hooks.append(hook)

    def remove_hook(self, hook: FinishedHook) -> None:
        self._hooks.remove(hook)

    async def start(
        self,
        task: Task,
        control: ExecutionControl,
        writers: list[TaskLogWriter],
        stdin: bytes | str | None = None,
        tee_stdout: Callable[[bytes], None] | None = None,
        tee_stderr: Callable[[bytes], None] | None = None,
    ) -> Execution | Outcome:
        """Start an admitted task in its runtime: its deadline counts from now, its output
        goes to a new log writer (added to `writers`, for `release`). Returns its
        execution, or its outcome if the runtime could not start it."""
        spec = task.spec
        if spec.timeout_s is not None:
            control.deadline = time.monotonic() + spec.timeout_s
        writer = self._logs.writer(task.id, tee_stdout, tee_stderr)
        writers.append(writer)
        started: list[Execution] = []

        def full() -> None:  # the disk filled: stop the task (from the writing thread)
            control.cancel(NO_SPACE)
            for execution in started:
                execution.kill(NO_SPACE)

        writer.on_full = full
        ctx = TaskContext(
            task=task,
            control=control,
            io=writer.io(stdin),
            agent_log=writer.agent_log,
            services=self._services,
        )
        tracing = self._services.tracing
        if tracing is not None:
            ctx.trace = tracing.run_started(task.id, task.traceparent)
        try:
            execution = await self._agents[spec.runtime.value].start(ctx)
        except SpearError as exc:
            return failure(exc)
        started.append(execution)
        if writer.disk_full:
            execution.kill(NO_SPACE)
        if self.stopping is not None:  # (after the await: cancel_all may have run meanwhile)
            control.cancel(self.stopping)
            execution.kill(self.stopping)
        return execution

    def release(self, tasks: Sequence[Task], writers: list[TaskLogWriter]) -> None:
        """Tasks done with the node: their resources freed, their log writers closed
        (and dropped from `writers`)."""
        for writer in writers:
            writer.close()
        writers.clear()
        if len(tasks) == 1:
            self._admission.release(tasks[0].spec.resources)
        elif tasks:
            self._admission.release_many([task.spec.resources for task in tasks])

    def cut_short(self, exc: BaseException) -> Outcome:
        """How a run stopped part way by `exc` ends: CANCELLED with its caller when `exc`
        is a cancel and the node is not stopping (the call running it was cancelled),
        else FAILED as lost (the node stops, or something broke)."""
        if isinstance(exc, anyio.get_cancelled_exc_class()) and self.stopping is None:
            return Outcome(TaskState.CANCELLED, EXIT_CANCELLED, CALLER_GONE)
        return Outcome(TaskState.FAILED, EXIT_LOST, STOPPED)

    async def lost(self, task_id: str, ended: Outcome) -> Task:
        """Record how a run stopped part way ended (unless the task ended meanwhile): as
        its guest ended, when that is known, else as `cut_short` says."""
        return await self._store.transition(
            task_id,
            ended.state,
            only_from=_UNFINISHED,
            reason=ended.reason,
            exit_code=ended.exit_code,
        )

    async def settle(self, finals: Sequence[Task]) -> None:
        """Tasks whose ends are recorded: the finished hooks called, one after another in
        the order they were added, then their waiters woken (so a waiter finds what the
        hooks keep, such as the task's result object).

        While the hooks run, the tasks are no longer running (a cancel finds nothing to
        stop, and a hook may cancel another task of the same wave) but a waiter still
        waits (`wait` finds them in `settling`)."""
        runs, settling = self.runs, self.settling
        for final in finals:
            run = runs.pop(final.id, None)
            if run is not None:
                run.final = final
                settling[final.id] = run
        try:
            if self._hooks:
                finished = TasksFinished(tasks=finals)
                for hook in self._hooks:
                    await hook(finished)
        finally:  # (a hook that failed leaves nobody waiting)
            for final in finals:
                run = settling.pop(final.id, None)
                if run is not None:
                    run.done.set()

    def forget(self, task_id: str) -> None:
        """A run that ended with no record of its end (the store failed): waiters woken."""
        run = self.runs.pop(task_id, None)
        if run is not None:
            run.done.set()

    async def cancel(self, task_id: str, reason: str) -> Run | None:
        """Interrupt the task's run and wait for its end; None if it does not run here."""
        run = self.runs.get(task_id)
        if run is not None:
            _interrupt(run, reason)
            await run.done.wait()
        return run

    def cancel_all(self, reason: str) -> None:
        self.stopping = reason
        for run in list(self.runs.values()):
            _interrupt(run, reason)

    async def wait(self, task_id: str) -> Run | None:
        """The task's run once it ended; None if it does not run here."""
        run = self.runs.get(task_id) or self.settling.get(task_id)
        if run is not None:
            await run.done.wait()
        return run


def _interrupt(run: Run, reason: str) -> None:
    run.control.cancel(reason)
    if run.waiting is not None:
        run.waiting.cancel()
    if run.execution is not None:
        run.execution.kill(reason)
