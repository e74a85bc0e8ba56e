"""The SPEARlet: one node's controllers under one task group (seed §2.1)."""

from __future__ import annotations

import contextlib
import functools
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Self

import anyio

from spear._logging import logger
from spear.core.logs import prune_task_logs
from spear.core.results import serving_objects
from spear.core.tasks import TaskController, TaskStore
from spear.core.worker import NodeServices
from spear.errors import SpearError, Unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from spear.config import Settings
    from spear.core.logs import TaskLogs
    from spear.core.models import FunctionSpec, Resources, Task, TaskState
    from spear.core.streams import TaskStream
    from spear.core.worker import WorkerAgent
    from spear.store.kv import KV
    from spear.store.objects import ObjectStore


class NodeState(StrEnum):
    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class Spearlet:
    """A node: task controller, worker agents, task logs and KV, started and stopped as one."""

    def __init__(
        self,
        settings: Settings,
        kv: KV,
        agents: Mapping[str, WorkerAgent],
        logs: TaskLogs,
        capacity: Resources,
        services: NodeServices | None = None,
        closers: list[Callable[[], Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.agents = dict(agents)
        self.logs = logs
        self.services = services if services is not None else NodeServices()
        self.tasks_store = TaskStore(kv)
        self.controller = TaskController(
            self.tasks_store, self.agents, logs, capacity, settings.node_name, self.services
        )
        self.state = NodeState.NEW
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._closers = closers or []
        # On a cluster member: `await forget_tasks(ids)` deletes finished tasks' records at
        # the SMS once this node deleted its own copies (core/retention.py); else None.
        self.forget_tasks: Callable[[list[str]], Awaitable[object]] | None = None
        if self.services.tracing is not None:  # its last spans exported as the node stops
            shutdown = self.services.tracing.shutdown
            self._closers.insert(0, functools.partial(anyio.to_thread.run_sync, shutdown))

    @property
    def name(self) -> str:
        return self.settings.node_name

    async def start(self) -> None:
        if self.state is not NodeState.NEW:
            return
        stack = contextlib.AsyncExitStack()
        try:
            for agent in self.agents.values():
                await stack.enter_async_context(agent)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self.controller.bind(self._tg)
            if self.services.objects is not None:  # first: a result is kept before all else
                objects = serving_objects(self, self.services.objects, self._tg)
                await stack.enter_async_context(objects)
            for service in self.services.with_background_work():  # streams, models
                await stack.enter_async_context(service.serve_node(self, self._tg))
            await stack.enter_async_context(self._pruning_logs(self._tg))
            lost = await self.tasks_store.recover_lost()
            if lost:
                logger.warning("marked {} unfinished task(s) of dead processes as lost", len(lost))
        except BaseException:
            await stack.aclose()
            await self._close_resources()
            raise
        self._stack = stack
        self.state = NodeState.RUNNING
        logger.debug("node {} started", self.name)

    @contextlib.asynccontextmanager
    async def _pruning_logs(self, task_group: TaskGroup) -> AsyncIterator[None]:
        """While the node runs: finished tasks' logs pruned by policy."""
        scope = anyio.CancelScope()

        async def prune() -> None:
            with scope:
                await self._prune_logs_forever()

        task_group.start_soon(prune)
        try:
            yield
        finally:
            scope.cancel()

    async def _prune_logs_forever(self) -> None:
        """Finished tasks' logs deleted by the retention policy (core/logs.py); the first
        look is one interval after the start, so short CLI commands never pay for it."""
        every = self.settings.task_log_prune_interval_s
        if every <= 0:
            return
        while True:
            await anyio.sleep(every)
            running = frozenset(self.controller._running.runs)  # (core's own: the live runs)
            try:
                gone = await anyio.to_thread.run_sync(
                    functools.partial(
                        prune_task_logs,
                        self.settings.tasks_log_dir,
                        max_age_s=self.settings.task_log_retention_s,
                        max_total_bytes=self.settings.task_logs_max_bytes,
                        keep=running,
                    )
                )
            except OSError as exc:
                logger.warning("pruning task logs failed: {}", exc)
                continue
            if gone:
                logger.info("deleted the logs of {} finished task(s) by policy", len(gone))
            await self._apply_retention()

    async def _apply_retention(self) -> None:
        """Finished tasks' records, logs and results deleted by the retention policy."""
        from spear.core.retention import delete_by_policy

        age, records = self.settings.task_retention_s, self.settings.task_retention_records
        try:
            gone = await delete_by_policy(
                self, older_than_s=age if age > 0 else None, keep=records if records > 0 else None
            )
        except SpearError as exc:
            logger.warning("applying the task retention policy failed: {}", exc)
            return
        if gone:
            logger.info("deleted {} finished task(s) by the retention policy", len(gone))

    async def shutdown(self, reason: str = "node stopped") -> None:
        """Stop the node; running tasks are interrupted and marked. Safe to call twice."""
        if self.state in (NodeState.STOPPED, NodeState.NEW):
            if self.state is NodeState.NEW:
                await self._close_resources()
                self.state = NodeState.STOPPED
            return
        self.state = NodeState.DRAINING
        await self.controller.cancel_all(reason)
        try:
            if self._stack is not None:
                await self._stack.aclose()
        finally:
            await self._close_resources()
            self.state = NodeState.STOPPED
            logger.debug("node {} stopped", self.name)

    async def _close_resources(self) -> None:
        for close in reversed(self._closers):
            result = close()
            if hasattr(result, "__await__"):
                await result
        self._closers.clear()
        await self.kv.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    # -- the task API ---------------------------------------------------------------

    async def run(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | str | None = None,
        tee_stdout: Callable[[bytes], None] | None = None,
        tee_stderr: Callable[[bytes], None] | None = None,
        on_created: Callable[[Task], None] | None = None,
        hooks_later: bool = False,
    ) -> Task:
        """Run a task to its end and return it (COMPLETED, FAILED or CANCELLED);
        `hooks_later`: see `TaskController.run`."""
        return await self.controller.run(
            spec,
            stdin=stdin,
            tee_stdout=tee_stdout,
            tee_stderr=tee_stderr,
            on_created=on_created,
            hooks_later=hooks_later,
        )

    async def run_many(self, specs: Sequence[FunctionSpec]) -> list[Task]:
        """Run many tasks to their ends and return them, in order: what `run` does for
        each, with their records written together (see TaskController.run_many)."""
        return await self.controller.run_many(specs)

    async def submit(
        self, spec: FunctionSpec, *, stdin: bytes | None = None, task_id: str | None = None
    ) -> Task:
        """Start a task in the background and return it at once (PENDING); `task_id`:
        under that id (refused if it exists)."""
        return await self.controller.submit(spec, stdin=stdin, task_id=task_id)

    async def wait(self, task_id: str) -> Task:
        return await self.controller.wait(task_id)

    async def cancel(self, task_id: str, reason: str = "cancelled") -> Task:
        return await self.controller.cancel(task_id, reason)

    async def task(self, task_id: str) -> Task:
        return await self.tasks_store.get(task_id)

    async def tasks(self, state: TaskState | None = None, limit: int | None = None) -> list[Task]:
        return await self.tasks_store.list_tasks(state, limit)

    @property
    def objects(self) -> ObjectStore:
        """The node's object store (seed §6)."""
        store = self.services.objects
        if store is None:
            raise Unavailable(f"node {self.name} has no object store")
        return store

    async def start_task(self, spec: FunctionSpec, *, stdin: bytes | None = None) -> TaskStream:
        """Start a task whose caller stream is ours: send it messages, read its messages."""
        from spear.core.streams import TaskStream

        registry = self.services.streams
        if registry is None:
            raise Unavailable(f"node {self.name} has no caller streams")
        task = await self.controller.submit(spec, stdin=stdin)
        # No await between submit and attach: the task cannot run before its streams exist.
        streams = registry.attach(task.id)
        return TaskStream(self, task, streams)

    async def logs_of(self, task_id: str, stream: str = "stdout") -> bytes:
        await self.tasks_store.get(task_id)  # NotFound for an unknown id
        return self.logs.read(task_id, stream)
