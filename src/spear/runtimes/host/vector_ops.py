"""Vector store operations an agent may ask of its host (docs/hostcalls.md, "Vectors").

One JSON request `{"op": "create" | "drop" | "list" | "upsert" | "query" | "delete" |
"count", "collection", ...}` answers JSON (toolkit/vectors.py has each op's fields), in the
task's namespace; on a cluster member, at the collection's home node. Every
op may be repeated safely (a guest that got -ENOSPC asks again with a larger buffer).

errno meanings beside hostops':
    ENOSYS   the node has no vector store
    ENOENT   no such collection
    EINVAL   a malformed request, or a vector of the wrong dimension
    ESTALE   create of an existing collection with another dim or metric
    ECONNREFUSED  the collection is held by another process
"""

from __future__ import annotations

import errno
import json
from typing import TYPE_CHECKING, Any

from spear.errors import SpearError, Unavailable
from spear.runtimes.host.ops import ErrnoTable, HostError, translate

if TYPE_CHECKING:
    from spear.core.worker import TaskContext
    from spear.toolkit.vectors import VectorStore

_VECTOR_ERRNOS: ErrnoTable = ((Unavailable, errno.ECONNREFUSED),)


def _store(ctx: TaskContext) -> VectorStore:
    store: VectorStore | None = ctx.services.vectors
    if store is None:
        raise HostError(errno.ENOSYS, "this node has no vector store")
    return store


async def vec_request(ctx: TaskContext, request: Any) -> Any:
    """One vector store request (a dict, or its JSON); its JSON-able answer."""
    store = _store(ctx)
    try:
        data = json.loads(request) if isinstance(request, bytes | bytearray | str) else request
    except ValueError:
        raise HostError(errno.EINVAL, "a vector request is a JSON object") from None
    try:
        return await store.request_async(data, ctx.task.spec.namespace)
    except SpearError as exc:
        err = translate(exc, _VECTOR_ERRNOS)
        ctx.agent_log("WARNING", f"vector request failed: {err}")
        raise err from None


async def dispatch(
    ctx: TaskContext, op: str, header: dict[str, Any], body: bytes
) -> tuple[Any, bytes]:
    """The process-agent channel's vector operation (`vec_request`)."""
    if op == "vec_request":
        return await vec_request(ctx, body), b""
    raise HostError(errno.ENOSYS, f"no such operation: {op!r}")
