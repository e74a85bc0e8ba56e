"""Model operations an agent may ask of its host, independent of how it asks (the AI part
of the hostcall controller; `hostops` has the rest and the conventions).

A chat completion runs as a *call*: `chat_start` validates the request, picks the model
(the router's allow-list for this task applies) and returns a handle at once; the
inference runs on the node's event loop (its backend's threads for the local model) and
the handle becomes readable as it produces. A streaming call delivers the text as it is
generated (`chat_read`, one piece per read, in order); every call ends with its response
(`chat_result`, an OpenAI `chat.completion` object, tool calls included) or an error.
`poll` on the handle wakes for both. Closing the handle, or the task ending, stops the
inference and frees its slot in the backend's concurrency limit.

errno meanings beside hostops':
    EINVAL        a malformed request, or one the backend refused
    ENOENT        no such model on this node
    EACCES        the task may not use that model (or the backend refused its credential)
    ECONNREFUSED  the model's backend is down or broken
    ETIMEDOUT     the model did not answer within its timeout
    EMFILE        too many calls open in this task
    ECANCELED     the call was stopped (its handle closed, or the task ended)
"""

from __future__ import annotations

import errno
import json
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from spear.core.streams import POLLHUP, POLLIN
from spear.errors import (
    DeadlineExceeded,
    PermissionDenied,
    ResourceExhausted,
    SpearError,
    Unavailable,
)
from spear.runtimes.host.ops import ErrnoTable, HostError, add_handle, translate
from spear.runtimes.host.traced_models import model_span

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    from spear.core.streams import TaskStreams
    from spear.core.worker import TaskContext
    from spear.models.router import ModelRouter

MAX_CALLS_PER_TASK = 64


# What model calls mean differently from object calls: a backend's failures, and a full
# queue of calls (EMFILE, "too many open") rather than a full store (EDQUOT).
_MODEL_ERRNOS: ErrnoTable = (
    (DeadlineExceeded, errno.ETIMEDOUT),
    (Unavailable, errno.ECONNREFUSED),
    (PermissionDenied, errno.EACCES),
    (ResourceExhausted, errno.EMFILE),
)


def _router(ctx: TaskContext) -> ModelRouter:
    router: ModelRouter | None = ctx.services.models
    if router is None:
        raise HostError(errno.ENOSYS, "this node offers no AI models")
    return router


def _refused(ctx: TaskContext, exc: SpearError) -> HostError:
    err = translate(exc, _MODEL_ERRNOS)
    ctx.agent_log("WARNING", f"model call failed: {err}")
    return err


class ModelCall:
    """The handle-table entry of one chat completion. Filled on the event loop, read from
    the agent's thread: every field is guarded by the task's readiness condition."""

    def __init__(self, streams: TaskStreams | None, streaming: bool) -> None:
        self._streams = streams
        self.streaming = streaming
        self._deltas: deque[bytes] = deque()
        self._response: bytes | None = None
        self._error: HostError | None = None
        self._done = False
        self._closed = False
        self._scope: anyio.CancelScope | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _changed(self) -> None:
        if self._streams is not None:
            self._streams.notify()

    # -- the producing side (event loop) ----------------------------------------------

    def push(self, text: str) -> None:
        with self._lock:
            self._deltas.append(text.encode())
        self._changed()

    def finish(self, response: dict[str, Any]) -> None:
        with self._lock:
            self._response = json.dumps(response, separators=(",", ":")).encode()
            self._done = True
        self._changed()

    def fail(self, error: HostError) -> None:
        with self._lock:
            if self._done:
                return
            self._error = error
            self._done = True
        self._changed()

    # -- the agent's side (any thread) ------------------------------------------------

    def readiness(self) -> int:
        with self._lock:
            if self._deltas:
                return POLLIN
            return POLLIN | POLLHUP if self._done else 0

    def read(self, capacity: int | None) -> bytes:
        with self._lock:
            if self._deltas:
                piece = self._deltas[0]
                if capacity is not None and len(piece) > capacity:
                    raise HostError(errno.ENOSPC, "buffer too small", needed=len(piece))
                return self._deltas.popleft()
            if not self._done:
                raise HostError(errno.EAGAIN, "no text yet")
            if self._error is not None:
                raise self._error
            raise HostError(errno.EPIPE, "the completion has ended")

    def result(self, capacity: int | None) -> bytes:
        with self._lock:
            if not self._done:
                raise HostError(errno.EAGAIN, "the completion is not finished yet")
            if self._error is not None:
                raise self._error
            assert self._response is not None
            if capacity is not None and len(self._response) > capacity:
                raise HostError(errno.ENOSPC, "buffer too small", needed=len(self._response))
            return self._response

    def error_message(self) -> str:
        with self._lock:
            return "" if self._error is None else str(self._error)

    def bind(self, scope: anyio.CancelScope, loop: asyncio.AbstractEventLoop) -> bool:
        """The running inference's cancel scope; False if the handle closed already."""
        with self._lock:
            self._scope, self._loop = scope, loop
            return not self._closed

    def close(self) -> None:
        """Stop the inference (from any thread); nothing more arrives."""
        with self._lock:
            self._closed = True
            scope, loop = self._scope, self._loop
        if scope is not None and loop is not None:
            loop.call_soon_threadsafe(scope.cancel)
        self.fail(HostError(errno.ECANCELED, "the call was closed"))

    async def run(
        self,
        work: Callable[[], Awaitable[dict[str, Any]]],
        refused: Callable[[SpearError], HostError],
    ) -> None:
        """Run `work` on the event loop as this call's work: its answer finishes the
        call, its failure fails it; closing the handle cancels it."""
        import asyncio

        with anyio.CancelScope() as scope:
            if not self.bind(scope, asyncio.get_running_loop()):
                return
            try:
                self.finish(await work())
            except HostError as exc:
                self.fail(exc)
            except SpearError as exc:
                self.fail(refused(exc))
            except Exception as exc:  # a host bug: the agent must not wait forever
                self.fail(HostError(errno.EIO, f"host error: {exc}"))
                raise
        if scope.cancelled_caught:
            self.fail(HostError(errno.ECANCELED, "the call was stopped"))


def _calls(ctx: TaskContext) -> int:
    return sum(1 for entry in list(ctx.handles.values()) if isinstance(entry, ModelCall))


async def chat_start(ctx: TaskContext, request: Any, *, stream: bool) -> int:
    """Start a chat completion (a request dict, or its JSON); the call's handle."""
    import asyncio

    from spear.models.base import ChatAccumulator, ChatRequest

    router = _router(ctx)
    try:
        parsed = ChatRequest.from_json(request)
        router.route(parsed.model, ctx.task)  # unknown or forbidden models fail here, at once
    except SpearError as exc:
        raise _refused(ctx, exc) from None
    if _calls(ctx) >= MAX_CALLS_PER_TASK:
        raise HostError(errno.EMFILE, f"at most {MAX_CALLS_PER_TASK} model calls per task")
    registry = ctx.services.streams
    streams = registry.for_task(ctx.task.id) if registry is not None else None
    call = ModelCall(streams, stream)
    loop = asyncio.get_running_loop()

    def model_of() -> str:
        return router.route(parsed.model, ctx.task).name

    async def run() -> None:
        with model_span(ctx, "chat", model_of), anyio.CancelScope() as scope:
            if not call.bind(scope, loop):
                return
            try:
                if stream:
                    acc = ChatAccumulator(parsed.model or "")
                    chunks = router.stream_chat(parsed, ctx.task)
                    try:
                        async for chunk in chunks:
                            acc.add(chunk)
                            if chunk.content:
                                call.push(chunk.content)
                    finally:
                        with anyio.CancelScope(shield=True):
                            await chunks.aclose()  # type: ignore[attr-defined]
                    model = router.route(parsed.model, ctx.task).name
                    acc.model = model
                    call.finish(acc.response().to_json())
                else:
                    call.finish((await router.chat(parsed, ctx.task)).to_json())
            except SpearError as exc:
                call.fail(_refused(ctx, exc))
            except Exception as exc:  # a host bug: the agent must not wait forever
                call.fail(HostError(errno.EIO, f"host error: {exc}"))
                raise
        if scope.cancelled_caught:
            call.fail(HostError(errno.ECANCELED, "the call was stopped"))

    try:
        router.spawn(ctx.task.id, run)
    except SpearError as exc:
        raise _refused(ctx, exc) from None
    return add_handle(ctx, call)


def _call(ctx: TaskContext, handle: int) -> ModelCall:
    entry = ctx.handles.get(handle)
    if entry is None:
        raise HostError(errno.EBADF, f"no open handle {handle}")
    if not isinstance(entry, ModelCall):
        raise HostError(errno.EBADF, f"handle {handle} is not a model call")
    return entry


def chat_read(ctx: TaskContext, handle: int, capacity: int | None = None) -> bytes:
    """The next piece of a streaming call's text. EAGAIN: none yet; EPIPE: the text is
    complete (read the result); the call's own error if it failed; ENOSPC with `needed`."""
    return _call(ctx, handle).read(capacity)


def chat_result(ctx: TaskContext, handle: int, capacity: int | None = None) -> bytes:
    """The call's response, a `chat.completion` JSON object. EAGAIN: not finished yet;
    the call's own error if it failed; ENOSPC with `needed` (the response is kept)."""
    return _call(ctx, handle).result(capacity)


def chat_error(ctx: TaskContext, handle: int) -> str:
    """Why a call failed ("" if it has not)."""
    return _call(ctx, handle).error_message()


async def chat(ctx: TaskContext, request: Any) -> dict[str, Any]:
    """A whole chat completion in one operation (for callers that can simply wait)."""
    from spear.models.base import ChatRequest

    router = _router(ctx)
    try:
        parsed = ChatRequest.from_json(request)
        with model_span(ctx, "chat", lambda: router.route(parsed.model, ctx.task).name):
            return (await router.chat(parsed, ctx.task)).to_json()
    except SpearError as exc:
        raise _refused(ctx, exc) from None


async def embed(ctx: TaskContext, request: Any) -> dict[str, Any]:
    """Embeddings of `{"model"?, "input": str | [str]}`: an OpenAI embeddings list."""
    from spear.models.base import embedding_inputs

    router = _router(ctx)
    try:
        model, inputs = embedding_inputs(request)
        with model_span(ctx, "embed", lambda: router.route(model, ctx.task).name):
            return (await router.embed(inputs, model, ctx.task)).to_json()
    except SpearError as exc:
        raise _refused(ctx, exc) from None


async def dispatch(
    ctx: TaskContext, op: str, header: dict[str, Any], body: bytes
) -> tuple[Any, bytes]:
    """The process-agent channel's model operations (`model_*`): (JSON result, body)."""
    if op == "model_chat":
        return await chat(ctx, body), b""
    if op == "model_chat_start":
        return await chat_start(ctx, body, stream=bool(header.get("stream"))), b""
    if op == "model_chat_read":
        return None, chat_read(ctx, int(header["handle"]), header.get("capacity"))
    if op == "model_chat_result":
        return json.loads(chat_result(ctx, int(header["handle"]))), b""
    if op == "model_embed":
        return await embed(ctx, body), b""
    raise HostError(errno.ENOSYS, f"no such operation: {op!r}")
