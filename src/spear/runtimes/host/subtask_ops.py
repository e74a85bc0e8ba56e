"""Subtask operations an agent may ask of its host (docs/hostcalls.md, "Subtasks").

`task_spawn` starts a child (spec JSON, see toolkit/subtasks.py) and answers a handle at
once; the handle becomes readable (POLLIN, for `poll`) when the child has ended, and
`task_result` then reads `{"id", "state", "exit_code", "reason", "output"}`: a failed
child is a result whose state is "FAILED" and whose reason says why, not an errno.
`task_cancel` cancels it. Closing the handle stops watching the child, not the child;
every unfinished child is cancelled when its parent ends.

errno meanings beside hostops':
    ENOSYS   the node offers no subtasks
    EINVAL   a malformed child spec
    EACCES   a child the task may not start (a process child of a WASM task, a directory
             its parent does not see)
    EMFILE   too many unfinished children, or too deep a tree
    ENOENT   the child's artifact does not exist
"""

from __future__ import annotations

import errno
import json
from typing import TYPE_CHECKING, Any

import anyio

from spear.core.streams import POLLIN
from spear.errors import PermissionDenied, ResourceExhausted, SpearError
from spear.runtimes.host.model_ops import ModelCall
from spear.runtimes.host.ops import ErrnoTable, HostError, add_handle, poll_async, translate

if TYPE_CHECKING:
    from spear.core.worker import TaskContext
    from spear.toolkit.subtasks import Subtasks

_SUBTASK_ERRNOS: ErrnoTable = (
    (PermissionDenied, errno.EACCES),
    (ResourceExhausted, errno.EMFILE),
)


def _service(ctx: TaskContext) -> Subtasks:
    service: Subtasks | None = ctx.services.subtasks
    if service is None:
        raise HostError(errno.ENOSYS, "this node offers no subtasks")
    return service


def _refused(ctx: TaskContext, exc: SpearError) -> HostError:
    err = translate(exc, _SUBTASK_ERRNOS)
    ctx.agent_log("WARNING", f"subtask refused: {err}")
    return err


class ChildTask(ModelCall):
    """The handle-table entry of one child: readable once it has ended."""

    task_id = ""


async def task_spawn(ctx: TaskContext, request: Any) -> tuple[int, str]:
    """Start a child; (its handle, its task id)."""
    from spear.toolkit.subtasks import parse_child, result_json

    service = _service(ctx)
    try:
        data = json.loads(request) if isinstance(request, bytes | bytearray | str) else request
    except ValueError:
        raise HostError(errno.EINVAL, "a child spec is a JSON object") from None
    try:
        child = parse_child(data)
        child_id = await service.spawn(ctx.task, child)
    except SpearError as exc:
        raise _refused(ctx, exc) from None
    registry = ctx.services.streams
    entry = ChildTask(registry.for_task(ctx.task.id) if registry is not None else None, False)
    entry.task_id = child_id
    parent_id = ctx.task.id

    async def end() -> dict[str, Any]:
        task = await service.spawner.wait(child_id)
        output = await service.spawner.output(task)
        service.ended(parent_id, child_id)
        return result_json(task, output)

    async def watch() -> None:
        await entry.run(end, translate)

    service.task_group.start_soon(watch)
    ctx.agent_log("INFO", f"started child task {child_id} ({child.spec.artifact})")
    return add_handle(ctx, entry), child_id


def _child(ctx: TaskContext, handle: int) -> ChildTask:
    entry = ctx.handles.get(handle)
    if not isinstance(entry, ChildTask):
        raise HostError(errno.EBADF, f"handle {handle} is not a child task")
    return entry


def task_result(ctx: TaskContext, handle: int, capacity: int | None = None) -> bytes:
    """The child's end as JSON. EAGAIN: still running; ENOSPC with `needed` (kept)."""
    return _child(ctx, handle).result(capacity)


async def task_cancel(ctx: TaskContext, handle: int) -> None:
    """Cancel the child (its result then says "cancelled")."""
    child = _child(ctx, handle)
    await _service(ctx).spawner.cancel(child.task_id, f"cancelled by its parent {ctx.task.id}")


async def task_wait(
    ctx: TaskContext, handles: list[int], wait_all: bool, timeout_s: float | None
) -> list[int]:
    """Wait until any (or all) of the children have ended; the handles that have."""
    for handle in handles:
        _child(ctx, handle)
    end = None if timeout_s is None else anyio.current_time() + timeout_s
    done: list[int] = []
    waiting = list(handles)
    while waiting:
        left = None if end is None else max(0.0, end - anyio.current_time())
        # (only the children still running: poll is level-triggered)
        ready = await poll_async(ctx, [(h, POLLIN) for h in waiting], left)
        done += [h for h, bits in zip(waiting, ready, strict=True) if bits]
        waiting = [h for h, bits in zip(waiting, ready, strict=True) if not bits]
        if (done and not wait_all) or left == 0:
            break
    return [h for h in handles if h in done]


async def dispatch(
    ctx: TaskContext, op: str, header: dict[str, Any], body: bytes
) -> tuple[Any, bytes]:
    """The process-agent channel's subtask operations (`task_*`): (JSON result, body)."""
    if op == "task_spawn":
        handle, child_id = await task_spawn(ctx, body)
        return {"handle": handle, "id": child_id}, b""
    if op == "task_result":
        return json.loads(task_result(ctx, int(header["handle"]))), b""
    if op == "task_cancel":
        await task_cancel(ctx, int(header["handle"]))
        return None, b""
    if op == "task_wait":
        handles = header.get("handles")
        timeout = header.get("timeout")
        if not isinstance(handles, list) or not all(isinstance(h, int) for h in handles):
            raise HostError(errno.EINVAL, "handles must be a list of child handles")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise HostError(errno.EINVAL, "timeout must be None or >= 0 seconds")
        return await task_wait(ctx, handles, bool(header.get("all", True)), timeout), b""
    raise HostError(errno.ENOSYS, f"no such operation: {op!r}")
