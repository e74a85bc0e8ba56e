"""The task controller (seed §2.1): accepts tasks, admits them against the node's
resources, runs them through their runtime's worker agent, records how they ended, and
tells the finished hooks.

One task (`run`, `submit`, `execute`) and a wave of them (`run_many`) take the same
steps once admitted (running.py): start, outcome, release, settle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import TYPE_CHECKING, TypeVar

import anyio

from spear._logging import logger
from spear.core import retries
from spear.core.models import Runtime, Task, TaskState, new_task_id
from spear.core.tasks import traced
from spear.core.tasks.admission import Admission
from spear.core.tasks.running import Run, RunningTasks, outcome_now, outcome_of
from spear.core.worker import EXIT_CANCELLED, ExecutionControl, NodeServices, Outcome
from spear.errors import InvalidArgument, NoSpace, ResourceExhausted, SpearError, StorageError
from spear.store.kv import WRITTEN

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from anyio.abc import TaskGroup

    from spear.core.logs import TaskLogs, TaskLogWriter
    from spear.core.models import FunctionSpec, Resources
    from spear.core.tasks.hooks import FinishedHook
    from spear.core.tasks.store import TaskStore
    from spear.core.worker import WorkerAgent


_CANCEL_POLL_S = 0.05  # how soon a cancel ends a retry's back-off
_END_WRITE_TRIES = 60  # a task's end written again while storage fails: ~3 minutes
_END_WRITE_MAX_WAIT_S = 3.0
_T = TypeVar("_T")
# Finished hooks run after the answer (`hooks_later`) at most this many batches at once;
# past it they are awaited again: a slow SMS slows the calls instead of piling up work.
_HOOKS_LATER_MAX = 256
# A task of a wave (run_many) that ended this long while others of its wave run on is
# finished without them, with those that ended meanwhile: one write for a wave whose
# tasks end together, and no finished task held until the slowest of its wave ends.
EARLY_FINISH_S = 0.05


class TaskController:
    """Accepts tasks, admits them against the node's resources, runs them, records them."""

    def __init__(
        self,
        store: TaskStore,
        agents: Mapping[str, WorkerAgent],
        logs: TaskLogs,
        capacity: Resources,
        node_name: str,
        services: NodeServices | None = None,
    ) -> None:
        self.store = store
        self._agents = agents
        self._admission = Admission(capacity)
        self._node = node_name
        self._logs = logs
        self._running = RunningTasks(
            store, agents, logs, self._admission, services or NodeServices()
        )
        self._task_group: TaskGroup | None = None
        self._hooks_later = 0  # batches whose finished hooks run after their answer
        # Traces (spear/tracing): None when off; each task then pays this one check.
        self.tracing = services.tracing if services is not None else None
        if self.tracing is not None:
            self.add_finished_hook(traced.ended_hook(self.tracing))

    def bind(self, task_group: TaskGroup) -> None:
        self._task_group = task_group

    def add_finished_hook(self, hook: FinishedHook) -> None:
        """Call `hook` whenever tasks have ended, after the hooks added before it."""
        self._running.add_hook(hook)

    def remove_finished_hook(self, hook: FinishedHook) -> None:
        """Stop calling `hook` (one added before; a service that stops before the node)."""
        self._running.remove_hook(hook)

    @property
    def capacity(self) -> Resources:
        return self._admission.capacity

    @property
    def free(self) -> Resources:
        return self._admission.free

    @property
    def running_count(self) -> int:
        return len(self._running.runs)

    @property
    def waiting_count(self) -> int:
        """Tasks waiting for the node's resources to free up."""
        return self._admission.waiting

    @property
    def live_ids(self) -> list[str]:
        """The tasks this node runs, or holds waiting for room (their ids; /metrics)."""
        return list(self._running.runs)

    # -- recording new tasks ------------------------------------------------------------

    async def create(
        self,
        spec: FunctionSpec,
        *,
        task_id: str | None = None,
        running: bool = False,
        previous: Task | None = None,
        later: bool = False,
    ) -> Task:
        """Check the artifact of `spec` and record a new task for it (PENDING, or RUNNING
        when `running`: admitted already, it starts at once).

        A task whose artifact is refused is recorded too, FAILED with the reason, and the
        refusal raised. `task_id`: keep an id given elsewhere (a task forwarded from
        another node). `previous`: the record of a task retried here after its node was
        lost (core/retries.py): its attempts and history go on. `later`: a new task's
        record may be written with the next write (see `run`); its run is then made here,
        holding what says when.
        """
        task = self._new_task(spec, task_id, previous.traceparent if previous else None)
        if previous is not None and previous.attempts:
            task = dataclasses.replace(
                previous, spec=spec, state=TaskState.PENDING, node=self._node
            )
        refused = await self._refusal(task)
        if refused is not None:
            raise refused[0]
        if running:
            task = task.transition(TaskState.RUNNING, task.created_at)
        staged = await self.store.create(task, fresh=task_id is None, later=later)
        if staged is not WRITTEN:
            self._running.runs[task.id] = Run(ExecutionControl(), staged=staged)
        if task.attempts:  # (an earlier attempt may have run here: the result is this one's)
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self._logs.path(task.id, "stdout"), 0)
        return task

    def _new_task(
        self, spec: FunctionSpec, task_id: str | None = None, parent: str | None = None
    ) -> Task:
        now = time.time()
        task = Task(
            id=task_id or new_task_id(),
            spec=spec,
            created_at=now,
            node=self._node,
            history=((TaskState.PENDING.value, now),),
        )
        if self.tracing is not None:  # (`parent`: a forwarded task's trace context)
            task = traced.opened(self.tracing, task, parent)
        return task

    async def _refusal(
        self, task: Task, *, must_fit: bool = False
    ) -> tuple[SpearError, Task] | None:
        """Check the task's artifact through its runtime's agent (and, `must_fit`, that it
        can ever fit this node). A refused task is recorded FAILED with the reason: the
        refusal and that record are returned."""
        spec = task.spec
        try:
            agent = self._agents.get(spec.runtime.value)
            if agent is None:
                raise InvalidArgument(
                    f"runtime {spec.runtime.value!r} is not available on this node"
                )
            if must_fit:
                self._admission.check(spec.resources)
            await agent.prepare(task)
        except SpearError as exc:
            await self.store.create(task)
            return exc, await self._fail(task, exc)
        return None

    async def _fail(self, task: Task, exc: SpearError) -> Task:
        """Record the task FAILED by `exc` before it ran, and tell the hooks."""
        final = await self.store.transition(
            task.id, TaskState.FAILED, reason=str(exc), exit_code=exc.exit_code
        )
        await self._running.settle([final])
        return final

    # -- running one task ---------------------------------------------------------------

    async def run(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | str | None = None,
        tee_stdout: Callable[[bytes], None] | None = None,
        tee_stderr: Callable[[bytes], None] | None = None,
        on_created: Callable[[Task], None] | None = None,
        task_id: str | None = None,
        hooks_later: bool = False,
    ) -> Task:
        """Run `spec` to the end in the caller's task; returns the finished task.
        `task_id`: keep an id given elsewhere (a task forwarded from another node).
        `hooks_later`: return once its end is recorded, the finished hooks (its result
        kept, which in a cluster is a commit with the SMS) running on in the node's
        task group: a forwarded call's answer does not wait for them (node/peer.py)."""
        # Admitted at once (the usual case), the task is recorded RUNNING from the start:
        # one write fewer than PENDING, then RUNNING. And a WASM guest's start is staged to
        # go with its end (one LevelDB write a call, not two: 16 gRPC callers of a daemon
        # ran 16-28% faster, benchmarks/calls_cpu.py): nobody learns of the task before its
        # end, and a guest that runs in a moment on the loop (the short task) has ended by
        # the next write. One that runs on has its start written before it is waited for
        # (`_start_written`). A node that dies meanwhile leaves no record of a task its
        # caller saw fail.
        admitted = self._admission.try_acquire(spec.resources)
        later = admitted and on_created is None and spec.runtime is Runtime.WASM
        try:
            task = await self.create(spec, task_id=task_id, running=admitted, later=later)
        except BaseException:
            if admitted:
                self._admission.release(spec.resources)
            raise
        if on_created is not None:
            on_created(task)
        return await self.execute(
            task,
            stdin=stdin,
            tee_stdout=tee_stdout,
            tee_stderr=tee_stderr,
            admitted=admitted,
            hooks_later=hooks_later,
        )

    async def submit(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | None = None,
        task_id: str | None = None,
        previous: Task | None = None,
    ) -> Task:
        """Start `spec` in the background; returns the PENDING task at once.

        A task that fits the node's free resources now (and nobody waits before it) holds
        them from here on, before its coroutine first runs: the next submission sees them
        taken (the scheduler places the next task by that)."""
        if self._task_group is None:
            raise RuntimeError("the task controller is not started")
        admitted = self._admission.try_acquire(spec.resources)
        try:
            task = await self.create(spec, task_id=task_id, previous=previous)
            self._running.runs[task.id] = Run(ExecutionControl())
            self._task_group.start_soon(self._execute_guarded, task, stdin, admitted)
        except BaseException:
            if admitted:
                self._admission.release(spec.resources)
            raise
        return task

    async def _execute_guarded(self, task: Task, stdin: bytes | None, admitted: bool) -> None:
        try:
            await self.execute(task, stdin=stdin, admitted=admitted)
        except Exception:  # a task's failure must never take the node down
            logger.exception("task {} failed in the controller", task.id)

    async def execute(
        self,
        task: Task,
        *,
        stdin: bytes | str | None = None,
        tee_stdout: Callable[[bytes], None] | None = None,
        tee_stderr: Callable[[bytes], None] | None = None,
        admitted: bool = False,
        hooks_later: bool = False,
    ) -> Task:
        """Run a recorded task to its end. `admitted`: its resources are reserved already
        (see `run` and `submit`); `hooks_later`: see `run`."""
        run = self._running.runs.get(task.id)
        if run is None:
            run = self._running.runs[task.id] = Run(ExecutionControl())
        control = run.control
        writers: list[TaskLogWriter] = []  # made once admitted: thousands may wait before
        final: Task | None = None
        try:
            while True:  # once, and again for each retry its spec allows (retries.py)
                if not admitted:
                    try:
                        with anyio.CancelScope() as run.waiting:  # (a cancel ends the wait)
                            await self._admission.acquire(task.spec.resources)
                            admitted = True
                        run.waiting = None
                    except ResourceExhausted as exc:
                        final = await self.store.transition(
                            task.id, TaskState.FAILED, reason=str(exc), exit_code=exc.exit_code
                        )
                        return final
                if control.cancelled:
                    final = await self.store.transition(
                        task.id,
                        TaskState.CANCELLED,
                        reason=control.cancel_reason,
                        exit_code=EXIT_CANCELLED,
                    )
                    return final
                if task.state is not TaskState.RUNNING:
                    task = await self._record_start(task.id)
                started = await self._running.start(
                    task, control, writers, stdin, tee_stdout, tee_stderr
                )
                if isinstance(started, Outcome):
                    outcome = started
                else:
                    run.execution = started
                    now = outcome_now(started)  # (a short guest: right here)
                    if now is None:
                        await self._start_written(run, task)
                    outcome = now if now is not None else await outcome_of(run)
                    run.execution = None
                # The guest is done with the node's CPU and memory: the next task may start
                # while this one's end is written.
                self._running.release([task], writers)
                admitted = False
                if outcome.state is TaskState.FAILED and not control.cancelled:
                    again = await self._retry(task, outcome, control, run)
                    if again is not None:
                        task = again
                        continue
                final = await self._record_end(task, outcome, run)
                return final
        except BaseException as exc:
            if final is None:
                ended = run.ended or self._running.cut_short(exc)
                with anyio.CancelScope(shield=True):
                    await self._start_kept(run, task)
                    final = await self._running.lost(task.id, ended)
            raise
        finally:
            if admitted or writers:
                self._running.release([task] if admitted else [], writers)
            if final is None:  # not even marked lost (the store failed): still let go
                self._running.forget(task.id)
            else:
                await self._settle([final], later=hooks_later)

    async def _settle(self, finals: list[Task], *, later: bool = False) -> None:
        """The tasks' ends known: finished hooks called, waiters woken; `later`: the
        hooks in the node's task group, this returning at once (while under the bound)."""
        if later and self._task_group is not None and self._hooks_later < _HOOKS_LATER_MAX:
            self._hooks_later += 1
            self._task_group.start_soon(self._settle_later, finals)
            return
        with anyio.CancelScope(shield=True):
            await self._running.settle(finals)

    async def _settle_later(self, finals: list[Task]) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self._running.settle(finals)
        finally:
            self._hooks_later -= 1

    async def _start_written(self, run: Run, task: Task) -> None:
        """The record of a run's start, staged by `run` to go with its end, written now:
        its guest runs on, and is waited for. (Again while storage fails: see
        `_start_kept`.)"""
        staged = run.staged
        if staged is None:
            return
        try:
            await staged.written()
            run.staged = None
            return
        except (StorageError, NoSpace):  # (it went with a batch that failed)
            pass

        async def write() -> None:
            await self._start_kept(run, task)

        await _task_written(write, task.id, "start")

    async def _start_kept(self, run: Run, task: Task) -> None:
        """Before each write of a run that follows its start: a start staged by `run`
        (to go with its end) whose write failed is written again first (it went with the
        failed batch: the record is not there)."""
        staged = run.staged
        if staged is None:
            return
        if staged.lost():
            await self.store.create(task, fresh=True)
            run.staged = None

    async def _record_start(self, task_id: str) -> Task:
        """Write that the admitted task runs (again while the node's storage fails): a
        start that failed once would leave it PENDING here for ever, run by nobody."""

        async def write() -> Task:
            return await self.store.transition(task_id, TaskState.RUNNING)

        return await _task_written(write, task_id, "start")

    async def _record_end(self, task: Task, outcome: Outcome, run: Run) -> Task:
        """Write how the task ended (again while the node's storage fails)."""

        async def write() -> Task:
            await self._start_kept(run, task)
            return await self.store.transition(
                task.id, outcome.state, exit_code=outcome.exit_code, reason=outcome.reason
            )

        return await _task_written(write, task.id, "end")

    async def _retry(
        self, task: Task, outcome: Outcome, control: ExecutionControl, run: Run
    ) -> Task | None:
        """The task recorded PENDING for its next attempt here, once its back-off passed,
        if its spec retries this failure (None: it ends as it failed)."""
        code = outcome.exit_code if outcome.exit_code is not None else 1
        reason = outcome.reason or f"exit status {code}"
        if not retries.should_retry(task, code, reason):
            return None
        now = time.time()

        async def write() -> Task:
            await self._start_kept(run, task)
            return await self.store.update(
                task.id, lambda t: retries.next_attempt(t, code, reason, now, node=self._node)
            )

        again = await _task_written(write, task.id, "next attempt")
        # The result is the last attempt's output alone (stderr keeps every attempt's).
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self._logs.path(task.id, "stdout"), 0)
        logger.bind(task_id=task.id).info(
            "task {} failed ({}): attempt {} of {} here",
            task.id,
            reason,
            again.attempts + 1,
            task.spec.max_retries + 1,
        )
        wait = retries.backoff_s(again.attempts)
        for _ in range(math.ceil(wait / _CANCEL_POLL_S)):  # (a cancel ends the wait)
            if control.cancelled:
                break
            await anyio.sleep(_CANCEL_POLL_S)
        return again

    # -- running many -------------------------------------------------------------------

    async def run_many(
        self,
        specs: Sequence[FunctionSpec],
        task_ids: Sequence[str] | None = None,
        refusals: dict[str, SpearError] | None = None,
        hooks_later: bool = False,
        parents: Sequence[str] | None = None,
        on_admitted: Callable[[Task], None] | None = None,
    ) -> list[Task]:
        """Run many tasks to their ends; returns them finished, in order.

        What `run` does for each, with the bookkeeping shared: the tasks that fit the
        node's free resources are recorded in one write, run (short guests one after
        another right here, the others on their threads at once), and their ends written
        in one write; then the next that fit, as soon as room frees up (not only when
        the whole of the last wave ended), until all ran. A task whose artifact is
        refused is recorded FAILED, as `run` records it (and, given `refusals`, its id
        mapped there to the refusal). `task_ids` (one per spec) keeps ids given elsewhere:
        tasks another node forwarded here; `parents` (one per spec) their trace contexts.
        `hooks_later`: as for `run`, per wave (the next wave does not wait for the last
        one's results to be kept). `on_admitted(task)`: each task's room is reserved now.
        """
        if not specs:
            return []
        finished: dict[str, Task] = {}
        ready: list[Task] = []
        order: list[str] = []
        for i, spec in enumerate(specs):
            task = self._new_task(
                spec,
                None if task_ids is None else task_ids[i],
                None if parents is None else parents[i] or None,
            )
            order.append(task.id)
            refused = await self._refusal(task, must_fit=True)
            if refused is not None:
                finished[task.id] = refused[1]
                if refusals is not None:
                    refusals[task.id] = refused[0]
            else:
                ready.append(task)

        try:
            await self._run_waves(ready, finished, on_admitted, hooks_later)
        except BaseExceptionGroup as group:  # (a wave's failure, as a wave run alone raises)
            raise _first(group) from group
        return [finished[task_id] for task_id in order]

    async def _run_waves(
        self,
        ready: list[Task],
        finished: dict[str, Task],
        on_admitted: Callable[[Task], None] | None,
        hooks_later: bool,
    ) -> None:
        """`ready` run in waves (`_run_wave`), their ends put in `finished`. A wave whose
        guests run on, on their threads, is waited for beside the next waves, which start
        in the room its ended tasks free; one run right here is over when it returns."""
        async with anyio.create_task_group() as waves:

            def detach(rest: Callable[[], Awaitable[list[Task]]]) -> None:
                async def finish() -> None:
                    for task in await rest():
                        finished[task.id] = task

                waves.start_soon(finish)

            while ready:
                # In order, as many as fit: the first waits its turn while the node is full
                # (with earlier waves or other work), the rest only fill the room left.
                await self._admission.acquire(ready[0].spec.resources)
                wave = [ready[0]]
                for task in ready[1:]:
                    if not self._admission.try_acquire(task.spec.resources):
                        break
                    wave.append(task)
                if on_admitted is not None:
                    for task in wave:
                        on_admitted(task)
                ready = ready[len(wave) :]
                ended = await self._run_wave(
                    wave, hooks_later=hooks_later, detach=detach if ready else None
                )
                for task in ended or ():
                    finished[task.id] = task

    async def _run_wave(
        self,
        admitted: list[Task],
        *,
        hooks_later: bool = False,
        detach: Callable[[Callable[[], Awaitable[list[Task]]]], None] | None = None,
    ) -> list[Task] | None:
        """Record, run and finish tasks whose resources are reserved already.

        Their starts are one write, and so are their ends when they end together (all of
        them when each runs right here). Those that ended `EARLY_FINISH_S` before the
        others of their wave (on their threads) are finished without them: their ends
        recorded in one write, their room freed, their waiters woken, not held until the
        slowest of the wave ends. With `detach`, a wave whose guests run on is handed to
        it to wait for (a callable that returns the wave's ends), and None returned."""
        tasks = [task.transition(TaskState.RUNNING, task.created_at) for task in admitted]
        ends: list[tuple[Task, Outcome]] = []
        writers: list[TaskLogWriter] = []
        try:
            marker = await self.store.create_wave(tasks)
        except BaseException:
            self._running.release(admitted, writers)
            raise
        left = {task.id: task for task in admitted}  # (not finished yet)
        writer_of: dict[str, TaskLogWriter] = {}
        finals: list[Task] = []

        async def finish_part(part: list[tuple[Task, Outcome]]) -> None:
            finished = await self._finish_wave_part(marker, part)
            for task, _ in part:
                writer = writer_of.pop(task.id)
                writer.close()
                writers.remove(writer)
            self._running.release([left.pop(task.id) for task, _ in part], [])
            finals.extend(finished)
            await self._settle(finished, later=hooks_later)

        async def abort(exc: BaseException) -> None:  # the wave stopped part way by `exc`
            with anyio.CancelScope(shield=True):
                done = {task.id for task, _ in ends}
                cut_short = self._running.cut_short(exc)
                for task_id, task in left.items():
                    if task_id not in done:
                        run = self._running.runs.get(task_id)  # (stopped with the caller)
                        ended = run.ended if run is not None else None
                        ends.append((task, ended or cut_short))
                await self._end_wave(list(left.values()), marker, ends, writers)

        async def rest(later: list[tuple[Task, Run]]) -> list[Task]:
            try:
                if later:  # guests on threads, all at once
                    await wait_for(later)
            except BaseException as exc:
                await abort(exc)
                raise
            finals.extend(
                await self._end_wave(
                    list(left.values()), marker, ends, writers, hooks_later=hooks_later
                )
            )
            return finals

        async def wait_for(later: list[tuple[Task, Run]]) -> None:
            running = len(later)
            flushing = anyio.CancelScope()

            async def wait(task: Task, run: Run) -> None:
                nonlocal running
                ends.append((task, await outcome_of(run)))
                running -= 1
                if not running:  # (the rest end with the wave, dropping its marker)
                    flushing.cancel()

            async def flush() -> None:  # what ended while others run on
                with flushing:
                    while True:
                        await anyio.sleep(EARLY_FINISH_S)
                        if ends:
                            part = ends[:]
                            ends.clear()
                            with anyio.CancelScope(shield=True):
                                await finish_part(part)

            async with anyio.create_task_group() as tg:
                for task, run in later:
                    tg.start_soon(wait, task, run)
                tg.start_soon(flush)

        later: list[tuple[Task, Run]] = []
        try:
            for task in tasks:
                control = ExecutionControl()
                started = await self._running.start(task, control, writers)
                writer_of[task.id] = writers[-1]
                if isinstance(started, Outcome):
                    ends.append((task, started))
                    continue
                outcome = outcome_now(started)
                if outcome is None:
                    # Running on: it can be cancelled and waited for. (One run right here
                    # ended before anything else could look for it.)
                    run = self._running.runs[task.id] = Run(control, execution=started)
                    later.append((task, run))
                else:
                    ends.append((task, outcome))
        except BaseException as exc:
            await abort(exc)
            raise
        if later and detach is not None:
            detach(lambda: rest(later))
            return None
        return await rest(later)

    async def _finish_wave_part(self, marker: str, part: list[tuple[Task, Outcome]]) -> list[Task]:
        async def write() -> list[Task]:
            return await self.store.finish_wave(marker, part, last=False)

        return await _until_written(write, lambda exc: logger.warning(
            "the ends of {} tasks are not written yet ({}): trying again", len(part), exc
        ))  # fmt: skip

    async def _end_wave(
        self,
        admitted: list[Task],
        marker: str,
        ends: list[tuple[Task, Outcome]],
        writers: list[TaskLogWriter],
        *,
        hooks_later: bool = False,
    ) -> list[Task]:
        self._running.release(admitted, writers)

        async def write() -> list[Task]:
            return await self.store.finish_wave(marker, ends)

        finals = await _until_written(write, lambda exc: logger.warning(
            "the ends of {} tasks are not written yet ({}): trying again", len(ends), exc
        ))  # fmt: skip
        await self._settle(finals, later=hooks_later)
        return finals

    # -- cancelling and waiting ---------------------------------------------------------

    async def cancel(self, task_id: str, reason: str = "cancelled") -> Task:
        """Stop a task: a running one is interrupted, a pending one never starts."""
        run = await self._running.cancel(task_id, reason)
        if run is not None:
            return run.final or await self.store.get(task_id)
        return await self.store.transition(
            task_id,
            TaskState.CANCELLED,
            only_from=frozenset({TaskState.PENDING}),
            reason=reason,
            exit_code=EXIT_CANCELLED,
        )

    async def wait(self, task_id: str) -> Task:
        run = await self._running.wait(task_id)
        if run is not None and run.final is not None:
            return run.final
        return await self.store.get(task_id)

    async def cancel_all(self, reason: str) -> None:
        self._running.cancel_all(reason)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


async def _task_written(write: Callable[[], Awaitable[_T]], task_id: str, what: str) -> _T:
    """`_until_written` of one task's `what` (its start, end or next attempt), each try
    that failed said in the task's log."""
    log = logger.bind(task_id=task_id)
    return await _until_written(write, lambda exc: log.warning(
        "task {}: its {} is not written yet ({}): trying again", task_id, what, exc
    ))  # fmt: skip


async def _until_written(
    write: Callable[[], Awaitable[_T]], not_yet: Callable[[SpearError], None]
) -> _T:
    """`write` tasks' starts, retries or ends; while the node's storage fails (or its
    disk is full), again after a back-off, for up to a few minutes: they are known only
    here."""
    for attempt in range(_END_WRITE_TRIES):
        try:
            return await write()
        except (StorageError, NoSpace) as exc:
            if attempt + 1 == _END_WRITE_TRIES:
                raise
            not_yet(exc)
            await anyio.sleep(min(_END_WRITE_MAX_WAIT_S, 0.1 * 2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover
