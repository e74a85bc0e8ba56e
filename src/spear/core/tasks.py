"""Task records in the KV, and the task controller that runs them (seed §2.1, §4).

Keys: `tasks/<id>` holds a task's JSON; `active/<id>` marks a task not yet finished and
names the process that owns it, so a task whose process died (kill -9, power loss) is
found and marked FAILED ("lost") by the next node that opens the data dir, instead of
staying RUNNING forever. Every write is a compare-and-swap on the record's version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from spear._logging import logger
from spear.core.models import FunctionSpec, Resources, Task, TaskState, new_task_id
from spear.core.worker import EXIT_CANCELLED, EXIT_LOST, ExecutionControl, Outcome, TaskContext
from spear.errors import InvalidArgument, NotFound, ResourceExhausted, SpearError
from spear.store.kv import Write

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from anyio.abc import TaskGroup

    from spear.core.logs import TaskLogs, TaskLogWriter
    from spear.core.worker import Execution, WorkerAgent
    from spear.store.kv import KV

_TASKS = "tasks/"
_WATCH_RECHECK_S = 1.0  # a watcher re-reads the record when no change came for this long
_ACTIVE = "active/"
_UNFINISHED = frozenset({TaskState.PENDING, TaskState.RUNNING})
_STOPPED = "node stopped while the task ran"  # the reason of a task the node left running
_WAVE = "wave-"  # active/wave-<first task id>: the marker of a wave's tasks (run_many)


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (guards against pid reuse), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"


_SELF = {"pid": os.getpid(), "start": _process_start_time(os.getpid())}


def _owner_alive(owner: Mapping[str, Any]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    start = _process_start_time(pid)
    return start is not None and (start == "?" or owner.get("start") in (None, "?", start))


class TaskStore:
    """Task records in a KV, each change a compare-and-swap."""

    def __init__(self, kv: KV) -> None:
        self._kv = kv
        # The record this store last wrote for each unfinished task, with its version: a
        # transition that reads back that same version reuses it instead of decoding JSON.
        self._written: dict[str, tuple[int, Task]] = {}

    def _remember(self, task: Task, version: int) -> None:
        if task.state.terminal:
            self._written.pop(task.id, None)
            return
        if len(self._written) >= 100_000:  # tasks another process finished: forget them
            self._written.clear()
        self._written[task.id] = (version, task)

    async def create(self, task: Task, *, fresh: bool = False) -> None:
        """Record a new task and mark it unfinished, in one atomic write. Raises if its id
        exists already, unless `fresh`: the id is a new one made here (`new_task_id`, see
        `create_wave`), written without reading it back first."""
        version = await self._kv.commit(_creation(task, fresh))
        if version < 0:
            raise InvalidArgument(f"task {task.id} exists already")
        self._remember(task, version)

    async def create_wave(self, tasks: Sequence[Task]) -> str:
        """Record new tasks and one unfinished marker naming them all, in one atomic
        write; returns the marker's key, for `finish_wave`.

        Their ids must be new ones made here (`new_task_id`, unique in this process and
        unlike another's but by a 2^-40 chance): unlike `create`, which may be given an
        id from elsewhere, this does not read each back to see that it is new.
        """
        marker = f"{_ACTIVE}{_WAVE}{tasks[0].id}"
        writes = [Write(_TASKS + task.id, _encode(task)) for task in tasks]
        owner = {**_SELF, "node": tasks[0].node, "tasks": [task.id for task in tasks]}
        writes.append(Write(marker, orjson.dumps(owner)))
        version = await self._kv.commit(writes)
        for task in tasks:
            self._remember(task, version)
        return marker

    async def finish_wave(self, marker: str, ends: Sequence[tuple[Task, Outcome]]) -> list[Task]:
        """Move the tasks of a wave (`create_wave`) to how they ended and drop its marker,
        in one atomic write; if another writer changed one meanwhile, each goes through
        `transition`, and the marker goes last."""
        news: list[Task] = []
        writes: list[Write] = []
        for task, outcome in ends:
            known = self._written.get(task.id)
            if known is None or known[1].state.terminal:
                break
            new = known[1].transition(
                outcome.state, exit_code=outcome.exit_code, reason=outcome.reason
            )
            news.append(new)
            writes.append(Write(_TASKS + task.id, _encode(new), known[0]))
        else:
            writes.append(Write(marker, None))
            version = await self._kv.commit(writes)
            if version >= 0:
                for new in news:
                    self._remember(new, version)
                return news
        out = [
            await self.transition(
                task.id, outcome.state, exit_code=outcome.exit_code, reason=outcome.reason
            )
            for task, outcome in ends
        ]
        await self._kv.delete(marker)
        return out

    async def get(self, task_id: str) -> Task:
        entry = await self._kv.get(_TASKS + task_id)
        if entry is None:
            raise NotFound(f"no such task: {task_id}")
        return _decode(entry.value)

    async def transition(
        self,
        task_id: str,
        state: TaskState,
        *,
        only_from: frozenset[TaskState] | None = None,
        **changes: Any,
    ) -> Task:
        """Move a task to `state`, retrying if another writer got there in between.

        The record this store wrote last is tried first without reading it back; a
        compare-and-swap that finds it changed since reads it, and tries again.
        """
        known = self._written.get(task_id)
        while True:
            if known is not None:
                version, task = known
                known = None
            else:
                entry = await self._kv.get(_TASKS + task_id)
                if entry is None:
                    raise NotFound(f"no such task: {task_id}")
                version, task = entry.version, _decode(entry.value)
            if only_from is not None and task.state not in only_from:
                return task
            new = task.transition(state, **changes)
            if state.terminal:
                new_version = await self._kv.commit(_ending(new, version))
            else:
                new_version = await self._kv.compare_and_swap(
                    _TASKS + task_id, _encode(new), version
                )
            if new_version >= 0:
                self._remember(new, new_version)
                return new

    async def list_tasks(
        self, state: TaskState | None = None, limit: int | None = None
    ) -> list[Task]:
        """Tasks newest first, optionally only those in `state`."""
        if state is None:
            entries = await self._kv.scan(_TASKS, reverse=True, limit=limit)
            return [_decode(e.value) for e in entries]
        out: list[Task] = []
        for entry in await self._kv.scan(_TASKS, reverse=True):
            task = _decode(entry.value)
            if task.state is state:
                out.append(task)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        """The task as it is now, then after each state change, ending once it is terminal."""
        import asyncio
        import contextlib

        from spear.store.kv import EventKind

        events = self._kv.watch(_TASKS + task_id)
        # Register the watcher before reading the current record, so no change falls between.
        pending = asyncio.ensure_future(anext(events))
        try:
            await asyncio.sleep(0)
            task = await self.get(task_id)
            yield task
            while not task.state.terminal:
                done, _ = await asyncio.wait({pending}, timeout=_WATCH_RECHECK_S)
                if done:
                    event = pending.result()
                    pending = asyncio.ensure_future(anext(events))
                    if event.kind is EventKind.DELETE:
                        raise NotFound(f"task {task_id} was deleted")
                    new = _decode(event.value)
                else:  # a KV whose watch starts late (a remote one) may have missed a change
                    new = await self.get(task_id)
                if len(new.history) > len(task.history):
                    task = new
                    yield task
        finally:
            pending.cancel()
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await pending

    async def recover_lost(self) -> list[str]:
        """Mark FAILED every unfinished task whose owning process is gone."""
        lost = []
        for entry in await self._kv.scan(_ACTIVE):
            name = entry.key[len(_ACTIVE) :]
            try:
                owner = json.loads(entry.value)
            except ValueError:
                owner = {}
            if _owner_alive(owner):
                continue
            ids = [name]
            if name.startswith(_WAVE):
                tasks = owner.get("tasks") if isinstance(owner, dict) else None
                ids = [str(t) for t in tasks] if isinstance(tasks, list) else []
            for task_id in ids:
                try:
                    task = await self.transition(
                        task_id,
                        TaskState.FAILED,
                        only_from=_UNFINISHED,
                        reason="lost: the process running it exited without finishing it",
                        exit_code=EXIT_LOST,
                    )
                except NotFound:
                    continue
                if task.exit_code == EXIT_LOST:
                    lost.append(task_id)
            await self._kv.delete(entry.key)
        return lost


# A spec never changes, and encoding one was most of the cost of writing a task record,
# three times per task: keep the JSON of the specs seen last (by value: a spec that came
# over the wire is a new object each time) and splice it into each record as is.
_SPEC_JSON: dict[FunctionSpec, orjson.Fragment] = {}
_OWNER: dict[str | None, bytes] = {}


_last_spec: tuple[Any, Any] = (None, None)  # the spec encoded last (mostly the same object)


def _encode(task: Task) -> bytes:
    global _last_spec
    spec = task.spec
    last = _last_spec
    if spec is last[0]:
        fragment = last[1]
    else:
        fragment = _SPEC_JSON.get(spec)
        if fragment is None:
            if len(_SPEC_JSON) >= 4096:
                _SPEC_JSON.clear()
            fragment = _SPEC_JSON[spec] = orjson.Fragment(orjson.dumps(spec.to_json()))
        _last_spec = (spec, fragment)
    return orjson.dumps(
        {
            "id": task.id,
            "spec": fragment,
            "state": task.state._value_,
            "created_at": task.created_at,
            "started_at": task.started_at,
            "finished_at": task.finished_at,
            "exit_code": task.exit_code,
            "reason": task.reason,
            "node": task.node,
            "attempts": task.attempts,
            "history": task.history,
        }
    )


def _creation(task: Task, fresh: bool) -> list[Write]:
    """The writes that record a new task: its record (only if absent, unless `fresh`), its
    marker."""
    owner = _OWNER.get(task.node)
    if owner is None:
        owner = _OWNER[task.node] = orjson.dumps({**_SELF, "node": task.node})
    record = Write(_TASKS + task.id, _encode(task), None if fresh else 0)
    return [record, Write(_ACTIVE + task.id, owner)]


def _ending(task: Task, version: int) -> list[Write]:
    """The writes that record a task's end over its record at `version`: the record, and
    its unfinished marker gone, in one commit."""
    return [Write(_TASKS + task.id, _encode(task), version), Write(_ACTIVE + task.id, None)]


def _decode(raw: bytes) -> Task:
    return Task.from_json(orjson.loads(raw))


class _Admission:
    """Reserves CPU and memory for running tasks; waiters are served first in, first out."""

    def __init__(self, capacity: Resources) -> None:
        self.capacity = capacity
        self.used = Resources(0, 0)
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
        self.release(Resources(cpu, memory))

    def release(self, need: Resources) -> None:
        self.used = self.used - need
        while self._waiters and self._waiters[0][0].fits_in(self.free):
            granted, event = self._waiters.popleft()
            self.used = self.used + granted
            event.set()


@dataclasses.dataclass(slots=True)
class _Running:
    control: ExecutionControl
    done: asyncio.Event
    execution: Execution | None = None
    final: Task | None = None


class TaskController:
    """Accepts tasks, admits them against the node's resources, runs them, records them."""

    def __init__(
        self,
        store: TaskStore,
        agents: Mapping[str, WorkerAgent],
        logs: TaskLogs,
        capacity: Resources,
        node_name: str,
        services: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self._agents = agents
        self._logs = logs
        self._admission = _Admission(capacity)
        self._node = node_name
        self._services = services if services is not None else {}
        self._running: dict[str, _Running] = {}
        self._task_group: TaskGroup | None = None
        self.finished_hooks: list[Callable[[Task], Any]] = []

    def bind(self, task_group: TaskGroup) -> None:
        self._task_group = task_group

    @property
    def capacity(self) -> Resources:
        return self._admission.capacity

    @property
    def free(self) -> Resources:
        return self._admission.free

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def waiting_count(self) -> int:
        """Tasks waiting for the node's resources to free up."""
        return self._admission.waiting

    async def create(
        self, spec: FunctionSpec, *, task_id: str | None = None, running: bool = False
    ) -> Task:
        """Check the artifact of `spec` and record a new task for it (PENDING, or RUNNING
        when `running`: admitted already, it starts at once).

        A task whose artifact is refused is recorded too, FAILED with the reason, and the
        refusal raised. `task_id`: keep an id given elsewhere (a task forwarded from
        another node).
        """
        task = self._new_task(spec, task_id)
        refused = await self._refusal(task)
        if refused is not None:
            raise refused[0]
        if running:
            task = task.transition(TaskState.RUNNING, task.created_at)
        await self.store.create(task, fresh=task_id is None)
        return task

    def _new_task(self, spec: FunctionSpec, task_id: str | None = None) -> Task:
        now = time.time()
        return Task(
            id=task_id or new_task_id(),
            spec=spec,
            created_at=now,
            node=self._node,
            history=((TaskState.PENDING.value, now),),
        )

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
            return exc, await self._fail(task, str(exc), exc.exit_code)
        return None

    async def _fail(self, task: Task, reason: str, exit_code: int) -> Task:
        final = await self.store.transition(
            task.id, TaskState.FAILED, reason=reason, exit_code=exit_code
        )
        await self._finished(final)
        return final

    async def run(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | str | None = None,
        tee_stdout: Callable[[bytes], None] | None = None,
        tee_stderr: Callable[[bytes], None] | None = None,
        on_created: Callable[[Task], None] | None = None,
    ) -> Task:
        """Run `spec` to the end in the caller's task; returns the finished task."""
        # Admitted at once (the usual case), the task is recorded RUNNING from the start:
        # one write fewer than PENDING, then RUNNING.
        admitted = self._admission.try_acquire(spec.resources)
        try:
            task = await self.create(spec, running=admitted)
        except BaseException:
            if admitted:
                self._admission.release(spec.resources)
            raise
        if on_created is not None:
            on_created(task)
        return await self.execute(
            task, stdin=stdin, tee_stdout=tee_stdout, tee_stderr=tee_stderr, admitted=admitted
        )

    async def run_many(self, specs: Sequence[FunctionSpec]) -> list[Task]:
        """Run many tasks to their ends; returns them finished, in order.

        What `run` does for each, with the bookkeeping shared: the tasks that fit the
        node's free resources are recorded in one write, run (short guests one after
        another right here, the others on their threads at once), and their ends written
        in one write; then the next that fit, until all ran. A task whose artifact is
        refused is recorded FAILED, as `run` records it.
        """
        if not specs:
            return []
        finished: dict[str, Task] = {}
        ready: list[Task] = []
        order: list[str] = []
        for spec in specs:
            task = self._new_task(spec)
            order.append(task.id)
            refused = await self._refusal(task, must_fit=True)
            if refused is not None:
                finished[task.id] = refused[1]
            else:
                ready.append(task)
        while ready:
            wave = []
            for task in ready:  # in order, as many as fit now
                if not self._admission.try_acquire(task.spec.resources):
                    break
                wave.append(task)
            if not wave:  # the node is full with other work: wait for room, in turn
                await self._admission.acquire(ready[0].spec.resources)
                wave.append(ready[0])
            ready = ready[len(wave) :]
            for task in await self._run_wave(wave):
                finished[task.id] = task
        return [finished[task_id] for task_id in order]

    async def _run_wave(self, admitted: list[Task]) -> list[Task]:
        """Record, run and finish tasks whose resources are reserved already."""
        tasks = [task.transition(TaskState.RUNNING, task.created_at) for task in admitted]
        ends: list[tuple[Task, Outcome]] = []
        writers: list[TaskLogWriter] = []
        try:
            marker = await self.store.create_wave(tasks)
        except BaseException:
            self._admission.release_many([task.spec.resources for task in admitted])
            raise
        try:
            later: list[tuple[Task, Execution]] = []
            for task in tasks:
                control = ExecutionControl()
                if task.spec.timeout_s is not None:
                    control.deadline = time.monotonic() + task.spec.timeout_s
                writer = self._logs.writer(task.id)
                writers.append(writer)
                try:
                    execution = await self._start(task, control, writer, None)
                    outcome = execution.run_now()
                except SpearError as exc:
                    outcome = Outcome(TaskState.FAILED, exc.exit_code, str(exc))
                if outcome is None:
                    # Running on: it can be cancelled and waited for. (One run right here
                    # ended before anything else could look for it.)
                    self._running[task.id] = _Running(control, asyncio.Event(), execution)
                    later.append((task, execution))
                else:
                    ends.append((task, outcome))
            if later:  # guests on threads, all at once

                async def wait(task: Task, execution: Execution) -> None:
                    try:
                        ends.append((task, await execution.wait()))
                    except SpearError as exc:
                        ends.append((task, Outcome(TaskState.FAILED, exc.exit_code, str(exc))))

                async with anyio.create_task_group() as tg:
                    for task, execution in later:
                        tg.start_soon(wait, task, execution)
        except BaseException:
            with anyio.CancelScope(shield=True):
                done = {task.id for task, _ in ends}
                for task in tasks:
                    if task.id not in done:
                        ends.append((task, Outcome(TaskState.FAILED, EXIT_LOST, _STOPPED)))
                await self._end_wave(admitted, marker, ends, writers)
            raise
        return await self._end_wave(admitted, marker, ends, writers)

    async def _start(
        self,
        task: Task,
        control: ExecutionControl,
        writer: TaskLogWriter,
        stdin: bytes | str | None,
    ) -> Execution:
        """Start the task's execution in its runtime, its output going to `writer`."""
        ctx = TaskContext(
            task=task,
            control=control,
            io=writer.io(stdin),
            agent_log=writer.agent_log,
            services=self._services,
        )
        return await self._agents[task.spec.runtime.value].start(ctx)

    async def _end_wave(
        self,
        admitted: list[Task],
        marker: str,
        ends: list[tuple[Task, Outcome]],
        writers: list[TaskLogWriter],
    ) -> list[Task]:
        for writer in writers:
            writer.close()
        self._admission.release_many([task.spec.resources for task in admitted])
        finals = await self.store.finish_wave(marker, ends)
        for final in finals:
            running = self._running.pop(final.id, None)
            if running is not None:
                running.final = final
                running.done.set()
        with anyio.CancelScope(shield=True):
            await self._finished_many(finals)
        return finals

    async def submit(
        self, spec: FunctionSpec, *, stdin: bytes | None = None, task_id: str | None = None
    ) -> Task:
        """Start `spec` in the background; returns the PENDING task at once.

        A task that fits the node's free resources now (and nobody waits before it) holds
        them from here on, before its coroutine first runs: the next submission sees them
        taken (the scheduler places the next task by that)."""
        if self._task_group is None:
            raise RuntimeError("the task controller is not started")
        admitted = self._admission.try_acquire(spec.resources)
        try:
            task = await self.create(spec, task_id=task_id)
            self._running[task.id] = _Running(ExecutionControl(), asyncio.Event())
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
    ) -> Task:
        """Run a recorded task to its end. `admitted`: its resources are reserved already
        (see `run` and `submit`)."""
        running = self._running.get(task.id)
        if running is None:
            running = self._running[task.id] = _Running(ExecutionControl(), asyncio.Event())
        control = running.control
        spec = task.spec
        writer = None  # made once the task is admitted: thousands may wait before that
        final: Task | None = None
        try:
            if not admitted:
                try:
                    await self._admission.acquire(spec.resources)
                    admitted = True
                except ResourceExhausted as exc:
                    final = await self._fail(task, str(exc), exc.exit_code)
                    return final
            if control.cancelled:
                final = await self.store.transition(
                    task.id,
                    TaskState.CANCELLED,
                    reason=control.cancel_reason,
                    exit_code=EXIT_CANCELLED,
                )
                return final
            if spec.timeout_s is not None:
                control.deadline = time.monotonic() + spec.timeout_s
            if task.state is not TaskState.RUNNING:
                await self.store.transition(task.id, TaskState.RUNNING)
            writer = self._logs.writer(task.id, tee_stdout, tee_stderr)
            try:
                execution = running.execution = await self._start(task, control, writer, stdin)
                outcome = await execution.wait()
            except SpearError as exc:
                outcome = Outcome(TaskState.FAILED, exc.exit_code, str(exc))
            # The guest is done with the node's CPU and memory: the next task may start
            # while this one's end is written.
            self._admission.release(spec.resources)
            admitted = False
            final = await self.store.transition(
                task.id, outcome.state, exit_code=outcome.exit_code, reason=outcome.reason
            )
            return final
        except BaseException:
            if final is None:
                with anyio.CancelScope(shield=True):
                    final = await self.store.transition(
                        task.id,
                        TaskState.FAILED,
                        only_from=frozenset({TaskState.PENDING, TaskState.RUNNING}),
                        reason=_STOPPED,
                        exit_code=EXIT_LOST,
                    )
            raise
        finally:
            if writer is not None:
                writer.close()
            if admitted:
                self._admission.release(spec.resources)
            running.final = final
            running.done.set()
            self._running.pop(task.id, None)
            if final is not None:
                with anyio.CancelScope(shield=True):
                    await self._finished(final)

    async def _finished_many(self, tasks: list[Task]) -> None:
        """The finished-task hooks for many tasks: a hook that takes them all at once
        (`hook.many`) does; the others are called for each, in order."""
        for hook in self.finished_hooks:
            many = getattr(hook, "many", None)
            if many is not None:
                await many(tasks)
                continue
            for task in tasks:
                result = hook(task)
                if hasattr(result, "__await__"):
                    await result

    async def _finished(self, task: Task) -> None:
        await self._finished_many([task])

    async def cancel(self, task_id: str, reason: str = "cancelled") -> Task:
        """Stop a task: a running one is interrupted, a pending one never starts."""
        running = self._running.get(task_id)
        if running is not None:
            running.control.cancel(reason)
            if running.execution is not None:
                running.execution.kill(reason)
            await running.done.wait()
            return running.final or await self.store.get(task_id)
        return await self.store.transition(
            task_id,
            TaskState.CANCELLED,
            only_from=frozenset({TaskState.PENDING}),
            reason=reason,
            exit_code=EXIT_CANCELLED,
        )

    async def wait(self, task_id: str) -> Task:
        running = self._running.get(task_id)
        if running is not None:
            await running.done.wait()
            if running.final is not None:
                return running.final
        return await self.store.get(task_id)

    async def cancel_all(self, reason: str) -> None:
        for running in list(self._running.values()):
            running.control.cancel(reason)
            if running.execution is not None:
                running.execution.kill(reason)
