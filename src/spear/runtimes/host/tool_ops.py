"""MCP tool operations an agent may ask of its host (docs/hostcalls.md, "Tools").

`tool_list` answers the tools the task may call (`server/tool` names, descriptions, input
schemas) and the servers that do not answer; `tool_call` calls one. A WASM agent starts a
call (`tool_call_start`, a handle that `poll` wakes for) and reads its result; a process
agent's call simply waits. Each call is written to the task's agent log.

errno meanings beside hostops':
    ENOSYS        the node has no MCP servers (no `mcp_config`)
    ENOENT        no such server or tool
    EACCES        the task may not call that tool (allow-lists)
    EINVAL        a malformed request, or arguments the tool refused
    ETIMEDOUT     the tool did not answer within its timeout
    ECONNREFUSED  the server is down (it died and is being restarted, or could not start)
A tool that runs and reports a failure is not an errno: its result has `is_error`.
"""

from __future__ import annotations

import errno
import json
import time
from typing import TYPE_CHECKING, Any

from spear.errors import (
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    SpearError,
    Unavailable,
)
from spear.runtimes.host import tool_loop
from spear.runtimes.host.model_ops import ModelCall
from spear.runtimes.host.ops import ErrnoTable, HostError, add_handle, translate

if TYPE_CHECKING:
    from spear.core.worker import TaskContext
    from spear.toolkit.mcp_hub import McpHub

MAX_TOOL_CALLS_PER_TASK = 64

_TOOL_ERRNOS: ErrnoTable = (
    (DeadlineExceeded, errno.ETIMEDOUT),
    (Unavailable, errno.ECONNREFUSED),
    (PermissionDenied, errno.EACCES),
)


def _hub(ctx: TaskContext) -> McpHub:
    hub: McpHub | None = ctx.services.tools
    if hub is None:
        raise HostError(errno.ENOSYS, "this node has no MCP servers (see mcp_config)")
    return hub


def _refused(ctx: TaskContext, exc: SpearError) -> HostError:
    err = translate(exc, _TOOL_ERRNOS)
    ctx.agent_log("WARNING", f"tool call failed: {err}")
    return err


def parse_call(request: Any) -> tuple[str, dict[str, Any], float | None]:
    """(name, arguments, timeout) of `{"name", "arguments"?, "timeout_s"?}` (or its JSON)."""
    try:
        data = json.loads(request) if isinstance(request, bytes | bytearray | str) else request
    except ValueError:
        raise InvalidArgument("a tool call is a JSON object") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise InvalidArgument('a tool call is {"name": "server/tool", "arguments": {...}}')
    arguments = data.get("arguments") or {}
    timeout = data.get("timeout_s")
    if not isinstance(arguments, dict):
        raise InvalidArgument("a tool call's arguments are a JSON object")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise InvalidArgument("timeout_s must be a positive number")
    return data["name"], arguments, None if timeout is None else float(timeout)


async def tool_list(ctx: TaskContext) -> dict[str, Any]:
    """`{"tools": [{"name", "description", "input_schema"}], "unavailable": {server: why}}`."""
    try:
        return await _hub(ctx).list_tools(ctx.task)
    except SpearError as exc:
        raise _refused(ctx, exc) from None


async def tool_call(ctx: TaskContext, request: Any) -> dict[str, Any]:
    """Call a tool and wait: `{"content", "text", "structured", "is_error"}`."""
    hub = _hub(ctx)
    try:
        name, arguments, timeout = parse_call(request)
        started = time.monotonic()
        result = await hub.call(name, arguments, ctx.task, timeout)
    except SpearError as exc:
        raise _refused(ctx, exc) from None
    took = (time.monotonic() - started) * 1000
    flag = " (the tool reported an error)" if result["is_error"] else ""
    ctx.agent_log("INFO", f"tool {name} answered in {took:.0f} ms{flag}")
    return result


class ToolCall(ModelCall):
    """The handle-table entry of one tool call (a model call's shape: a result or an error)."""


async def tool_call_start(ctx: TaskContext, request: Any) -> int:
    """Start a tool call; its handle (readable when the call is over)."""
    hub = _hub(ctx)
    try:
        name, _, _ = parse_call(request)
        hub.split(name, ctx.task)  # unknown or forbidden tools fail here, at once
    except SpearError as exc:
        raise _refused(ctx, exc) from None
    if sum(isinstance(e, ToolCall) for e in list(ctx.handles.values())) >= MAX_TOOL_CALLS_PER_TASK:
        raise HostError(errno.EMFILE, f"at most {MAX_TOOL_CALLS_PER_TASK} tool calls per task")
    registry = ctx.services.streams
    call = ToolCall(registry.for_task(ctx.task.id) if registry is not None else None, False)

    async def run() -> None:
        await call.run(lambda: tool_call(ctx, request), lambda exc: _refused(ctx, exc))

    try:
        hub.spawn(ctx.task.id, run)
    except SpearError as exc:
        raise _refused(ctx, exc) from None
    return add_handle(ctx, call)


def tool_call_result(ctx: TaskContext, handle: int, capacity: int | None = None) -> bytes:
    """A started call's result JSON. EAGAIN: not finished; the call's own error if it
    failed; ENOSPC with `needed` (the result is kept)."""
    entry = ctx.handles.get(handle)
    if not isinstance(entry, ToolCall):
        raise HostError(errno.EBADF, f"handle {handle} is not a tool call")
    return entry.result(capacity)


async def dispatch(
    ctx: TaskContext, op: str, header: dict[str, Any], body: bytes
) -> tuple[Any, bytes]:
    """The process-agent channel's tool operations (`tool_*`): (JSON result, body)."""
    if op == "tool_list":
        return await tool_list(ctx), b""
    if op == "tool_call":
        return await tool_call(ctx, body), b""
    if op == "tool_loop_start":
        return await tool_loop.tool_loop_start(ctx, body), b""
    if op == "tool_loop_answer":
        await tool_loop.tool_loop_answer(ctx, int(header["handle"]), body)
        return None, b""
    raise HostError(errno.ENOSYS, f"no such operation: {op!r}")
