"""What a caller can ask of a node, wherever it runs: the `NodeAPI` seam.

Two implementations sit behind it: `InProcessNode` (a Spearlet in this process, over the
local data dir) and `Client` (a node daemon over gRPC). The CLI's client commands and
`TaskHandle` are written against this seam only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Generator, Sequence
    from contextlib import AbstractAsyncContextManager

    from spear.core.models import (
        FunctionSpec,
        LogChunk,
        NodeInfo,
        ObjectInfo,
        Task,
        TaskResult,
        TaskState,
    )
    from spear.errors import SpearError


class NodeAPI(Protocol):
    """The operations of a node that callers use: tasks, logs, results, node info, objects."""

    @property
    def in_process(self) -> bool:
        """True when the node runs in this process: its tasks end when this process does."""
        ...

    async def submit(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> TaskHandle:
        """Start a task; returns at once with a handle on it (the task is PENDING).
        `idempotency_key`: a submit retried with the same key returns the same task
        (node/idempotency.py)."""
        ...

    async def run(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | Literal["inherit"] | None = None,
        stdout: Callable[[bytes], None] | None = None,
        stderr: Callable[[bytes], None] | None = None,
        on_created: Callable[[Task], None] | None = None,
    ) -> Task:
        """Run a task to its end and return it finished.

        `stdout`/`stderr` are called with its output as it is written; `on_created` with
        the task once it exists (its id, to cancel it). `stdin="inherit"` is this
        process's own stdin: an in-process node hands it to the guest as it is, a remote
        node is sent it whole (nothing if it is a terminal)."""
        ...

    async def call(self, spec: FunctionSpec, *, stdin: bytes | None = None) -> TaskResult:
        """Run a task to its end and return its result (one round trip to a remote node)."""
        ...

    def start_task(
        self, spec: FunctionSpec, *, stdin: bytes | None = None
    ) -> AbstractAsyncContextManager[StreamingTask]:
        """Start a task with its caller stream: `async with api.start_task(spec) as t:`,
        then `t.send(...)` and `async for m in t.messages()`; leaving ends its input."""
        ...

    async def task(self, task_id: str) -> Task: ...

    async def tasks(self, state: TaskState | None = None, limit: int | None = None) -> list[Task]:
        """Tasks newest first, optionally only those in `state`."""
        ...

    def watch(self, task_id: str) -> AsyncIterator[Task]:
        """The task now, then at each state change, ending at a terminal state."""
        ...

    async def wait(self, task_id: str) -> Task:
        """The task once it has finished."""
        ...

    async def cancel(self, task_id: str, reason: str = "cancelled") -> Task: ...

    async def result(self, task_id: str, *, wait: bool = True) -> TaskResult:
        """The finished task and its output; without `wait`, Unavailable if not finished."""
        ...

    def logs(
        self, task_id: str, streams: Sequence[str] = (), *, follow: bool = False
    ) -> AsyncIterator[LogChunk]:
        """A task's logs (all streams when `streams` is empty); `follow` until it ends."""
        ...

    async def node_info(self) -> NodeInfo: ...

    async def put_object(
        self, key: str, data: bytes, *, expected_version: int | None = None
    ) -> ObjectInfo: ...

    async def get_object(self, key: str) -> tuple[bytes, ObjectInfo]: ...

    async def list_objects(self, prefix: str = "") -> list[ObjectInfo]: ...

    async def delete_object(self, key: str, *, force: bool = False) -> bool:
        """Whether it existed; a pinned or referenced one only with `force` (else Conflict)."""
        ...

    async def add_object_ref(self, key: str) -> ObjectInfo: ...

    async def remove_object_ref(self, key: str) -> ObjectInfo: ...

    async def pin_object(self, key: str) -> ObjectInfo: ...

    async def unpin_object(self, key: str) -> ObjectInfo: ...

    async def aclose(self) -> None: ...

    async def delete_tasks(
        self,
        task_ids: Sequence[str] = (),
        *,
        older_than_s: float | None = None,
        keep: int | None = None,
        namespace: str | None = None,
    ) -> list[str]:
        """Delete finished tasks (records, logs, results): `task_ids`, and those that
        ended over `older_than_s` ago or beyond the newest `keep` (of `namespace` only,
        if named; a client's namespace is its credentials'). Returns the ids deleted."""
        ...


class BatchNode(NodeAPI, Protocol):
    """A node in this process, which runs a batch waited for as one wave (InProcessNode,
    ClusterNode, and a namespace's view of either): SubmitTasks' quick path."""

    async def run_many(
        self, specs: Sequence[FunctionSpec], stdins: Sequence[bytes | None] | None = None
    ) -> list[Task | SpearError]:
        """Each task run to its end (its record), or why it was refused; in order."""
        ...


class TaskHandle:
    """A submitted task: `await handle` (or `handle.result()`) for its result."""

    def __init__(self, api: NodeAPI, task: Task) -> None:
        self._api = api
        self.task = task

    @property
    def id(self) -> str:
        return self.task.id

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    def __await__(self) -> Generator[Any, None, TaskResult]:
        return self.result().__await__()

    async def result(self) -> TaskResult:
        """Wait for the task to finish; its final record and output."""
        return await self._api.result(self.id, wait=True)

    async def wait(self) -> Task:
        return await self._api.wait(self.id)

    async def status(self) -> Task:
        return await self._api.task(self.id)

    async def cancel(self, reason: str = "cancelled") -> Task:
        return await self._api.cancel(self.id, reason)

    def logs(self, streams: Sequence[str] = (), *, follow: bool = True) -> AsyncIterator[LogChunk]:
        """The task's logs as they are written (all streams unless named), until it ends."""
        return self._api.logs(self.id, streams, follow=follow)

    def watch(self) -> AsyncIterator[Task]:
        return self._api.watch(self.id)


class CallerStream(Protocol):
    """A task's caller stream seen from the caller: what a `StreamingTask` carries its
    messages over. In this process it is the node's own `spear.TaskStream`
    (core/streams.py); from a `Client`, one ExchangeStream call."""

    async def send(self, message: bytes | str) -> None: ...

    async def close(self) -> None: ...

    async def receive(self) -> bytes | None: ...


class StreamingTask(TaskHandle):
    """A task started with its caller stream: send it messages, read the messages it sends
    (over `stream`); the rest (wait, result, logs, cancel) as any `TaskHandle`."""

    def __init__(self, api: NodeAPI, task: Task, stream: CallerStream) -> None:
        super().__init__(api, task)
        self.stream = stream

    async def send(self, message: bytes | str) -> None:
        """One message to the task; waits while its input queue is full."""
        await self.stream.send(message)

    async def close(self) -> None:
        """No more messages: the task reads the end of its input after the queued ones."""
        await self.stream.close()

    async def receive(self) -> bytes | None:
        """The task's next message; None once the task has ended and all were read."""
        return await self.stream.receive()

    async def messages(self) -> AsyncIterator[bytes]:
        """The task's messages, in order, until it ends."""
        while (message := await self.stream.receive()) is not None:
            yield message


async def run_attached(
    api: NodeAPI,
    spec: FunctionSpec,
    *,
    stdin: bytes | None,
    stdout: Callable[[bytes], None] | None,
    stderr: Callable[[bytes], None] | None,
    on_created: Callable[[Task], None] | None,
) -> Task:
    """`run` for a node that is not in this process: submit, relay the task's output as
    its logs grow, and return it once it ends."""
    handle = await api.submit(spec, stdin=stdin)
    if on_created is not None:
        on_created(handle.task)
    sinks = {"stdout": stdout, "stderr": stderr}
    streams = tuple(name for name, sink in sinks.items() if sink is not None)
    if streams:
        async for chunk in handle.logs(streams, follow=True):
            sink = sinks[chunk.stream]
            assert sink is not None
            sink(chunk.data)
    return await handle.wait()


def read_own_stdin(stdin: bytes | Literal["inherit"] | None) -> bytes | None:
    """What `stdin="inherit"` sends to a remote node: this process's stdin read whole,
    unless it is a terminal (nothing is sent then)."""
    if stdin != "inherit":
        return stdin
    import sys

    if sys.stdin is None or sys.stdin.isatty():
        return None
    return sys.stdin.buffer.read()
