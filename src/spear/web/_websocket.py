"""A WebSocket bound to one task's caller stream (a `websocket` route, _triggers.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import orjson
from loguru import logger

from spear.core.models import TaskState
from spear.errors import ResourceExhausted, SpearError, Unavailable

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

    from spear.node.api import NodeAPI, StreamingTask

# Browsers cannot set headers on a WebSocket: one offers the subprotocols "spear" and
# "bearer.<token>" instead, and the handshake accepts "spear" (never echoing the token).
SUBPROTOCOL = "spear"
BEARER_SUBPROTOCOL = "bearer."
_WS_CLOSE_GRACE_S = 5.0  # after the browser left, how long the task has to end by itself


class WebSocketSession:
    """A WebSocket bound to one task's caller stream, both ways, with backpressure: a
    browser message is read only once the task's input queue took the one before, and a
    task's message is taken only once the browser's connection took the one before."""

    def __init__(
        self, api: NodeAPI, spec: Any, rid: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.api = api
        self.scope = scope
        self.spec = spec
        self.request_id = rid
        self.receive = receive
        self.send = send
        self.browser_gone = False

    async def serve(self) -> None:
        accepted = False
        try:
            async with self.api.start_task(self.spec) as task:
                accept: dict[str, Any] = {
                    "type": "websocket.accept",
                    "headers": [
                        (b"x-request-id", self.request_id.encode()),
                        (b"x-spear-task", task.id.encode()),
                    ],
                }
                if SUBPROTOCOL in (self.scope.get("subprotocols") or ()):
                    accept["subprotocol"] = SUBPROTOCOL
                await self.send(accept)
                accepted = True
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._inbound, task, tg.cancel_scope)
                    await self._outbound(task)
                    tg.cancel_scope.cancel()
        except SpearError as exc:
            logger.info("WebSocket {}: {}", self.request_id, exc)
            if not accepted:  # refused before it started
                await deny(self.scope, self.send, 503, str(exc), self.request_id)
            elif not self.browser_gone:
                reason = f"{exc.code}: {exc}"[:120]
                await self.send({"type": "websocket.close", "code": 1011, "reason": reason})

    async def _inbound(self, task: StreamingTask, scope: anyio.CancelScope) -> None:
        while True:
            message: Message = await self.receive()
            if message["type"] == "websocket.disconnect":
                self.browser_gone = True
                await task.close()
                with anyio.move_on_after(_WS_CLOSE_GRACE_S) as waited:
                    await task.wait()
                if waited.cancelled_caught:
                    await task.cancel("the browser closed the WebSocket")
                scope.cancel()
                return
            if message["type"] != "websocket.receive":
                continue
            data = message.get("bytes")
            payload = data if data is not None else message.get("text", "")
            try:
                await task.send(payload)
            except Unavailable:
                return  # the task stopped reading: its end closes the socket
            except ResourceExhausted as exc:
                await self.send({"type": "websocket.close", "code": 1009, "reason": str(exc)[:120]})
                await task.cancel("message too large")
                return

    async def _outbound(self, task: StreamingTask) -> None:
        async for message in task.messages():
            try:
                text = message.decode("utf-8")
            except UnicodeDecodeError:
                await self.send({"type": "websocket.send", "bytes": message})
            else:
                await self.send({"type": "websocket.send", "text": text})
        finished = await task.wait()
        if self.browser_gone:
            return
        if finished.state is TaskState.COMPLETED:
            await self.send({"type": "websocket.close", "code": 1000, "reason": "the task ended"})
        else:
            reason = f"task {finished.id} {finished.state.value.lower()}: {finished.reason}"
            await self.send({"type": "websocket.close", "code": 1011, "reason": reason[:120]})


async def deny(scope: Scope, send: Send, status: int, message: str, request_id: str) -> None:
    """Refuse a WebSocket handshake with an HTTP answer (the websocket.http.response
    extension), or a plain close (403 to the client) where the server lacks it."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        data = orjson.dumps({"error": message, "request_id": request_id})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"x-request-id", request_id.encode()),
        ]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": data})
        return
    await send({"type": "websocket.close", "code": 1008, "reason": f"{status}: {message}"[:120]})
