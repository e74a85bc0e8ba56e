"""Subtask hostcalls: `spear.task_*` (docs/hostcalls.md, "Subtasks").

Marshalling only; the semantics are in `runtimes/host/subtask_ops.py`. A child's spec
and its result are JSON in guest memory; waiting for any or all children is `poll` on
their handles.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from spear.runtimes.host import subtask_ops
from spear.runtimes.wasm.hostcalls.abi import I32, fill, hostcall, in_loop
from spear.runtimes.wasm.hostcalls.models import _request

if TYPE_CHECKING:
    from spear.core.worker import TaskContext
    from spear.runtimes.wasm.hostcalls.abi import GuestMemory


@hostcall("task_spawn", (I32, I32))
def task_spawn(mem: GuestMemory, ctx: TaskContext, req_ptr: int, req_len: int) -> int:
    """Start a child task of a JSON spec: its handle (POLLIN once it has ended)."""
    request = _request(mem, req_ptr, req_len)
    handle, _ = in_loop(functools.partial(subtask_ops.task_spawn, ctx, request))
    return handle


@hostcall("task_result", (I32, I32, I32))
def task_result(mem: GuestMemory, ctx: TaskContext, handle: int, out: int, out_len: int) -> int:
    """The child's end as JSON: its length; -EAGAIN still running."""
    return fill(mem, out, out_len, functools.partial(subtask_ops.task_result, ctx, handle))


@hostcall("task_cancel", (I32,))
def task_cancel(mem: GuestMemory, ctx: TaskContext, handle: int) -> int:
    """Cancel the child."""
    in_loop(functools.partial(subtask_ops.task_cancel, ctx, handle))
    return 0
