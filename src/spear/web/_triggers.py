"""HTTP triggers and WebSocket streams: requests to a route run its agent as a task.

HTTP (`kind = "http"`): the request becomes the task's environment and stdin (_cgi.py);
what the task writes to stdout is the response, sent as it is written (chunked, or
server-sent events when the agent says `Content-Type: text/event-stream`). WebSocket
(`kind = "websocket"`): the connection starts the task with its caller stream; each
browser message is a message to the task, each message of the task one to the browser.

The task is submitted through the node's NodeAPI, so in a cluster it runs where the
scheduler places it and its output or stream is relayed through this node. Every answer
carries `x-request-id`; a task that fails before its response started is a 5xx naming it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from loguru import logger

from spear.core.models import Task, TaskState
from spear.errors import ResourceExhausted, SpearError, Unavailable
from spear.web._cgi import ResponseHead, request_env
from spear.web._direct import DirectRunner, RequestRecord, RoutePlan, with_fields
from spear.web._websocket import BEARER_SUBPROTOCOL, WebSocketSession, deny

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from spear.core.worker import Execution
    from spear.node.api import NodeAPI
    from spear.transport.auth import TokenStore
    from spear.web._routes import Route, RouteTable

_HEAD_GRACE_S = 5.0  # past a route's timeout, how long the node has to report the task's end
_END = object()
_OVERFLOW = object()
# An agent writes to stdout without waiting (WASI fd_write cannot be told to), so what a
# slow client has not taken yet is held here; past this much the task is stopped and the
# response cut off, rather than holding more.
MAX_PENDING_BYTES = 16 * 1024**2


def new_request_id() -> str:
    # (an id to look a request up by, not a secret: the random module's, no system call)
    return f"{random.getrandbits(64):016x}"


class Triggers:
    """The ASGI endpoint behind every route path (the app's last, catch-all route)."""

    def __init__(self, api: NodeAPI, table: RouteTable, tokens: TokenStore | None) -> None:
        self.api = api
        self.table = table
        self.tokens = tokens
        self._busy: dict[str, int] = {}
        self.direct = DirectRunner(api)  # request mode (web/_direct.py)
        self.served = 0
        self.failed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self._http(scope, receive, send)

    # -- shared ------------------------------------------------------------------------

    def _refusal(self, route: Route, scope: Scope) -> tuple[int, str] | None:
        """Who may call `route`: anyone if it is public, else a submitter's token."""
        if route.public:
            return None
        from spear.transport.auth import Role

        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, rest = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and rest.strip():
                    token = rest.strip()
        if token is None:  # a browser's WebSocket: new WebSocket(url, ["spear", "bearer.TOKEN"])
            for offered in scope.get("subprotocols") or ():
                if offered.startswith(BEARER_SUBPROTOCOL):
                    token = offered[len(BEARER_SUBPROTOCOL) :]
        if token is None:
            return 401, f"{route.path} needs a token (Authorization: Bearer ...)"
        principal = self.tokens.verify(token) if self.tokens is not None else None
        if principal is None:
            return 401, "the token was not accepted (unknown or revoked)"
        if principal.role < Role.SUBMITTER:
            return 403, f"{principal.name} ({principal.role.name.lower()}) may not run tasks"
        return None

    def _take_slot(self, route: Route) -> bool:
        busy = self._busy.get(route.path, 0)
        if busy >= route.concurrency:
            return False
        self._busy[route.path] = busy + 1
        return True

    def _give_slot(self, route: Route) -> None:
        self._busy[route.path] -= 1

    def _spec(
        self, route: Route, scope: Scope, rest: str, body_length: int, request_id: str
    ) -> Any:
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
        client = scope.get("client")
        env = request_env(
            method=scope.get("method", "GET"),
            path=scope["path"],
            script_name=route.base,
            path_info=rest,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body_length=body_length,
            client=client[0] if client else "",
            server=scope.get("server"),
            request_id=request_id,
            route=route.path,
        )
        spec = route.spec
        timeout = (
            route.timeout_s if spec.timeout_s is None else min(spec.timeout_s, route.timeout_s)
        )
        if route.mode == "request":  # (checked when the route was added: not again)
            return with_fields(spec, env=(*spec.env, *env), timeout_s=timeout)
        return dataclasses.replace(spec, env=(*spec.env, *env), timeout_s=timeout)

    # -- HTTP --------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        found = self.table.match(scope["path"])
        if found is None:
            await _json(send, 404, {"error": f"no route for {scope['path']}"}, request_id)
            return
        route, rest = found
        if route.kind != "http":
            await _json(send, 426, {"error": f"{route.path} is a WebSocket route"}, request_id)
            return
        method = scope["method"]
        if method not in route.methods:
            extra = [(b"allow", ", ".join(route.methods).encode())]
            await _json(send, 405, {"error": f"{route.path} takes {', '.join(route.methods)}"},
                        request_id, extra)  # fmt: skip
            return
        refused = self._refusal(route, scope)
        if refused is not None:
            await _json(send, refused[0], {"error": refused[1]}, request_id)
            return
        if not self._take_slot(route):
            await _json(send, 503, {"error": f"{route.path} is at its concurrency limit"},
                        request_id, [(b"retry-after", b"1")])  # fmt: skip
            return
        try:
            try:
                body = await _read_body(receive, route.max_body_bytes)
            except ClientGone:
                return  # nobody to run it for
            if body is None:
                await _json(send, 413, {"error": f"the body is over {route.max_body_bytes} bytes"},
                            request_id)  # fmt: skip
                return
            if route.mode == "request":
                await self._direct(route, rest, body, request_id, scope, receive, send)
            else:
                spec = self._spec(route, scope, rest, len(body), request_id)
                await _Exchange(self, route, spec, body, request_id).serve(receive, send)
        finally:
            self._give_slot(route)

    async def _direct(
        self, route: Route, rest: str, body: bytes, request_id: str,
        scope: Scope, receive: Receive, send: Send,
    ) -> None:  # fmt: skip
        """A request-mode request: its guest run here, what is kept of it in the log."""
        record = RequestRecord(request_id, route.path, scope["method"], scope["path"], time.time())
        started = time.monotonic()
        plan = self.direct.plan(route)
        exchange = _DirectExchange(self, route, plan, body, request_id, record, scope, rest)
        exchange.as_task = not self.direct.here(plan.spec)  # (draining, or placed elsewhere)
        try:
            # (answered here, it notes its status itself; relayed, `noting` does)
            if not await exchange.answer_now(send):

                async def noting(message: Any) -> None:
                    if message["type"] == "http.response.start":
                        record.status = message["status"]
                    await send(message)

                await exchange.serve(receive, noting)
        finally:
            record.seconds = time.monotonic() - started
            if exchange.task_id is not None:
                record.ran = f"task {exchange.task_id}"
            self.direct.log.add(record)
            if record.failed:
                why = record.reason or "see its record"
                logger.warning("request {} to {} answered {}: {}", request_id, route.path,
                               record.status or "nothing", why)  # fmt: skip

    # -- WebSocket ---------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        found = self.table.match(scope["path"])
        if found is None or found[0].kind != "websocket":
            await deny(scope, send, 404, f"no WebSocket route for {scope['path']}", request_id)
            return
        route, rest = found
        refused = self._refusal(route, scope)
        if refused is not None:
            await deny(scope, send, refused[0], refused[1], request_id)
            return
        if not self._take_slot(route):
            await deny(scope, send, 503, f"{route.path} is at its concurrency limit", request_id)
            return
        try:
            spec = self._spec(route, scope, rest, 0, request_id)
            await WebSocketSession(self.api, spec, request_id, scope, receive, send).serve()
        finally:
            self._give_slot(route)


class _Overflow(Exception):
    """The agent wrote more than MAX_PENDING_BYTES ahead of the client."""


class _Exchange:
    """One HTTP request's task: run it, relay its output as the response."""

    def __init__(self, triggers: Triggers, route: Route, spec: Any, body: bytes, rid: str) -> None:
        self.triggers = triggers
        self.api = triggers.api
        self.route = route
        self.spec = spec
        self.body = body
        self.request_id = rid
        self.task_id: str | None = None
        self.task: Task | None = None
        self.error: BaseException | None = None
        self.ended = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pending = 0  # bytes queued, not yet sent (see MAX_PENDING_BYTES)
        self._overflowed = anyio.Event()
        self._head_sent = anyio.Event()
        self._headers = [(b"x-request-id", rid.encode())]

    def _out(self, data: bytes) -> None:
        # Called as the task writes: from the event loop (a guest run inline, a relay) or
        # from the guest's worker thread.
        if threading.get_ident() == self._loop_thread:
            self._put(data)
        else:
            self._loop.call_soon_threadsafe(self._put, data)

    def _put(self, data: bytes) -> None:
        if self._pending > MAX_PENDING_BYTES:
            return  # (already overflowing: the task is being stopped)
        self._pending += len(data)
        if self._pending <= MAX_PENDING_BYTES:
            self._queue.put_nowait(data)
        else:
            self._queue.put_nowait(_OVERFLOW)
            self._overflowed.set()

    def _created(self, task: Task) -> None:
        self.task_id = task.id
        self._headers.append((b"x-spear-task", task.id.encode()))

    async def _run(self) -> None:
        try:
            self.task = await self.api.run(
                self.spec, stdin=self.body or None, stdout=self._out, on_created=self._created
            )
        except Exception as exc:  # (the node refused it, or the cluster lost it)
            self.error = exc
        finally:
            self._queue.put_nowait(_END)

    async def serve(self, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:
            # (named: anyio otherwise works out each one's name, which costs)
            tg.start_soon(self._run, name="run")
            tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope, name="disconnect")
            tg.start_soon(self._watch_overflow, tg.cancel_scope, name="overflow")
            try:
                await self._respond(send)
            finally:
                if not self.ended:
                    with anyio.CancelScope(shield=True):
                        await self._cancel("the client went away")
                tg.cancel_scope.cancel()

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _watch_overflow(self, scope: anyio.CancelScope) -> None:
        # Streaming, the responder may be held in `send` by the slow client, where it
        # would never see the overflow in the queue: stop the task and cut the response.
        await self._overflowed.wait()
        await self._head_sent.wait()  # (before it, the responder reads the queue itself)
        with anyio.CancelScope(shield=True):
            await self._cancel("the client read its response too slowly")
        scope.cancel()

    async def _cancel(self, reason: str) -> None:
        if self.task_id is not None and not self.ended:
            try:
                await self.api.cancel(self.task_id, reason)
            except SpearError:
                pass  # it ended meanwhile

    async def _next(self, deadline: float) -> Any:
        with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
            item = await self._queue.get()
        if item is _END:
            self.ended = True
        elif item is _OVERFLOW:
            raise _Overflow
        else:
            self._pending -= len(item)
        return item

    async def _respond(self, send: Send) -> None:
        head = ResponseHead()
        deadline = anyio.current_time() + self.route.timeout_s + _HEAD_GRACE_S
        try:
            while not head.done:
                item = await self._next(deadline)
                if item is _END:
                    head.end()
                    break
                head.feed(item)
        except TimeoutError:
            await self._cancel("no response in time")
            await self._fail(send, 504, "the agent sent no response in time")
            return
        except _Overflow:
            await self._cancel("its response head was too large")
            await self._fail(send, 502, "the agent's response head was too large")
            return
        first = [head.body_start]
        while not self.ended and not self._queue.empty():  # what is already written
            item = self._queue.get_nowait()
            if item is _END:
                self.ended = True
            elif item is _OVERFLOW:
                await self._cancel("it wrote too much at once")
                await self._fail(send, 502, "the agent wrote more than the node holds for a client")
                return
            else:
                self._pending -= len(item)
                first.append(item)
        if self.ended:
            failure = self._failure()
            if failure is not None:
                await self._fail(send, *failure)
                return
        headers = [*head.headers, *self._headers]
        body = b"".join(first)
        if self.ended:  # the whole answer is here: one message with its length, no chunks
            if not any(name == b"content-length" for name, _ in head.headers):
                headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": head.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            self.triggers.served += 1
            return
        await send({"type": "http.response.start", "status": head.status, "headers": headers})
        self._head_sent.set()
        if body:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        while True:
            # (the task's own timeout ends it; this bound only covers a lost node)
            try:
                item = await self._next(deadline + self.route.timeout_s)
            except TimeoutError:
                await self._cancel("no end in time")
                return  # the response is left unfinished: the client sees it broken
            except _Overflow:
                await self._cancel("the client read its response too slowly")
                return
            if item is _END:
                break
            await send({"type": "http.response.body", "body": item, "more_body": True})
        if self._failure() is not None:
            self.triggers.failed += 1
            logger.info("request {} ({}): the task failed mid-response", self.request_id,
                        self.task_id)  # fmt: skip
            return  # left unfinished: a failure after the head must not read as success
        await send({"type": "http.response.body", "body": b""})
        self.triggers.served += 1

    def _failure(self) -> tuple[int, str] | None:
        if self.error is not None:
            status = 503 if isinstance(self.error, Unavailable | ResourceExhausted) else 500
            return status, str(self.error)
        task = self.task
        if task is None or task.state is TaskState.COMPLETED:
            return None
        if task.exit_code == 124:
            return 504, f"the agent ran out of time ({self.route.timeout_s:g} s)"
        return 502, f"the agent failed: {task.reason or task.state.value}"

    async def _fail(self, send: Send, status: int, message: str) -> None:
        self.triggers.failed += 1
        body: dict[str, Any] = {"error": message, "request_id": self.request_id}
        if self.task_id is not None:
            body["task_id"] = self.task_id
        logger.info("request {} answered {}: {}", self.request_id, status, message)
        await _json(send, status, body, self.request_id, self._headers[1:])


class _DirectExchange(_Exchange):
    """A request-mode request: the guest runs in this process (web/_direct.py), inline
    on the loop when it can (then answered in one piece, no relay), else on a worker
    thread with its output relayed exactly as a task's; one that cannot run here (its
    module needs more than WASI) runs as a task."""

    def __init__(
        self, triggers: Triggers, route: Route, plan: RoutePlan, body: bytes, rid: str,
        record: RequestRecord, scope: Scope, rest: str,
    ) -> None:  # fmt: skip
        # The relay's parts (`_Exchange.__init__`: its queue, events) are made only if the
        # guest does not run inline (`_relay`); an inline run's output is held here.
        self.triggers = triggers
        self.route = route
        self.plan = plan
        self.spec = plan.spec  # (with the request's variables only if it runs as a task)
        self.scope = scope
        self.rest = rest
        self.body = body
        self.request_id = rid
        self.record = record
        self.task_id = None
        self.task = None
        self.error = None
        self.ended = False
        self.execution: Execution | None = None
        self.as_task = False  # run it as a task: as in task mode, only recorded here
        self._relaying = False
        self._held: list[bytes] = []
        self._held_bytes = 0

    def _relay(self) -> None:
        if self.as_task:  # a task gets the request's variables in its spec, as in task mode
            self.spec = self.triggers._spec(
                self.route, self.scope, self.rest, len(self.body), self.request_id
            )
        super().__init__(self.triggers, self.route, self.spec, self.body, self.request_id)
        self._relaying = True

    def _stdout(self, data: bytes) -> None:
        if self._relaying:
            self._out(data)
        else:
            self._held_bytes += len(data)
            self._held.append(data)

    async def answer_now(self, send: Send) -> bool:
        """Start the guest and, if it can run inline, run it and answer: True if the
        request is answered, False if `serve` must run it (on a thread, or as a task)."""
        if self.as_task:
            self._relay()
            return False
        try:
            env = self.plan.env.encode(self.scope, self.rest, len(self.body), self.request_id)
            started = await self.triggers.direct.start(
                self.spec, self.request_id, self.body or None, self._stdout,
                self.record.write_stderr, env,
            )  # fmt: skip
        except Exception as exc:  # (no such module, not a module, it cannot be linked)
            self.record.reason = str(exc)
            self.error = exc
            await self._fail(send, *(self._failure() or (500, str(exc))))
            return True
        if started is None:
            self.as_task = True
            self._relay()
            return False
        self.execution = execution = started[0]
        execution.prefer_inline = True  # type: ignore[attr-defined]
        outcome = execution.run_now()
        if outcome is None:
            self._held.clear()  # (a run moved off the loop starts again: nothing was sent)
            self._relay()
            return False
        self.ended = True
        self.execution = None  # (it holds this exchange's output: no cycle left for the GC)
        self._ended(outcome)
        if self._held_bytes > MAX_PENDING_BYTES:
            await self._fail(send, 502, "the agent wrote more than the node holds for a client")
            return True
        failure = self._failure()
        if failure is not None:
            await self._fail(send, *failure)
            return True
        held = self._held
        answer = self.plan.answer(held[0] if len(held) == 1 else b"".join(held))
        headers = [*answer.headers, (b"x-request-id", self.request_id.encode()), *answer.length]
        self.record.status = answer.status
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})
        self.triggers.served += 1
        return True

    def _ended(self, outcome: Any) -> None:
        if outcome.state is TaskState.COMPLETED:
            return  # (no task: `_failure` finds none)
        self.record.exit_code = outcome.exit_code
        self.record.reason = outcome.reason or outcome.state.value
        self.task = Task(id="", spec=self.spec, state=outcome.state,
                         exit_code=outcome.exit_code, reason=outcome.reason)  # fmt: skip

    async def _run(self) -> None:
        if self.as_task:  # (it needs more than WASI, or runs elsewhere) as in task mode
            await super()._run()
            return
        assert self.execution is not None
        try:
            # Shielded: a client that goes away has the guest killed (`_cancel`), and
            # this waits for it to stop before its slot is given back.
            with anyio.CancelScope(shield=True):
                outcome = await self.execution.wait()
            self._ended(outcome)
        except Exception as exc:
            self.error = exc
            self.record.reason = str(exc)
        finally:
            self._queue.put_nowait(_END)

    async def _cancel(self, reason: str) -> None:
        if self.execution is None:
            await super()._cancel(reason)
        elif not self.ended:
            self.execution.kill(reason)

    async def _fail(self, send: Send, status: int, message: str) -> None:
        if self.task_id is not None:
            await super()._fail(send, status, message)  # (it ran as a task)
            return
        self.triggers.failed += 1
        self.record.reason = self.record.reason or message
        self.record.status = status
        body = {"error": message, "request_id": self.request_id,
                "lookup": f"spear route requests {self.request_id}"}  # fmt: skip
        await _json(send, status, body, self.request_id)


class ClientGone(Exception):
    """The client disconnected before its request's body was read."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it is over `limit` bytes (nothing more is read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _json(
    send: Send,
    status: int,
    body: dict[str, Any],
    request_id: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body.setdefault("request_id", request_id)
    data = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"x-request-id", request_id.encode()),
        *(extra or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
