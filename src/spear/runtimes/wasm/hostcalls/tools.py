"""MCP tool hostcalls: `spear.tool_*` (docs/hostcalls.md, "Tools").

Marshalling only; the semantics are in `runtimes/host/tool_ops.py`. Requests and answers
are JSON in guest memory.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

from spear.runtimes.host import tool_loop, tool_ops
from spear.runtimes.wasm.hostcalls.abi import I32, fill, hostcall, in_loop
from spear.runtimes.wasm.hostcalls.models import _request

if TYPE_CHECKING:
    from spear.core.worker import TaskContext
    from spear.runtimes.wasm.hostcalls.abi import GuestMemory

_U32 = 0xFFFFFFFF


@hostcall("tool_list", (I32, I32))
def tool_list(mem: GuestMemory, ctx: TaskContext, out: int, out_len: int) -> int:
    """The tools this task may call, as JSON: its length (-ENOSPC: needed in *out_len)."""
    answer = in_loop(tool_ops.tool_list, ctx)
    data = json.dumps(answer, separators=(",", ":")).encode()
    return mem.fill(out & _U32, out_len & _U32, data)


@hostcall("tool_call_start", (I32, I32))
def tool_call_start(mem: GuestMemory, ctx: TaskContext, req_ptr: int, req_len: int) -> int:
    """Start a tool call of a JSON request `{"name", "arguments", "timeout_s"?}`: its handle."""
    request = _request(mem, req_ptr, req_len)
    return in_loop(functools.partial(tool_ops.tool_call_start, ctx, request))


@hostcall("tool_call_result", (I32, I32, I32))
def tool_call_result(
    mem: GuestMemory, ctx: TaskContext, handle: int, out: int, out_len: int
) -> int:
    """The call's result JSON: its length; -EAGAIN not finished; the call's error."""
    return fill(mem, out, out_len, functools.partial(tool_ops.tool_call_result, ctx, handle))


@hostcall("tool_loop_start", (I32, I32))
def tool_loop_start(mem: GuestMemory, ctx: TaskContext, req_ptr: int, req_len: int) -> int:
    """Start a host-run tool loop (a chat request with `loop`): its handle, read with
    model_chat_read (one JSON event a read) and model_chat_result."""
    request = _request(mem, req_ptr, req_len)
    return in_loop(functools.partial(tool_loop.tool_loop_start, ctx, request))


@hostcall("tool_loop_answer", (I32, I32, I32))
def tool_loop_answer(
    mem: GuestMemory, ctx: TaskContext, handle: int, req_ptr: int, req_len: int
) -> int:
    """Answer a call the loop asked of the agent: `{"id", "content"}`."""
    answer = _request(mem, req_ptr, req_len)
    in_loop(functools.partial(tool_loop.tool_loop_answer, ctx, handle, answer))
    return 0
