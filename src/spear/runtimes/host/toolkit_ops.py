"""The process-agent channel's toolkit operations: `tool_*` (MCP), `task_*` (subtasks),
`vec_*` (vector store), each family in a module of its own."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from spear.runtimes.host import subtask_ops, tool_ops, vector_ops
from spear.runtimes.host.ops import HostError

if TYPE_CHECKING:
    from spear.core.worker import TaskContext


async def dispatch(
    ctx: TaskContext, op: str, header: dict[str, Any], body: bytes
) -> tuple[Any, bytes]:
    """(JSON result, body) of one toolkit operation."""
    if op.startswith("tool_"):
        return await tool_ops.dispatch(ctx, op, header, body)
    if op.startswith("task_"):
        return await subtask_ops.dispatch(ctx, op, header, body)
    if op.startswith("vec_"):
        return await vector_ops.dispatch(ctx, op, header, body)
    raise HostError(errno.ENOSYS, f"no such operation: {op!r}")
