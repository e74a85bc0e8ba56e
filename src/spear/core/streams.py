"""Streams between a running task and its caller (seed §10.1 streaming interaction).

Each task has one caller stream: messages the caller sends in (inbound) and messages the
task writes out (outbound), each a bounded queue. The task's side is non-blocking and
thread-safe (a wasm guest runs on a worker thread): a full queue is "try again" and a
readiness wait (`TaskStreams.changed`, a condition) lets it sleep until something changes.
The caller's side is async on the event loop and waits without blocking it, so a slow
reader on either side applies backpressure instead of growing memory.

A task started without a caller (`node.run`, `node.submit`) still has a stream: its input
is already ended and its output has no reader, so writes fail with "broken pipe".
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from spear.errors import InvalidArgument, ResourceExhausted, Unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from anyio.abc import TaskGroup

    from spear.core.models import Task
    from spear.core.node import Spearlet
    from spear.core.tasks import TasksFinished

# Readiness bits, as poll(2) has them.
POLLIN = 0x1
POLLOUT = 0x4
POLLERR = 0x8
POLLHUP = 0x10
POLLNVAL = 0x20


class StreamEnded(Exception):
    """The other side is gone: no more messages will come, or none will be read."""


class MessageTooLarge(Exception):
    def __init__(self, needed: int) -> None:
        super().__init__(f"the next message is {needed} bytes")
        self.needed = needed


class MessageQueue:
    """A bounded FIFO of messages in one direction, shared by a thread and an event loop."""

    def __init__(
        self,
        max_messages: int,
        max_message_bytes: int,
        changed: threading.Condition,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._on_change = on_change
        self.max_messages = max_messages
        self.max_message_bytes = max_message_bytes
        self._items: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._changed = changed
        self._writer_closed = False  # no more messages will be offered
        self._reader_closed = False  # nobody reads: offers fail
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def _notify(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)
        with self._changed:
            self._changed.notify_all()
        if self._on_change is not None:
            self._on_change()

    # -- non-blocking, any thread -----------------------------------------------------

    def offer(self, message: bytes) -> bool:
        """Queue `message`; False when full. Raises StreamEnded if it can never be read."""
        if len(message) > self.max_message_bytes:
            raise ResourceExhausted(
                f"a message is at most {self.max_message_bytes} bytes, not {len(message)}"
            )
        with self._lock:
            if self._reader_closed or self._writer_closed:
                raise StreamEnded("the stream is closed")
            if len(self._items) >= self.max_messages:
                return False
            self._items.append(message)
        self._notify()
        return True

    def take(self, capacity: int | None = None) -> bytes | None:
        """The next message, None if none is queued yet. Raises StreamEnded after the last
        one, MessageTooLarge (leaving it queued) if it is longer than `capacity`."""
        with self._lock:
            if not self._items:
                if self._writer_closed:
                    raise StreamEnded("end of stream")
                return None
            if capacity is not None and len(self._items[0]) > capacity:
                raise MessageTooLarge(len(self._items[0]))
            message = self._items.popleft()
        self._notify()
        return message

    def close_writer(self) -> None:
        with self._lock:
            self._writer_closed = True
        self._notify()

    def close_reader(self) -> None:
        with self._lock:
            self._reader_closed = True
            self._items.clear()
        self._notify()

    @property
    def readable(self) -> bool:
        """A take would not answer "nothing yet" (a message, or the end)."""
        with self._lock:
            return bool(self._items) or self._writer_closed

    @property
    def ended(self) -> bool:
        with self._lock:
            return not self._items and self._writer_closed

    @property
    def writable(self) -> bool:
        """An offer would not answer "full" (it may still fail because the reader left)."""
        with self._lock:
            return len(self._items) < self.max_messages or self._reader_closed

    @property
    def broken(self) -> bool:
        with self._lock:
            return self._reader_closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    # -- async, event loop side -------------------------------------------------------

    async def _wait_change(self, ready: Any) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if ready():
                return
            self._waiters.append((loop, fut))
        await fut

    async def put(self, message: bytes) -> None:
        """Queue `message`, waiting while the queue is full (backpressure)."""
        while not self.offer(message):
            await self._wait_change(lambda: len(self._items) < self.max_messages)

    async def get(self) -> bytes | None:
        """The next message, waiting for one; None at the end of the stream."""
        while True:
            try:
                message = self.take()
            except StreamEnded:
                return None
            if message is not None:
                return message
            await self._wait_change(lambda: bool(self._items) or self._writer_closed)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class TaskStreams:
    """One task's caller stream: `inbound` (caller -> task) and `outbound` (task -> caller)."""

    def __init__(self, task_id: str, max_messages: int, max_message_bytes: int) -> None:
        self.task_id = task_id
        self.changed = threading.Condition()  # notified whenever any of the task's handles change
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()
        self.inbound = MessageQueue(max_messages, max_message_bytes, self.changed, self._wake)
        self.outbound = MessageQueue(max_messages, max_message_bytes, self.changed, self._wake)
        # Set (on the event loop) once the task ended and its result is stored; only a task
        # with a caller has one (created where the caller attaches, on the loop).
        self.finished: anyio.Event | None = None

    def notify(self) -> None:
        """Wake the task's readiness waits (for handle kinds other than streams)."""
        with self.changed:
            self.changed.notify_all()
        self._wake()

    def _wake(self) -> None:
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)

    async def wait_changed(self, ready: Callable[[], bool]) -> None:
        """On the event loop: return once `ready()` holds, checked after every change."""
        loop = asyncio.get_running_loop()
        while not ready():
            fut: asyncio.Future[None] = loop.create_future()
            with self._waiters_lock:
                self._waiters.append((loop, fut))
            if ready():  # changed between the check and registering
                return
            await fut

    def readiness(self) -> int:
        """poll(2)-style bits of the caller stream, from the task's side."""
        bits = 0
        if self.inbound.readable:
            bits |= POLLIN
        if self.inbound.ended:
            bits |= POLLHUP
        if self.outbound.writable:
            bits |= POLLOUT
        if self.outbound.broken:
            bits |= POLLERR
        return bits

    def end(self) -> None:
        """The task ended: the caller reads what is left, then the end; sends fail."""
        self.outbound.close_writer()
        self.inbound.close_reader()


class StreamRegistry:
    """The node's streams by task id (service `streams`)."""

    def __init__(self, max_messages: int = 64, max_message_bytes: int = 1024**2) -> None:
        if max_messages < 1 or max_message_bytes < 1:
            raise InvalidArgument("stream queues need room for at least one message")
        self.max_messages = max_messages
        self.max_message_bytes = max_message_bytes
        self._streams: dict[str, TaskStreams] = {}
        self._lock = threading.Lock()

    def attach(self, task_id: str) -> TaskStreams:
        """Streams of a task whose caller talks to it (`Spearlet.start_task`)."""
        with self._lock:
            streams = self._streams.get(task_id)
            if streams is None:
                streams = TaskStreams(task_id, self.max_messages, self.max_message_bytes)
                self._streams[task_id] = streams
            if streams.finished is None:
                streams.finished = anyio.Event()
            return streams

    def for_task(self, task_id: str) -> TaskStreams:
        """A task's streams; a task nobody attached to gets ended input and unread output."""
        with self._lock:
            streams = self._streams.get(task_id)
            if streams is None:
                streams = TaskStreams(task_id, self.max_messages, self.max_message_bytes)
                streams.inbound.close_writer()
                streams.outbound.close_reader()
                self._streams[task_id] = streams
            return streams

    def finish(self, task_id: str) -> None:
        with self._lock:
            streams = self._streams.pop(task_id, None)
        if streams is not None:
            streams.end()
            if streams.finished is not None:
                streams.finished.set()

    @contextlib.asynccontextmanager
    async def serve_node(self, node: Spearlet, task_group: TaskGroup) -> AsyncIterator[None]:
        """Serve a node: end a task's streams once the task ended (hooks run in order, so
        after the object store stored its result)."""

        async def tasks_finished(finished: TasksFinished) -> None:
            for task in finished.tasks:
                self.finish(task.id)

        node.controller.add_finished_hook(tasks_finished)
        yield


class TaskStream:
    """A running task seen from its caller in this process: send messages in, iterate
    messages out. The NodeAPI's `StreamingTask` (spear/node/api.py) is built on it: it
    carries its messages over this stream when the node runs in this process.

    ``stream = await node.start_task(spec)``; ``await stream.send(b"hi")``;
    ``async for message in stream.messages(): ...``; ``value = await stream.result()``.
    """

    def __init__(self, node: Any, task: Task, streams: TaskStreams) -> None:
        self._node = node
        self.task = task
        self._streams = streams

    @property
    def id(self) -> str:
        return self.task.id

    async def send(self, message: bytes | str) -> None:
        """Send one message to the task; waits while its input queue is full."""
        data = message.encode() if isinstance(message, str) else bytes(message)
        try:
            await self._streams.inbound.put(data)
        except StreamEnded:
            raise Unavailable(f"task {self.id} has ended or stopped reading") from None

    async def close(self) -> None:
        """No more messages: the task reads the end of its input after the queued ones."""
        self._streams.inbound.close_writer()

    async def receive(self) -> bytes | None:
        """The task's next message; None once the task has ended and all were read."""
        return await self._streams.outbound.get()

    async def messages(self) -> AsyncIterator[bytes]:
        """The task's messages, in order, until it ends."""
        while (message := await self._streams.outbound.get()) is not None:
            yield message

    async def wait(self) -> Task:
        """Wait for the task to end; the finished task."""
        await self._node.wait(self.id)
        if self._streams.finished is not None:
            await self._streams.finished.wait()
        self.task = await self._node.task(self.id)
        return self.task

    async def result(self) -> bytes:
        """Wait for the task to end; its result (what it set, else its stdout)."""
        from spear.core.namespaces import result_key

        task = await self.wait()
        value, _ = await self._node.objects.get(result_key(task.spec.namespace, self.id))
        return bytes(value)

    async def cancel(self, reason: str = "cancelled") -> Task:
        await self._node.cancel(self.id, reason)
        return await self.wait()
