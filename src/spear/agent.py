"""The Python SDK for process agents: hostcalls to the SPEARlet that runs this task.

    from spear import agent

    agent.log("starting")
    agent.put("counts/a", b"1")
    value = agent.get("counts/a")
    for message in agent.messages():      # the caller stream
        agent.send(message.upper())
    agent.set_result(b"done")

The module-level functions use one connection, opened on first use from the environment
the runtime sets (`SPEAR_AGENT_SOCKET`, `SPEAR_AGENT_TOKEN`); `Agent()` opens another
(one per thread, if threads call concurrently), and `AsyncAgent` is the asyncio flavour
with the same methods as coroutines (calls on one `AsyncAgent` may overlap). Failures
raise `HostcallError`, an `OSError` whose `errno` is the operation's (see
docs/hostcalls.md); `ChannelClosed` when the node closes the channel (the task is ending).

Every agent process loads this module first, so it imports what a new interpreter has
loaded already (`os`, `errno`, `_thread`) and nothing else until it is used: not
`typing`, `dataclasses`, `threading` nor `socket` (each pulls in `enum`, `functools`,
`collections`, `re`, ...). The sync connection is a `_socket.socket`, the C type behind
`socket.socket`; JSON is loaded by the first call (`python -X importtime -c "from spear
import agent"` shows what is left).
"""

from __future__ import annotations

import _thread
import errno
import os

from spear import _agent_wire as wire

TYPE_CHECKING = False  # (typing.TYPE_CHECKING, without importing typing)
if TYPE_CHECKING:
    import _socket
    import asyncio
    from collections.abc import AsyncIterator, Iterator
    from typing import Any

POLLIN = 0x1
POLLOUT = 0x4
_CHANNEL_CLOSED = "the SPEARlet closed the hostcall channel (is the task ending?)"


class HostcallError(OSError):
    """An operation failed; `errno` says why (ENOENT, ESTALE, EAGAIN, ...)."""

    def __init__(self, err: int, message: str, needed: int | None = None) -> None:
        super().__init__(err, message)
        self.needed = needed


class ChannelClosed(HostcallError):
    """The channel to the SPEARlet is gone."""

    def __init__(self, message: str = _CHANNEL_CLOSED) -> None:
        super().__init__(errno.ECONNRESET, message)


# A copy of the node's ObjectInfo (spear.store.object_info) for process agents, kept
# here so the SDK imports nothing of spear but its wire module (a process agent starts
# fast; not even dataclasses); its field names (refcount) are the agent wire's.
class ObjectInfo:
    """An object's metadata: key, size, version, refcount, pinned (read-only)."""

    __slots__ = ("key", "pinned", "refcount", "size", "version")
    key: str
    size: int
    version: int
    refcount: int
    pinned: bool

    def __init__(self, key: str, size: int, version: int, refcount: int, pinned: bool) -> None:
        for name, value in zip(_INFO_FIELDS, (key, size, version, refcount, pinned), strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ObjectInfo is read-only (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ObjectInfo is read-only (cannot delete {name!r})")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _INFO_FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObjectInfo):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={v!r}" for n, v in zip(_INFO_FIELDS, self._fields(), strict=True))
        return f"ObjectInfo({fields})"


_INFO_FIELDS = ("key", "size", "version", "refcount", "pinned")


def _address(socket_path: str | None, token: str | None) -> tuple[str, str]:
    path = socket_path or os.environ.get(wire.ENV_SOCKET)
    secret = token or os.environ.get(wire.ENV_TOKEN)
    if not path or not secret:
        raise ChannelClosed(
            f"not running as a spear process agent ({wire.ENV_SOCKET} and {wire.ENV_TOKEN} "
            "are not set)"
        )
    return path, secret


def _raise_for(header: dict[str, Any]) -> None:
    if not header.get("ok"):
        raise HostcallError(
            int(header.get("errno", errno.EIO)),
            f"{header.get('error', '?')}: {header.get('message', '')}",
            header.get("needed"),
        )


def _version(expected_version: int | None) -> dict[str, Any]:
    return {} if expected_version is None else {"expected_version": expected_version}


class Agent:
    """A synchronous connection to the SPEARlet (one call at a time)."""

    def __init__(self, socket_path: str | None = None, token: str | None = None) -> None:
        self._path, self._token = _address(socket_path, token)
        self._sock: _socket.socket | None = None
        self._lock = _thread.allocate_lock()
        self._next_id = 0
        self._caller: int | None = None
        self.task_id = ""

    # -- the wire -------------------------------------------------------------------

    def _connect(self) -> _socket.socket:
        import _socket

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(self._path)
        except OSError as exc:
            sock.close()
            raise ChannelClosed(f"cannot reach the SPEARlet at {self._path}: {exc}") from None
        self._sock = sock
        header, _ = self._exchange(
            {"op": "hello", "token": self._token, "version": wire.VERSION}, b""
        )
        self.task_id = header["result"]["task_id"]
        return sock

    def _recv_exact(self, n: int) -> bytearray:
        assert self._sock is not None
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self._sock.recv_into(view[got:])
            except OSError:
                k = 0
            if k == 0:
                self._drop()
                raise ChannelClosed()
            got += k
        return buf

    def _exchange(self, header: dict[str, Any], body: bytes | memoryview) -> tuple[Any, bytes]:
        assert self._sock is not None
        self._next_id += 1
        header["id"] = self._next_id
        try:
            self._sock.sendmsg(wire.encode(header, body))
        except OSError:
            self._drop()
            raise ChannelClosed() from None
        head_len, body_len = wire.PREFIX.unpack(self._recv_exact(wire.PREFIX.size))
        reply = wire.parse_header(bytes(self._recv_exact(head_len)))
        out = bytes(self._recv_exact(body_len)) if body_len else b""
        _raise_for(reply)
        return reply, out

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, op: str, body: bytes | memoryview = b"", **args: Any) -> tuple[Any, bytes]:
        """One operation of docs/hostcalls.md: (its JSON result, its body bytes)."""
        with self._lock:
            if self._sock is None:
                self._connect()
            reply, out = self._exchange({"op": op, **args}, body)
            return reply.get("result"), out

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations -----------------------------------------------------------------

    def log(self, message: str, level: str = "INFO") -> None:
        """One line in the task's agent log (`spear logs ID --stream agent`)."""
        self.call("log", message=message, level=level)

    def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        """Write an object; its new version. `expected_version` 0: only if absent;
        N: only if at version N (else errno ESTALE)."""
        result, _ = self.call("obj_put", value, key=key, **_version(expected_version))
        return int(result)

    def get(self, key: str) -> bytes:
        """An object's value (errno ENOENT if there is none)."""
        return self.get_versioned(key)[0]

    def get_versioned(self, key: str) -> tuple[bytes, int]:
        result, value = self.call("obj_get", key=key)
        return value, int(result["version"])

    def info(self, key: str) -> ObjectInfo:
        result, _ = self.call("obj_info", key=key)
        return ObjectInfo(**result)

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        result, _ = self.call("obj_list", prefix=prefix)
        return [ObjectInfo(**r) for r in result]

    def delete(self, key: str, *, expected_version: int | None = None) -> None:
        self.call("obj_delete", key=key, **_version(expected_version))

    def add_ref(self, key: str) -> int:
        return int(self.call("obj_add_ref", key=key)[0])

    def remove_ref(self, key: str) -> int:
        return int(self.call("obj_remove_ref", key=key)[0])

    def pin(self, key: str) -> None:
        self.call("obj_pin", key=key)

    def unpin(self, key: str) -> None:
        self.call("obj_unpin", key=key)

    def set_result(self, value: bytes) -> int:
        """The task's result (instead of its stdout); the result object's version."""
        return int(self.call("result_set", value)[0])

    def caller(self) -> int:
        """The handle of the caller stream."""
        if self._caller is None:
            self._caller = int(self.call("stream_caller")[0])
        return self._caller

    def poll(self, interests: list[tuple[int, int]], timeout: float | None = None) -> list[int]:
        """poll(2) over handles: the ready bits of each (handle, events) pair."""
        result, _ = self.call("poll", interests=interests, timeout=timeout)
        return [int(r) for r in result]

    def receive(self, timeout: float | None = None) -> bytes | None:
        """The caller's next message; None once its input has ended. TimeoutError if
        none came within `timeout` seconds."""
        handle = self.caller()
        while True:
            try:
                return self.call("stream_read", handle=handle)[1]
            except HostcallError as exc:
                if exc.errno == errno.EPIPE:
                    return None
                if exc.errno != errno.EAGAIN:
                    raise
            if not any(self.poll([(handle, POLLIN)], timeout)):
                raise TimeoutError("no message from the caller")

    def messages(self) -> Iterator[bytes]:
        """The caller's messages until its input ends."""
        while (message := self.receive()) is not None:
            yield message

    def send(self, message: bytes | str) -> None:
        """One message to the caller, waiting while its queue is full (errno EPIPE if
        nobody reads it)."""
        data = message.encode() if isinstance(message, str) else message
        handle = self.caller()
        while True:
            try:
                self.call("stream_write", data, handle=handle)
                return
            except HostcallError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
            self.poll([(handle, POLLOUT)])

    def close_output(self) -> None:
        """No more messages to the caller (its iterator ends)."""
        self.call("close", handle=self.caller())

    # -- AI models (docs/models.md) ---------------------------------------------------

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """A chat completion: OpenAI's `chat.completion` object, tool calls included.
        `params`: max_tokens, temperature, top_p, stop, seed, tool_choice, ..."""
        body = _chat_body(messages, model, tools, params)
        return dict(self.call("model_chat", body)[0])

    def chat_stream(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        **params: Any,
    ) -> ChatStream:
        """A chat completion as it is generated: iterate for text pieces, then
        `.response` is the whole `chat.completion`."""
        body = _chat_body(messages, model, tools, params)
        return ChatStream(self, int(self.call("model_chat_start", body, stream=True)[0]))

    def embed(self, inputs: str | list[str], *, model: str | None = None) -> list[list[float]]:
        """One embedding vector per input."""
        result, _ = self.call("model_embed", _embed_body(inputs, model))
        return [list(row["embedding"]) for row in result["data"]]

    # -- MCP tools (docs/toolkit.md) ---------------------------------------------------

    def list_tools(self) -> list[dict[str, Any]]:
        """The MCP tools this task may call: `{"name": "server/tool", "description",
        "input_schema"}` each (servers that do not answer are left out)."""
        return list(self.call("tool_list")[0]["tools"])

    def call_tool(
        self, name: str, arguments: dict[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Call an MCP tool: `{"content", "text", "structured", "is_error"}`."""
        return dict(self.call("tool_call", _tool_body(name, arguments, timeout_s))[0])

    # -- vector store (docs/toolkit.md) -------------------------------------------------

    def vectors(self, op: str, collection: str | None = None, **fields: Any) -> Any:
        """One vector store request: `vectors("query", "docs", vector=[...], k=5,
        filter={"lang": "en"})`; ops create, drop, list, upsert, query, delete, count."""
        import json

        request = {"op": op, "collection": collection, **fields}
        return self.call("vec_request", json.dumps(request).encode())[0]

    def chat_loop(
        self,
        messages: list[dict[str, Any]],
        *,
        mcp: bool | list[str] = True,
        functions: dict[str, tuple[dict[str, Any], Any]] | None = None,
        max_steps: int = 8,
        then: str = "auto",
        **params: Any,
    ) -> ToolLoop:
        """A tool loop the host runs: MCP tools (globs in `mcp`) run on the node; each of
        `functions` (name -> (OpenAI function schema, a callable taking the arguments and
        returning text)) is answered here. Iterate for the events; then `.response`."""
        import json

        functions = functions or {}
        loop: dict[str, Any] = {"mcp": mcp, "max_steps": max_steps, "then": then}
        loop["functions"] = [
            {"type": "function", "function": {"name": name, **schema}}
            for name, (schema, _) in functions.items()
        ]
        body = json.dumps({"messages": messages, "loop": loop, **params}).encode()
        handle = int(self.call("tool_loop_start", body)[0])
        return ToolLoop(self, handle, {n: fn for n, (_, fn) in functions.items()})

    # -- subtasks (docs/toolkit.md) -----------------------------------------------------

    def spawn(
        self,
        artifact: str,
        args: list[str] | tuple[str, ...] = (),
        *,
        inputs: list[str] | tuple[str, ...] = (),
        stdin: str | None = None,
        **spec: Any,
    ) -> Child:
        """Start a child task (FunctionSpec's fields in `spec`: runtime, env, timeout_s,
        resources, labels, ...); `inputs` are object keys held for it while it runs."""
        body = _spawn_body(artifact, args, inputs, stdin, spec)
        answer = self.call("task_spawn", body)[0]
        return Child(self, int(answer["handle"]), str(answer["id"]))

    def wait(
        self, children: list[Child], *, return_when: str = "all", timeout_s: float | None = None
    ) -> list[Child]:
        """Wait until "all" (or "any") of `children` have ended; those that have."""
        if return_when not in ("all", "any"):
            raise ValueError('return_when is "all" or "any"')
        by_handle = {c.handle: c for c in children}
        done = self.call(
            "task_wait", handles=list(by_handle), all=return_when == "all", timeout=timeout_s
        )[0]
        return [by_handle[h] for h in done]


class AsyncAgent:
    """The asyncio flavour: ``async with AsyncAgent() as a: await a.put("k", b"v")``."""

    def __init__(self, socket_path: str | None = None, token: str | None = None) -> None:
        self._path, self._token = _address(socket_path, token)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self._next_id = 0
        self._receiver: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._caller: int | None = None
        self.task_id = ""

    async def _connect(self) -> None:
        import asyncio

        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self._path)
        except OSError as exc:
            raise ChannelClosed(f"cannot reach the SPEARlet at {self._path}: {exc}") from None
        self._receiver = asyncio.ensure_future(self._receive_loop())
        reply, _ = await self._send({"op": "hello", "token": self._token, "version": wire.VERSION})
        self.task_id = reply["result"]["task_id"]

    async def _receive_loop(self) -> None:
        import asyncio

        assert self._reader is not None
        try:
            while True:
                prefix = await self._reader.readexactly(wire.PREFIX.size)
                head_len, body_len = wire.PREFIX.unpack(prefix)
                header = wire.parse_header(await self._reader.readexactly(head_len))
                body = await self._reader.readexactly(body_len) if body_len else b""
                future = self._pending.pop(int(header.get("id", 0)), None)
                if future is not None and not future.done():
                    future.set_result((header, body))
        except (asyncio.IncompleteReadError, ConnectionError, wire.FrameError):
            pass
        finally:
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(ChannelClosed())

    async def _send(
        self, header: dict[str, Any], body: bytes | memoryview = b""
    ) -> tuple[dict[str, Any], bytes]:
        import asyncio

        if self._writer is None or self._receiver is None or self._receiver.done():
            raise ChannelClosed()
        self._next_id += 1
        header["id"] = self._next_id
        future: asyncio.Future[tuple[dict[str, Any], bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[self._next_id] = future
        try:
            self._writer.writelines(wire.encode(header, body))
            await self._writer.drain()
        except (ConnectionError, RuntimeError):
            self._pending.pop(header["id"], None)
            raise ChannelClosed() from None
        reply, out = await future
        _raise_for(reply)
        return reply, out

    async def call(self, op: str, body: bytes | memoryview = b"", **args: Any) -> tuple[Any, bytes]:
        import asyncio

        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is None:
                await self._connect()
        reply, out = await self._send({"op": op, **args}, body)
        return reply.get("result"), out

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self._writer = None
        if self._receiver is not None:
            self._receiver.cancel()
            self._receiver = None

    async def __aenter__(self) -> AsyncAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def log(self, message: str, level: str = "INFO") -> None:
        await self.call("log", message=message, level=level)

    async def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        result, _ = await self.call("obj_put", value, key=key, **_version(expected_version))
        return int(result)

    async def get(self, key: str) -> bytes:
        return (await self.get_versioned(key))[0]

    async def get_versioned(self, key: str) -> tuple[bytes, int]:
        result, value = await self.call("obj_get", key=key)
        return value, int(result["version"])

    async def info(self, key: str) -> ObjectInfo:
        return ObjectInfo(**(await self.call("obj_info", key=key))[0])

    async def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        result, _ = await self.call("obj_list", prefix=prefix)
        return [ObjectInfo(**r) for r in result]

    async def delete(self, key: str, *, expected_version: int | None = None) -> None:
        await self.call("obj_delete", key=key, **_version(expected_version))

    async def add_ref(self, key: str) -> int:
        return int((await self.call("obj_add_ref", key=key))[0])

    async def remove_ref(self, key: str) -> int:
        return int((await self.call("obj_remove_ref", key=key))[0])

    async def pin(self, key: str) -> None:
        await self.call("obj_pin", key=key)

    async def unpin(self, key: str) -> None:
        await self.call("obj_unpin", key=key)

    async def set_result(self, value: bytes) -> int:
        return int((await self.call("result_set", value))[0])

    async def caller(self) -> int:
        if self._caller is None:
            self._caller = int((await self.call("stream_caller"))[0])
        return self._caller

    async def poll(
        self, interests: list[tuple[int, int]], timeout_s: float | None = None
    ) -> list[int]:
        """poll(2) over handles: the ready bits of each (handle, events) pair."""
        result, _ = await self.call("poll", interests=interests, timeout=timeout_s)
        return [int(r) for r in result]

    async def receive(self) -> bytes | None:
        """The caller's next message; None once its input has ended (bound the wait
        with `asyncio.timeout`)."""
        handle = await self.caller()
        while True:
            try:
                return (await self.call("stream_read", handle=handle))[1]
            except HostcallError as exc:
                if exc.errno == errno.EPIPE:
                    return None
                if exc.errno != errno.EAGAIN:
                    raise
            await self.poll([(handle, POLLIN)])

    async def messages(self) -> AsyncIterator[bytes]:
        while (message := await self.receive()) is not None:
            yield message

    async def send(self, message: bytes | str) -> None:
        data = message.encode() if isinstance(message, str) else message
        handle = await self.caller()
        while True:
            try:
                await self.call("stream_write", data, handle=handle)
                return
            except HostcallError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
            await self.poll([(handle, POLLOUT)])

    async def close_output(self) -> None:
        await self.call("close", handle=await self.caller())

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        body = _chat_body(messages, model, tools, params)
        return dict((await self.call("model_chat", body))[0])

    async def chat_stream(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        **params: Any,
    ) -> AsyncChatStream:
        body = _chat_body(messages, model, tools, params)
        result, _ = await self.call("model_chat_start", body, stream=True)
        return AsyncChatStream(self, int(result))

    async def embed(
        self, inputs: str | list[str], *, model: str | None = None
    ) -> list[list[float]]:
        result, _ = await self.call("model_embed", _embed_body(inputs, model))
        return [list(row["embedding"]) for row in result["data"]]

    async def list_tools(self) -> list[dict[str, Any]]:
        return list((await self.call("tool_list"))[0]["tools"])

    async def call_tool(
        self, name: str, arguments: dict[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        return dict((await self.call("tool_call", _tool_body(name, arguments, timeout_s)))[0])

    async def vectors(self, op: str, collection: str | None = None, **fields: Any) -> Any:
        import json

        request = {"op": op, "collection": collection, **fields}
        return (await self.call("vec_request", json.dumps(request).encode()))[0]


def _chat_body(
    messages: list[dict[str, Any]],
    model: str | None,
    tools: list[dict[str, Any]] | None,
    params: dict[str, Any],
) -> bytes:
    import json

    request: dict[str, Any] = {"messages": messages, **params}
    if model is not None:
        request["model"] = model
    if tools:
        request["tools"] = tools
    return json.dumps(request).encode()


def _embed_body(inputs: str | list[str], model: str | None) -> bytes:
    import json

    request: dict[str, Any] = {"input": inputs}
    if model is not None:
        request["model"] = model
    return json.dumps(request).encode()


def _tool_body(name: str, arguments: dict[str, Any] | None, timeout: float | None) -> bytes:
    import json

    request: dict[str, Any] = {"name": name, "arguments": arguments or {}}
    if timeout is not None:
        request["timeout_s"] = timeout
    return json.dumps(request).encode()


def _spawn_body(
    artifact: str,
    args: list[str] | tuple[str, ...],
    inputs: list[str] | tuple[str, ...],
    stdin: str | None,
    spec: dict[str, Any],
) -> bytes:
    import json

    request: dict[str, Any] = {"artifact": artifact, "args": list(args), **spec}
    if inputs:
        request["inputs"] = list(inputs)
    if stdin is not None:
        request["stdin"] = stdin
    if "runtime" in request:
        request["runtime"] = str(getattr(request["runtime"], "value", request["runtime"]))
    return json.dumps(request).encode()


class Child:
    """A child task: `result()` waits for its end `{"id", "state", "exit_code",
    "reason", "output"}`; `cancel()` stops it. Ended with its parent at the latest."""

    def __init__(self, agent: Agent, handle: int, task_id: str) -> None:
        self._agent = agent
        self.handle = handle
        self.id = task_id

    def __repr__(self) -> str:
        return f"Child({self.id})"

    def result(self, timeout_s: float | None = None) -> dict[str, Any]:
        if not self._agent.wait([self], timeout_s=timeout_s):
            raise HostcallError(errno.ETIMEDOUT, f"child {self.id} has not ended")
        return dict(self._agent.call("task_result", handle=self.handle)[0])

    def cancel(self) -> None:
        self._agent.call("task_cancel", handle=self.handle)


class ChatStream:
    """A streaming chat completion: iterate for the text as it is generated; then
    `response` is the whole `chat.completion` (with any tool calls). Closing it (or
    leaving its `with` block) early stops the inference."""

    def __init__(self, agent: Agent, handle: int) -> None:
        self._agent = agent
        self.handle = handle
        self.response: dict[str, Any] | None = None
        self._open = True

    def __iter__(self) -> Iterator[str]:
        try:
            while True:
                try:
                    piece = self._agent.call("model_chat_read", handle=self.handle)[1]
                except HostcallError as exc:
                    if exc.errno == errno.EPIPE:
                        break
                    if exc.errno != errno.EAGAIN:
                        raise
                    self._agent.poll([(self.handle, POLLIN)])
                    continue
                yield piece.decode("utf-8", errors="replace")
            result = self._agent.call("model_chat_result", handle=self.handle)[0]
            self.response = dict(result)
        finally:
            self.close()

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self._agent.call("close", handle=self.handle)
            except HostcallError:
                pass

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ToolLoop(ChatStream):
    """A host-run tool loop: iterate for its events (`{"type": "text" | "call" |
    "result", ...}`); calls to the agent's own functions are answered as they come.
    Then `response` is the last `chat.completion` (with `steps`), `text` the answer."""

    def __init__(self, agent: Agent, handle: int, functions: dict[str, Any]) -> None:
        super().__init__(agent, handle)
        self._functions = functions
        self.text = ""

    def events(self) -> Iterator[dict[str, Any]]:
        import json

        for piece in ChatStream.__iter__(self):
            event = json.loads(piece)
            if event.get("type") == "text":
                self.text += event["text"]
            elif event.get("type") == "call" and event.get("by") == "agent":
                self._answer(event)
            yield event

    def _answer(self, event: dict[str, Any]) -> None:
        import json

        fn = self._functions.get(event["name"])
        try:
            content = "error: no such function" if fn is None else str(fn(**event["arguments"]))
        except Exception as exc:  # the model sees the failure, the loop goes on
            content = f"error: {exc}"
        answer = json.dumps({"id": event["id"], "content": content}).encode()
        self._agent.call("tool_loop_answer", answer, handle=self.handle)

    def run(self) -> str:
        """Run the loop to its end; the final text."""
        for _ in self.events():
            pass
        message = (self.response or {}).get("choices", [{}])[0].get("message", {})
        return str(message.get("content") or "")


class AsyncChatStream:
    """`ChatStream` for `AsyncAgent`: ``async for piece in stream``."""

    def __init__(self, agent: AsyncAgent, handle: int) -> None:
        self._agent = agent
        self.handle = handle
        self.response: dict[str, Any] | None = None
        self._open = True

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while True:
                try:
                    piece = (await self._agent.call("model_chat_read", handle=self.handle))[1]
                except HostcallError as exc:
                    if exc.errno == errno.EPIPE:
                        break
                    if exc.errno != errno.EAGAIN:
                        raise
                    await self._agent.poll([(self.handle, POLLIN)])
                    continue
                yield piece.decode("utf-8", errors="replace")
            result = (await self._agent.call("model_chat_result", handle=self.handle))[0]
            self.response = dict(result)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            try:
                await self._agent.call("close", handle=self.handle)
            except HostcallError:
                pass

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- the module-level flavour: one shared connection ------------------------------------

_default: Agent | None = None
_default_pid = 0
_default_lock = _thread.allocate_lock()


def default() -> Agent:
    """This process's shared connection (a forked child opens its own)."""
    global _default, _default_pid
    with _default_lock:
        if _default is None or _default_pid != os.getpid():
            _default = Agent()
            _default_pid = os.getpid()
        return _default


def task_id() -> str:
    """The id of the task this process runs as."""
    return os.environ.get(wire.ENV_TASK, "")


def log(message: str, level: str = "INFO") -> None:
    default().log(message, level)


def put(key: str, value: bytes, *, expected_version: int | None = None) -> int:
    return default().put(key, value, expected_version=expected_version)


def get(key: str) -> bytes:
    return default().get(key)


def get_versioned(key: str) -> tuple[bytes, int]:
    return default().get_versioned(key)


def info(key: str) -> ObjectInfo:
    return default().info(key)


def list_objects(prefix: str = "") -> list[ObjectInfo]:
    return default().list_objects(prefix)


def delete(key: str, *, expected_version: int | None = None) -> None:
    default().delete(key, expected_version=expected_version)


def add_ref(key: str) -> int:
    return default().add_ref(key)


def remove_ref(key: str) -> int:
    return default().remove_ref(key)


def pin(key: str) -> None:
    default().pin(key)


def unpin(key: str) -> None:
    default().unpin(key)


def set_result(value: bytes) -> int:
    return default().set_result(value)


def receive(timeout: float | None = None) -> bytes | None:
    return default().receive(timeout)


def messages() -> Iterator[bytes]:
    return default().messages()


def send(message: bytes | str) -> None:
    default().send(message)


def close_output() -> None:
    default().close_output()


def chat(
    messages: list[dict[str, Any]],
    *,
    model: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """A chat completion (see `Agent.chat`)."""
    return default().chat(messages, model=model, tools=tools, **params)


def chat_stream(
    messages: list[dict[str, Any]],
    *,
    model: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    **params: Any,
) -> ChatStream:
    """A streaming chat completion (see `Agent.chat_stream`)."""
    return default().chat_stream(messages, model=model, tools=tools, **params)


def embed(inputs: str | list[str], *, model: str | None = None) -> list[list[float]]:
    return default().embed(inputs, model=model)


# -- HTTP triggers: the request and the response (docs/triggers.md) -------------------


class HttpRequest:
    """The HTTP request a route's task serves: read from the CGI variables and stdin."""

    def __init__(self, environ: dict[str, str], body: bytes) -> None:
        self.method = environ.get("REQUEST_METHOD", "GET")
        self.path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        self.path_info = environ.get("PATH_INFO", "")
        self.query_string = environ.get("QUERY_STRING", "")
        self.request_id = environ.get("X_REQUEST_ID", "")
        self.headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        if "CONTENT_TYPE" in environ:
            self.headers["content-type"] = environ["CONTENT_TYPE"]
        self.body = body

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters (the last value of a repeated one)."""
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        import json

        return json.loads(self.body or b"null")


def http_request() -> HttpRequest:
    """The request this task serves (its body read from stdin, once)."""
    import sys

    length = os.environ.get("CONTENT_LENGTH")
    body = sys.stdin.buffer.read(int(length)) if length and length.isdigit() else b""
    return HttpRequest(dict(os.environ), body)


def http_start(status: int = 200, headers: dict[str, str] | None = None) -> None:
    """Send the response's status and headers; the body follows (`http_write`, `sse`)."""
    import sys

    lines = [f"Status: {status}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sys.stdout.buffer.write(("\n".join(lines) + "\n\n").encode())
    sys.stdout.buffer.flush()


def http_write(data: bytes | str) -> None:
    """Send part of the body now (it reaches the client as it is written)."""
    import sys

    sys.stdout.buffer.write(data.encode() if isinstance(data, str) else data)
    sys.stdout.buffer.flush()


def http_respond(
    body: bytes | str = b"", status: int = 200, headers: dict[str, str] | None = None
) -> None:
    """The whole response at once."""
    all_headers = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
    http_start(status, all_headers)
    http_write(body)


def sse(data: str, event: str | None = None) -> None:
    """One server-sent event (after `http_start(headers={"Content-Type":
    "text/event-stream"})`); each line of `data` is one `data:` line."""
    lines = [f"event: {event}"] if event else []
    lines += [f"data: {line}" for line in data.split("\n")]
    http_write("\n".join(lines) + "\n\n")
