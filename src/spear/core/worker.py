"""The WorkerAgent seam: one implementation per runtime kind (seed §2.1, §5.2).

A worker agent prepares an artifact (checks and compiles it, once), starts an execution
of it for a task, and lets the task controller wait for or kill that execution. What the
guest writes goes to the task's `TaskIO`; what it asks of its host goes through the
`TaskContext` the hostcall controller serves.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from spear.core.models import Runtime, Task, TaskState
    from spear.core.streams import StreamRegistry
    from spear.store.objects import ObjectStore
    from spear.tracing.base import TaskTrace, Tracing

# How the CLI reports outcomes that are not the guest's own exit code.
EXIT_TIMEOUT = 124  # like coreutils `timeout`
EXIT_CANCELLED = 130  # like a shell after SIGINT
EXIT_TRAP = 134  # like the wasmtime CLI: 128 + SIGABRT
EXIT_LOST = 137  # the process running the task died (128 + SIGKILL)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an execution ended."""

    state: TaskState
    exit_code: int
    reason: str | None = None


@dataclass(slots=True)
class TaskIO:
    """Where a task's standard streams go. Writers are called from any thread."""

    stdout: Callable[[bytes], None]
    stderr: Callable[[bytes], None]
    stdin: bytes | Literal["inherit"] | None = None


class ExecutionControl:
    """What the host may tell a running execution: stop now, and why.

    The event a waiter sleeps on is made only when somebody waits (most tasks are never
    waited on this way, and a `threading.Event` is costly to make).
    """

    __slots__ = ("_event", "cancel_reason", "deadline")

    _MAKE_EVENT = threading.Lock()

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline  # time.monotonic() value
        self.cancel_reason: str | None = None
        self._event: threading.Event | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self._event is not None:
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_reason is not None

    def wait_cancelled(self, timeout: float | None) -> bool:
        if self._event is None:
            with self._MAKE_EVENT:
                if self._event is None:
                    self._event = threading.Event()
        if self.cancel_reason is not None:  # cancelled before the event existed
            self._event.set()
        return self._event.wait(timeout)


@dataclass(frozen=True, slots=True)
class NodeServices:
    """What a node offers its tasks' hostcalls beside the task itself (None: not offered).
    The composition root (spear/node/assembly.py) fills it; the node starts each one's
    background work with itself."""

    objects: ObjectStore | None = None
    streams: StreamRegistry | None = None
    # A spear.models.router.ModelRouter; typed Any because the models package imports
    # core, and core imports no package that imports it back.
    models: Any = None
    result_max_bytes: int = 64 * 1024 * 1024  # what a task may set as its result
    # The agent toolkit (spear/toolkit, docs/toolkit.md): MCP connections (McpHub),
    # subtasks (Subtasks) and the vector store (VectorStore).
    tools: Any = None
    subtasks: Any = None
    vectors: Any = None
    # OpenTelemetry traces (spear/tracing): None when off (each hook one None check).
    tracing: Tracing | None = None

    def with_background_work(self) -> tuple[Any, ...]:
        """The services with a `serve_node` context (the object store is served by
        `core/results.py`, which keeps the node's task results in it)."""
        services = (self.streams, self.models, self.tools, self.subtasks, self.vectors)
        return tuple(s for s in services if s is not None)


@dataclass(slots=True)
class TaskContext:
    """What one task's hostcalls act on: its identity and the node's services.

    `services` is filled by the node (object store, streams, models); worker agents pass
    the context through to hostcalls without looking inside.
    """

    task: Task
    control: ExecutionControl
    io: TaskIO
    agent_log: Callable[[str, str], None]
    services: NodeServices = field(default_factory=NodeServices)
    handles: dict[int, Any] = field(default_factory=dict)
    trace: TaskTrace | None = None  # the run's span when traced (spear/tracing)


class Execution(abc.ABC):
    """One running instance of a prepared artifact."""

    @abc.abstractmethod
    async def wait(self) -> Outcome: ...

    def run_now(self) -> Outcome | None:
        """Run to the end right here if this execution can (a short guest, inline), and
        say how it ended; None means use `wait`."""
        return None

    @abc.abstractmethod
    def kill(self, reason: str = "cancelled") -> None:
        """Ask the execution to stop; `wait` then returns a CANCELLED or FAILED outcome."""


class WorkerAgent(abc.ABC):
    """Adapter for one runtime kind (seed §2.1 Worker Agent)."""

    runtime: Runtime

    @abc.abstractmethod
    async def prepare(self, task: Task) -> None:
        """Check (and compile, once) the task's artifact; raises on bad input."""

    @abc.abstractmethod
    async def start(self, ctx: TaskContext) -> Execution: ...

    async def start_service(self) -> None:  # noqa: B027 - optional hook
        """Acquire long-lived resources (threads, pools)."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start_service()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
