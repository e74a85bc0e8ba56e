"""Server-sent events: the dashboard's live feeds (a task list, one task and its logs).

A plain ASGI response rather than a generator: the feed's producers run in a task group
of the response's own task, beside a watcher of the client's disconnect and of the
server's shutdown, so neither a closed tab nor a stopping node leaves anything running.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from spear.core.models import LOG_STREAMS
from spear.errors import SpearError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.types import Receive, Scope, Send

    from spear.core.models import Task, TaskState
    from spear.web._sources import Source

    Emit = Callable[[str, Any], Awaitable[None]]

_KEEPALIVE_S = 15.0  # a comment line now and then: proxies keep the connection open
_LIST_POLL_S = 0.5  # the task list is read this often (new tasks and state changes)
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class EventStream:
    """An ASGI response sending what `produce(emit)` emits, until it returns, the client
    goes away or `closing` is set. `emit(event, data)`: data is sent as JSON."""

    def __init__(self, produce: Callable[[Emit], Awaitable[None]], closing: anyio.Event) -> None:
        self._produce = produce
        self._closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        lock = anyio.Lock()

        async def write(chunk: bytes) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def emit(event: str, data: Any) -> None:
            await write(b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")

        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                try:
                    await self._produce(emit)
                except* SpearError as group:  # e.g. the task is gone: say so, then end
                    exc = group.exceptions[0]
                    assert isinstance(exc, SpearError)
                    await emit("error", {"error": str(exc), "code": exc.code})
                tg.cancel_scope.cancel()

            async def until_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            async def until_closing() -> None:
                await self._closing.wait()
                tg.cancel_scope.cancel()

            async def keepalive() -> None:
                while True:
                    await anyio.sleep(_KEEPALIVE_S)
                    await write(b": keepalive\n\n")

            for fn in (produce, until_disconnect, until_closing, keepalive):
                tg.start_soon(fn)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def task_summary(task: Task) -> dict[str, Any]:
    """A task as a row of the dashboard's list."""
    return {
        "id": task.id,
        "state": task.state.value,
        "runtime": task.spec.runtime.value,
        "namespace": task.spec.namespace,
        "artifact": task.spec.artifact,
        "args": list(task.spec.args),
        "node": task.node,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "exit_code": task.exit_code,
        "reason": task.reason,
    }


def task_list_feed(source: Source, state: TaskState | None, limit: int) -> Callable[[Emit], Any]:
    """`snapshot` (the newest tasks), then `task` for each new task or changed state."""

    async def produce(emit: Emit) -> None:
        seen: dict[str, tuple[str, float | None]] | None = None
        while True:
            tasks = await source.tasks(state, limit)
            now = {t.id: (t.state.value, t.finished_at) for t in tasks}
            if seen is None:
                await emit("snapshot", [task_summary(t) for t in tasks])
            else:
                for task in reversed(tasks):  # oldest first: the page prepends
                    if seen.get(task.id) != now[task.id]:
                        await emit("task", task_summary(task))
            seen = now
            await anyio.sleep(_LIST_POLL_S)

    return produce


def task_feed(source: Source, task_id: str) -> Callable[[Emit], Any]:
    """`task` at each state change, `log` as its logs are written, `end` once both ended."""

    async def produce(emit: Emit) -> None:
        await source.task(task_id)  # NotFound before anything else is sent
        async with anyio.create_task_group() as tg:

            async def states() -> None:
                async for task in source.watch(task_id):
                    await emit("task", task.to_json())

            async def logs() -> None:
                utf8 = codecs.getincrementaldecoder("utf-8")
                decoders = {stream: utf8("replace") for stream in LOG_STREAMS}
                async for chunk in source.logs(task_id):  # type: ignore[attr-defined]
                    text = decoders[chunk.stream].decode(chunk.data)
                    log = {"stream": chunk.stream, "offset": chunk.offset, "text": text}
                    await emit("log", log)

            tg.start_soon(states)
            if "logs" in source.features:
                tg.start_soon(logs)
        await emit("end", {"id": task_id})

    return produce
