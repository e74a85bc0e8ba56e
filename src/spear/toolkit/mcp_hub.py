"""The node's MCP connections: one per configured server, made on first use and kept.

Each server's connection lives in a task of its own in the node's task group (an MCP
client is a context that must be entered and left in one task); tasks' calls use it
concurrently (JSON-RPC multiplexes them). A call that fails because the server is gone
(its process died, the HTTP endpoint stopped answering) makes the connection start again;
after `max_restarts` failed starts in a row the server is reported down (the reason in
every call and listing) for `RETRY_AFTER_S`, then tried again. Every call has a timeout,
so a server that hangs never hangs a task. The `mcp` SDK is imported only here, when a
server is first used. Servers' stderr goes to `DATA/logs/mcp/<server>.log`.
"""

from __future__ import annotations

import contextlib
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from spear._logging import logger
from spear.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from anyio.abc import TaskGroup

    from spear.core.models import Task
    from spear.core.node import Spearlet
    from spear.core.tasks.hooks import TasksFinished
    from spear.toolkit.mcp_config import McpConfig, McpServerConfig

RETRY_AFTER_S = 30.0  # a server reported down is tried again after this long


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """One tool as agents see it: `server/name`, its description and input schema."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]

    @property
    def qualified(self) -> str:
        return f"{self.server}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.qualified,
            "description": self.description,
            "input_schema": self.input_schema,
        }


class McpServer:
    """One server's connection and its state: idle, connecting, ready or down."""

    def __init__(self, config: McpServerConfig, log_dir: Path) -> None:
        self.config = config
        self._log_dir = log_dir
        self.state = "idle"
        self.error: str | None = None
        self.tools: list[ToolInfo] = []
        self.starts = 0  # connections made (the first and every restart)
        self._client: Any = None
        self._changed = anyio.Event()
        self._restart = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._down_since = 0.0

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def connected(self, task_group: TaskGroup) -> Any:
        """The live client, connecting first if needed; Unavailable if the server is down."""
        if self.state == "down" and time.monotonic() - self._down_since > RETRY_AFTER_S:
            self.state = "idle"
        if self.state == "idle":
            self.state = "connecting"
            task_group.start_soon(self._run, name=f"mcp server {self.config.name}")
        # Every start may take its connect timeout and a back-off (at most 2 s) before the next.
        bound = (self.config.connect_timeout_s + 2.5) * (self.config.max_restarts + 1)
        with anyio.move_on_after(bound):
            while self.state == "connecting":
                await self._changed.wait()
        if self.state == "ready":
            return self._client
        if self.state == "connecting":
            why = f"it did not connect within {bound:g} s"
            raise Unavailable(f"MCP server {self.config.name!r} is not answering: {why}")
        raise Unavailable(f"MCP server {self.config.name!r} is down: {self.error or 'no answer'}")

    def broken(self, why: str) -> None:
        """A call found the connection dead: start it again."""
        if self.state == "ready":
            logger.warning("MCP server {} failed ({}): restarting it", self.config.name, why)
            self.state = "connecting"
            self.error = why
            self._restart.set()

    async def _run(self) -> None:
        failures = 0
        with anyio.CancelScope() as self._scope:
            while failures <= self.config.max_restarts:
                before = self.starts
                try:
                    await self._connect_and_hold()
                except Exception as exc:  # anything a transport or a server does wrong
                    # A connection that was up starts the count of failures again.
                    failures = 1 if self.starts > before else failures + 1
                    self.error = _describe(exc)
                    logger.warning("MCP server {} failed: {}", self.config.name, self.error)
                    self.state = "connecting"
                    if failures <= self.config.max_restarts:
                        await anyio.sleep(min(0.1 * 2**failures, 2.0))
            self.state, self._client, self._down_since = "down", None, time.monotonic()
            self._signal()
        if self._scope.cancel_called:
            self.state, self._client = "idle", None

    async def _connect_and_hold(self) -> None:
        from mcp import Client

        self._restart = anyio.Event()
        # The deadline scope is outermost: the client's task groups open inside it.
        with anyio.fail_after(self.config.connect_timeout_s) as deadline:
            async with contextlib.AsyncExitStack() as stack:
                transport = await self._transport(stack)
                client = await stack.enter_async_context(Client(transport, cache=None))
                listed = await client.list_tools()
                deadline.deadline = math.inf  # (the connection is held past it, up to a restart)
                self.tools = [
                    ToolInfo(
                        server=self.config.name,
                        name=tool.name,
                        description=tool.description or "",
                        input_schema=dict(tool.input_schema or {}),
                    )
                    for tool in listed.tools
                ]
                self._client, self.state, self.error = client, "ready", None
                self.starts += 1
                self._signal()
                await self._restart.wait()
                self._client = None
        raise Unavailable(self.error or "connection lost")

    async def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        if self.config.url is not None:
            from mcp.client.streamable_http import streamable_http_client

            return streamable_http_client(self.config.url)
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        self._log_dir.mkdir(parents=True, exist_ok=True)
        errlog = stack.enter_context(open(self._log_dir / f"{self.config.name}.log", "a"))  # noqa: ASYNC230 - an append-only log
        params = StdioServerParameters(
            command=self.config.command[0],
            args=list(self.config.command[1:]),
            env=dict(self.config.env) or None,
            cwd=self.config.cwd,
        )
        return stdio_client(params, errlog=errlog)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def status(self) -> dict[str, Any]:
        return {"name": self.config.name, "state": self.state, "error": self.error}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within its connect timeout"
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def tool_result(result: Any) -> dict[str, Any]:
    """An MCP CallToolResult as agents see it: its content blocks, their text joined,
    its structured content and whether the tool reported an error."""
    blocks = [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in result.content]
    text = "\n".join(b["text"] for b in blocks if b.get("type") == "text")
    return {
        "content": blocks,
        "text": text,
        "structured": result.structured_content,
        "is_error": bool(result.is_error),
    }


class McpHub:
    """The node's `tools` service: its MCP servers and the allow-lists over their tools."""

    def __init__(self, config: McpConfig, log_dir: Path) -> None:
        self.config = config
        self.servers = {name: McpServer(c, log_dir) for name, c in config.servers.items()}
        self._task_group: TaskGroup | None = None
        self._calls: dict[str, set[anyio.CancelScope]] = {}  # task id -> its running calls

    @asynccontextmanager
    async def serve_node(self, node: Spearlet, task_group: TaskGroup) -> AsyncIterator[None]:
        async def tasks_finished(finished: TasksFinished) -> None:
            for task in finished.tasks:
                for scope in self._calls.pop(task.id, ()):
                    scope.cancel()

        node.controller.add_finished_hook(tasks_finished)
        self._task_group = task_group
        try:
            yield
        finally:
            self._task_group = None
            for server in self.servers.values():
                server.stop()

    def spawn(self, task_id: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn` in the node's task group until it returns or its task ends."""
        group = self._group()

        async def run() -> None:
            with anyio.CancelScope() as scope:
                self._calls.setdefault(task_id, set()).add(scope)
                try:
                    await fn()
                finally:
                    scopes = self._calls.get(task_id)
                    if scopes is not None:
                        scopes.discard(scope)
                        if not scopes:
                            self._calls.pop(task_id, None)

        group.start_soon(run)

    def _group(self) -> TaskGroup:
        if self._task_group is None:
            raise Unavailable("the node is not running")
        return self._task_group

    async def list_tools(self, task: Task | None) -> dict[str, Any]:
        """{"tools": [...], "unavailable": {server: reason}}: what `task` may call of the
        servers that answer (connected concurrently), and why the others do not."""
        group = self._group()
        unavailable: dict[str, str] = {}

        async def one(server: McpServer) -> None:
            try:
                await server.connected(group)
            except Unavailable as exc:
                unavailable[server.config.name] = str(exc)

        async with anyio.create_task_group() as tg:
            for server in self.servers.values():
                tg.start_soon(one, server)
        tools = [
            t.to_json()
            for s in self.servers.values()
            if s.config.name not in unavailable
            for t in s.tools
            if self.config.may_call(t.qualified, task)
        ]
        return {"tools": tools, "unavailable": unavailable}

    def split(self, qualified: str, task: Task | None) -> tuple[McpServer, str]:
        """The server and tool a `server/tool` name means, if `task` may call it."""
        server_name, sep, tool = qualified.partition("/")
        if not sep or not tool:
            raise InvalidArgument(f"a tool name is server/tool, not {qualified!r}")
        server = self.servers.get(server_name)
        if server is None:
            known = ", ".join(sorted(self.servers)) or "none"
            raise NotFound(f"no MCP server {server_name!r} on this node (servers: {known})")
        if not self.config.may_call(qualified, task):
            raise PermissionDenied(f"this task may not call tool {qualified!r}")
        return server, tool

    async def call(
        self,
        qualified: str,
        arguments: dict[str, Any],
        task: Task | None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Call a tool; its result (see `tool_result`). A tool that reports an error is a
        result with `is_error`; a server that fails or does not answer in time is an error."""
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED

        server, tool = self.split(qualified, task)
        if not isinstance(arguments, dict):
            raise InvalidArgument("a tool's arguments are a JSON object")
        limit = self.config.call_timeout_s if timeout_s is None else min(timeout_s, 3600.0)
        if limit <= 0:
            raise InvalidArgument("a tool call's timeout must be positive")
        client = await server.connected(self._group())
        if tool not in {t.name for t in server.tools}:
            raise NotFound(f"MCP server {server.config.name!r} has no tool {tool!r}")
        try:
            with anyio.fail_after(limit):
                result = await client.call_tool(tool, arguments)
        except TimeoutError:
            raise DeadlineExceeded(
                f"tool {qualified!r} did not answer within {limit:g} s"
            ) from None
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:  # the server is gone: start it again
                server.broken(str(exc))
                raise Unavailable(
                    f"MCP server {server.config.name!r} closed the connection during the call;"
                    " it is being restarted"
                ) from None
            raise InvalidArgument(f"tool {qualified!r} refused the call: {exc}") from None
        except Exception as exc:  # the transport: the server is gone
            server.broken(_describe(exc))
            raise Unavailable(
                f"MCP server {server.config.name!r} failed during the call ({_describe(exc)});"
                " it is being restarted"
            ) from None
        return tool_result(result)

    def status(self) -> list[dict[str, Any]]:
        return [s.status() for s in self.servers.values()]
