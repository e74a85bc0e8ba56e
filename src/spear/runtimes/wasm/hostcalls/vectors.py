"""Vector store hostcall: `spear.vec_request` (docs/hostcalls.md, "Vectors").

Marshalling only; the semantics are in `runtimes/host/vector_ops.py`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from spear.runtimes.host import vector_ops
from spear.runtimes.wasm.hostcalls.abi import I32, hostcall, in_loop
from spear.runtimes.wasm.hostcalls.models import _request

if TYPE_CHECKING:
    from spear.core.worker import TaskContext
    from spear.runtimes.wasm.hostcalls.abi import GuestMemory

_U32 = 0xFFFFFFFF


@hostcall("vec_request", (I32, I32, I32, I32))
def vec_request(
    mem: GuestMemory, ctx: TaskContext, req_ptr: int, req_len: int, out: int, out_len: int
) -> int:
    """A JSON vector store request; the JSON answer's length (-ENOSPC: ask again)."""
    request = _request(mem, req_ptr, req_len)
    answer = in_loop(vector_ops.vec_request, ctx, request)
    data = json.dumps(answer, separators=(",", ":")).encode()
    return mem.fill(out & _U32, out_len & _U32, data)
