"""AI model hostcalls: `spear.model_*` (docs/hostcalls.md, "Models").

Marshalling only; the semantics are in `hostops_models`. Requests are JSON in guest
memory; answers are JSON (or, for a streaming call, UTF-8 text pieces) written back.
"""

from __future__ import annotations

import errno
import functools
import json
from typing import TYPE_CHECKING

from spear.runtimes.host import model_ops as hostops_models
from spear.runtimes.wasm.hostcalls.abi import I32, HostcallError, fill, hostcall, in_loop

if TYPE_CHECKING:
    from spear.core.worker import TaskContext
    from spear.runtimes.wasm.hostcalls.abi import GuestMemory

_U32 = 0xFFFFFFFF
MAX_REQUEST_BYTES = 16 * 1024 * 1024
CHAT_STREAM = 0x1  # flags of model_chat_start


def _request(mem: GuestMemory, ptr: int, length: int) -> bytes:
    length &= _U32
    if length > MAX_REQUEST_BYTES:
        raise HostcallError(errno.E2BIG, f"a model request is at most {MAX_REQUEST_BYTES} bytes")
    return mem.read(ptr & _U32, length)


@hostcall("model_chat_start", (I32, I32, I32))
def model_chat_start(
    mem: GuestMemory, ctx: TaskContext, req_ptr: int, req_len: int, flags: int
) -> int:
    """Start a chat completion of a JSON request; its handle (flag 1: stream the text)."""
    if flags & ~CHAT_STREAM:
        raise HostcallError(errno.EINVAL, "unknown flags")
    request = _request(mem, req_ptr, req_len)
    start = functools.partial(
        hostops_models.chat_start, ctx, request, stream=bool(flags & CHAT_STREAM)
    )
    return in_loop(start)


@hostcall("model_chat_read", (I32, I32, I32))
def model_chat_read(mem: GuestMemory, ctx: TaskContext, handle: int, out: int, out_len: int) -> int:
    """The next piece of a streaming call's text: its length; -EAGAIN none yet; -EPIPE
    the text is complete; the call's error; -ENOSPC (needed in *out_len, piece kept)."""
    return fill(mem, out, out_len, functools.partial(hostops_models.chat_read, ctx, handle))


@hostcall("model_chat_result", (I32, I32, I32))
def model_chat_result(
    mem: GuestMemory, ctx: TaskContext, handle: int, out: int, out_len: int
) -> int:
    """The call's `chat.completion` JSON: its length; -EAGAIN not finished; its error."""
    return fill(mem, out, out_len, functools.partial(hostops_models.chat_result, ctx, handle))


@hostcall("model_chat_error", (I32, I32, I32))
def model_chat_error(
    mem: GuestMemory, ctx: TaskContext, handle: int, out: int, out_len: int
) -> int:
    """Why the call failed, as text (length 0 if it has not)."""
    message = hostops_models.chat_error(ctx, handle).encode()
    capacity = mem.read_u32(out_len & _U32)
    if len(message) > capacity:  # a message is for people: cut it rather than fail
        message = message[:capacity]
    mem.write_u32(out_len & _U32, len(message))
    mem.write(out & _U32, message)
    return len(message)


@hostcall("model_embed", (I32, I32, I32, I32))
def model_embed(
    mem: GuestMemory, ctx: TaskContext, req_ptr: int, req_len: int, out: int, out_len: int
) -> int:
    """Embeddings of a JSON request (blocks this task only); the JSON answer's length."""
    request = _request(mem, req_ptr, req_len)
    answer = in_loop(hostops_models.embed, ctx, request)
    data = json.dumps(answer, separators=(",", ":")).encode()
    return mem.fill(out & _U32, out_len & _U32, data)
