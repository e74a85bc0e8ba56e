"""What an agent may ask of its host, independent of how it asks (the hostcall controller).

Every function takes the calling task's `TaskContext` and plain Python values, and either
returns a value or raises `HostError` carrying an errno (Python's `errno` names). The WASM
import module (`hostcalls_*.py`) only moves bytes in and out of guest memory and turns a
`HostError` into a negative errno of the WASI numbering; the process-agent channel does the
same over its socket. `docs/hostcalls.md` is the contract both follow.

Threads: the object-store operations are coroutines for the node's event loop (a wasm
guest on a worker thread calls them through `anyio.from_thread.run`). Stream operations
never block and are safe from any thread; `poll` and `sleep` block the calling worker
thread (never the event loop) and have `poll_async` / `sleep_async` twins for callers on
the loop.

errno meanings (the same for every operation):
    EINVAL        a malformed argument (bad key, bad level, bad clock, negative version)
    ENOENT        no such object
    ESTALE        optimistic concurrency: the object is not at the expected version
    EBUSY         delete of a pinned or referenced object
    EACCES        a write of a key only the node writes (`results/...`)
    EFBIG         a value over the maximum object size
    EDQUOT        the object store is full
    ENOSPC        the caller's buffer is too small (`HostError.needed` says how much)
    EAGAIN        nothing to read yet / the queue is full: wait for readiness (poll)
    EPIPE         the stream ended: no more messages, or nobody reads them
    EMSGSIZE      a message over the stream's maximum message size
    EBADF         not an open handle of this task
    ECANCELED     the task is being stopped (timeout or cancel) while it waited
    ENOSYS        the node does not offer this service
    EIO           the store failed
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from spear._logging import logger
from spear.core import namespaces
from spear.core.streams import (
    POLLNVAL,
    MessageTooLarge,
    StreamEnded,
)
from spear.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SpearError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spear.core.streams import StreamRegistry, TaskStreams
    from spear.core.worker import TaskContext
    from spear.store.object_info import ObjectInfo
    from spear.store.objects import ObjectStore

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
MAX_LOG_MESSAGE = 64 * 1024
CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
_WAIT_SLICE_S = 0.02  # a blocked wait looks at the task's cancel/deadline this often


class HostError(Exception):
    """An expected failure of a host operation, with its errno (Python's numbering)."""

    def __init__(self, err: int, message: str = "", *, needed: int | None = None) -> None:
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err
        self.needed = needed


ErrnoTable = tuple[tuple[type[SpearError], int], ...]

# The errno an agent sees for a spear error, first match wins; anything else is EIO.
_ERRNOS: ErrnoTable = (
    (NotFound, errno.ENOENT),
    (Conflict, errno.ESTALE),
    (ResourceExhausted, errno.EDQUOT),
    (InvalidArgument, errno.EINVAL),
)


def translate(exc: SpearError, specific: ErrnoTable = ()) -> HostError:
    """A spear error as the errno (and message) an agent sees.

    `specific` is a hostcall family's own mapping, consulted before the common one.
    """
    for kind, err in (*specific, *_ERRNOS):
        if isinstance(exc, kind):
            return HostError(err, str(exc))
    logger.warning("a host operation failed: {}", exc)  # (the agent sees only EIO)
    return HostError(errno.EIO, str(exc))


def _objects(ctx: TaskContext) -> ObjectStore:
    store = ctx.services.objects
    if store is None:
        raise HostError(errno.ENOSYS, "this node has no object store")
    return store


def _key(ctx: TaskContext, key: str, *, write: bool = False) -> str:
    """Where the task's `key` is stored: in its namespace (core/namespaces.py). A write of
    a key only the node writes is EACCES: a task sets its own result with `result_set`."""
    if write and namespaces.is_system_key(key):
        raise HostError(errno.EACCES, f"{key!r} is written only by the node")
    try:
        return namespaces.stored_key(ctx.task.spec.namespace, key)
    except SpearError as exc:
        raise translate(exc) from None


def _seen(ctx: TaskContext, info: ObjectInfo) -> ObjectInfo:
    key = namespaces.user_key(ctx.task.spec.namespace, info.key)
    return info if key is None or key == info.key else dataclasses.replace(info, key=key)


def _streams(ctx: TaskContext) -> StreamRegistry:
    registry = ctx.services.streams
    if registry is None:
        raise HostError(errno.ENOSYS, "this node has no streams")
    return registry


# -- basics ---------------------------------------------------------------------------


def log(ctx: TaskContext, level: int | str, message: str) -> None:
    """Append one message at a level (0 trace .. 4 error, or its name) to the task's log."""
    if isinstance(level, str):
        if level.upper() not in LOG_LEVELS:
            raise HostError(errno.EINVAL, f"unknown log level {level!r}")
        name = level.upper()
    elif 0 <= level < len(LOG_LEVELS):
        name = LOG_LEVELS[level]
    else:
        raise HostError(errno.EINVAL, "log level must be 0..4")
    if len(message) > MAX_LOG_MESSAGE:
        raise HostError(errno.E2BIG, f"a log message is at most {MAX_LOG_MESSAGE} bytes")
    ctx.agent_log(name, message)


def now(ctx: TaskContext, clock: int = CLOCK_REALTIME) -> int:
    """Nanoseconds: since the Unix epoch (clock 0) or on a monotonic clock (clock 1)."""
    if clock == CLOCK_REALTIME:
        return time.time_ns()
    if clock == CLOCK_MONOTONIC:
        return time.monotonic_ns()
    raise HostError(errno.EINVAL, "clock must be 0 (realtime) or 1 (monotonic)")


def _remaining(ctx: TaskContext, timeout_s: float | None) -> float | None:
    """How long a wait may last: its own timeout capped by the task's deadline."""
    deadline = ctx.control.deadline
    if deadline is None:
        return timeout_s
    left = max(0.0, deadline - time.monotonic())
    return left if timeout_s is None else min(timeout_s, left)


def sleep(ctx: TaskContext, seconds: float) -> None:
    """Block the calling (worker) thread; a cancel or timeout ends it early (ECANCELED)."""
    if seconds < 0:
        raise HostError(errno.EINVAL, "cannot sleep a negative time")
    wait = _remaining(ctx, seconds)
    if ctx.control.wait_cancelled(wait) or (wait is not None and wait < seconds):
        raise HostError(errno.ECANCELED, "the task is being stopped")


async def sleep_async(ctx: TaskContext, seconds: float) -> None:
    """`sleep` for callers on the event loop (no thread is held while it waits)."""
    if seconds < 0:
        raise HostError(errno.EINVAL, "cannot sleep a negative time")
    wait = _remaining(ctx, seconds)
    end = time.monotonic() + (seconds if wait is None else wait)
    while (left := end - time.monotonic()) > 0:
        if ctx.control.cancelled:
            break
        await anyio.sleep(min(left, _WAIT_SLICE_S))
    if ctx.control.cancelled or (wait is not None and wait < seconds):
        raise HostError(errno.ECANCELED, "the task is being stopped")


# -- objects --------------------------------------------------------------------------


async def obj_put(
    ctx: TaskContext,
    key: str,
    value: bytes | bytearray | memoryview,
    expected_version: int | None = None,
) -> int:
    """Write an object; returns its new version (see ObjectStore.put for versions)."""
    return await _put(ctx, _key(ctx, key, write=True), value, expected_version)


async def _put(
    ctx: TaskContext,
    key: str,
    value: bytes | bytearray | memoryview,
    expected_version: int | None = None,
) -> int:
    store = _objects(ctx)
    size = memoryview(value).nbytes
    if size > store.max_bytes:
        raise HostError(errno.EFBIG, f"an object is at most {store.max_bytes} bytes")
    try:
        return await store.put(key, value, expected_version)
    except SpearError as exc:
        raise translate(exc) from None


async def obj_get(
    ctx: TaskContext, key: str, capacity: int | None = None
) -> tuple[memoryview, int]:
    """(value, version). With `capacity`, a larger value is ENOSPC with `needed` set."""
    try:
        value, version = await _objects(ctx).get(_key(ctx, key))
    except SpearError as exc:
        raise translate(exc) from None
    if capacity is not None and value.nbytes > capacity:
        raise HostError(errno.ENOSPC, "buffer too small", needed=value.nbytes)
    return value, version


async def obj_info(ctx: TaskContext, key: str) -> ObjectInfo:
    try:
        return _seen(ctx, await _objects(ctx).info(_key(ctx, key)))
    except SpearError as exc:
        raise translate(exc) from None


async def obj_list(ctx: TaskContext, prefix: str = "") -> list[ObjectInfo]:
    try:
        namespace = ctx.task.spec.namespace
        found = await _objects(ctx).list(namespaces.stored_prefix(namespace, prefix))
        return [_seen(ctx, i) for i in found if namespaces.user_key(namespace, i.key) is not None]
    except SpearError as exc:
        raise translate(exc) from None


async def obj_delete(ctx: TaskContext, key: str, expected_version: int | None = None) -> None:
    """Delete an object; EBUSY while it is pinned or referenced."""
    store = _objects(ctx)
    key = _key(ctx, key, write=True)
    try:
        info = await store.info(key)
        if info.pinned or info.refs > 0:
            raise HostError(errno.EBUSY, f"object {key!r} is pinned or referenced")
        await store.delete(key, expected_version)
    except SpearError as exc:
        raise translate(exc) from None


async def obj_add_ref(ctx: TaskContext, key: str) -> int:
    """One more reference, held by this task until it ends or removes it; the new count."""
    try:
        return await _objects(ctx).add_ref(_key(ctx, key), holder=ctx.task.id)
    except SpearError as exc:
        raise translate(exc) from None


async def obj_remove_ref(ctx: TaskContext, key: str) -> int:
    """One reference fewer; the new count (at 0 an unpinned object is deleted)."""
    try:
        return await _objects(ctx).remove_ref(_key(ctx, key), holder=ctx.task.id)
    except SpearError as exc:
        raise translate(exc) from None


async def obj_pin(ctx: TaskContext, key: str) -> None:
    try:
        await _objects(ctx).pin(_key(ctx, key))
    except SpearError as exc:
        raise translate(exc) from None


async def obj_unpin(ctx: TaskContext, key: str) -> None:
    try:
        await _objects(ctx).unpin(_key(ctx, key))
    except SpearError as exc:
        raise translate(exc) from None


async def result_set(ctx: TaskContext, value: bytes | bytearray | memoryview) -> int:
    """Set the task's result (instead of its stdout); returns the result object's version."""
    cap = ctx.services.result_max_bytes
    if memoryview(value).nbytes > cap:
        raise HostError(errno.EFBIG, f"a result is at most {cap} bytes (task_result_max_bytes)")
    key = namespaces.result_key(ctx.task.spec.namespace, ctx.task.id)
    return await _put(ctx, key, value)


# -- handles and streams --------------------------------------------------------------

_HANDLE_IDS = threading.Lock()


class CallerStream:
    """The handle-table entry of a task's caller stream."""

    def __init__(self, streams: TaskStreams) -> None:
        self.streams = streams

    def readiness(self) -> int:
        return self.streams.readiness()


def _handle(ctx: TaskContext, handle: int) -> Any:
    entry = ctx.handles.get(handle)
    if entry is None:
        raise HostError(errno.EBADF, f"no open handle {handle}")
    return entry


def _caller(ctx: TaskContext, handle: int) -> TaskStreams:
    entry = _handle(ctx, handle)
    if not isinstance(entry, CallerStream):
        raise HostError(errno.EBADF, f"handle {handle} is not a stream")
    return entry.streams


def add_handle(ctx: TaskContext, entry: Any) -> int:
    """Put `entry` in the task's handle table; its handle (the smallest free one >= 1)."""
    with _HANDLE_IDS:
        handle = next(h for h in itertools.count(1) if h not in ctx.handles)
        ctx.handles[handle] = entry
    return handle


def stream_caller(ctx: TaskContext) -> int:
    """The handle of the task's caller stream (opened on first use, then the same)."""
    for handle, entry in list(ctx.handles.items()):
        if isinstance(entry, CallerStream):
            return handle
    return add_handle(ctx, CallerStream(_streams(ctx).for_task(ctx.task.id)))


def stream_read(ctx: TaskContext, handle: int, capacity: int | None = None) -> bytes:
    """The next message from the caller. EAGAIN: none yet; EPIPE: the input ended;
    ENOSPC (with `needed`): longer than `capacity`, and left queued."""
    streams = _caller(ctx, handle)
    try:
        message = streams.inbound.take(capacity)
    except StreamEnded:
        raise HostError(errno.EPIPE, "the caller's input has ended") from None
    except MessageTooLarge as exc:
        raise HostError(errno.ENOSPC, "buffer too small", needed=exc.needed) from None
    if message is None:
        raise HostError(errno.EAGAIN, "no message yet")
    return message


def stream_write(ctx: TaskContext, handle: int, message: bytes | memoryview) -> int:
    """Send one message to the caller; its length. EAGAIN: the queue is full (wait for
    POLLOUT); EPIPE: nobody reads; EMSGSIZE: over the maximum message size."""
    streams = _caller(ctx, handle)
    data = bytes(message)
    try:
        if not streams.outbound.offer(data):
            raise HostError(errno.EAGAIN, "the caller's queue is full")
    except ResourceExhausted as exc:
        raise HostError(errno.EMSGSIZE, str(exc)) from None
    except StreamEnded:
        raise HostError(errno.EPIPE, "nobody reads this task's output") from None
    return len(data)


def close(ctx: TaskContext, handle: int) -> None:
    """Close a handle. Closing the caller stream ends the task's output (the caller's
    iterator finishes) and its input."""
    entry = _handle(ctx, handle)
    if isinstance(entry, CallerStream):
        entry.streams.outbound.close_writer()
        entry.streams.inbound.close_reader()
    elif hasattr(entry, "close"):  # e.g. a model call: stop its work
        entry.close()
    ctx.handles.pop(handle, None)


def _readiness(ctx: TaskContext, interests: Sequence[tuple[int, int]]) -> list[int]:
    out = []
    for handle, events in interests:
        entry = ctx.handles.get(handle)
        if entry is None or not hasattr(entry, "readiness"):
            out.append(POLLNVAL)
            continue
        # Error and hang-up are reported whether asked for or not, as poll(2) does.
        out.append(entry.readiness() & (events | 0x8 | 0x10))
    return out


def _condition(ctx: TaskContext) -> threading.Condition:
    registry = ctx.services.streams
    if registry is None:
        return threading.Condition()
    changed: threading.Condition = registry.for_task(ctx.task.id).changed
    return changed


def poll(
    ctx: TaskContext, interests: Sequence[tuple[int, int]], timeout_s: float | None
) -> list[int]:
    """Level-triggered readiness of (handle, events) pairs, like poll(2): the ready bits
    for each (POLLIN, POLLOUT, POLLERR, POLLHUP, POLLNVAL). Blocks the calling worker
    thread until one is ready or `timeout_s` passes (None: no limit, 0: just look);
    ECANCELED if the task is stopped meanwhile."""
    if timeout_s is not None and timeout_s < 0:
        raise HostError(errno.EINVAL, "timeout must not be negative")
    changed = _condition(ctx)
    end = None if timeout_s is None else time.monotonic() + timeout_s
    with changed:
        while True:
            ready, capped = _poll_once(ctx, interests, end)
            if ready is not None:
                return ready
            changed.wait(_WAIT_SLICE_S if capped is None else min(capped, _WAIT_SLICE_S))


def _poll_once(
    ctx: TaskContext, interests: Sequence[tuple[int, int]], end: float | None
) -> tuple[list[int] | None, float | None]:
    """One look for `poll`: (the readiness to return, None) when the poll is over, else
    (None, how long to wait at most: None for no limit). Raises ECANCELED when the task
    is being stopped or ran out of time."""
    ready = _readiness(ctx, interests)
    if any(ready):
        return ready, None
    if ctx.control.cancelled:
        raise HostError(errno.ECANCELED, "the task is being stopped")
    left = None if end is None else end - time.monotonic()
    if left is not None and left <= 0:
        return ready, None
    capped = _remaining(ctx, left)
    if capped is not None and capped <= 0:
        raise HostError(errno.ECANCELED, "the task ran out of time")
    return None, capped


async def poll_async(
    ctx: TaskContext, interests: Sequence[tuple[int, int]], timeout_s: float | None
) -> list[int]:
    """`poll` for callers on the event loop: it waits there, holding no thread."""
    if timeout_s is not None and timeout_s < 0:
        raise HostError(errno.EINVAL, "timeout must not be negative")
    registry = ctx.services.streams
    streams = registry.for_task(ctx.task.id) if registry is not None else None
    end = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        ready, capped = _poll_once(ctx, interests, end)
        if ready is not None:
            return ready
        # Wake on a change, or after a slice to look at cancel and deadline again.
        with anyio.move_on_after(_WAIT_SLICE_S * 5 if capped is None else min(capped, 0.1)):
            if streams is not None:
                await streams.wait_changed(lambda: any(_readiness(ctx, interests)))
            else:
                await anyio.sleep_forever()
