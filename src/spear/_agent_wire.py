"""The framing of the hostcall channel between a process agent and its SPEARlet.

Shared by the node's server (`runtimes/process/channel.py`) and the agent SDK
(`spear.agent`), so it imports nothing but `struct` until a frame is made or read (then
`json`): an agent that never calls its host never loads it.

A frame is `!II` (header length, body length), a JSON header, then the body bytes (an
object's value or a stream message travels there, never inside the JSON).

Requests: `{"id": N, "op": NAME, ...arguments}`; the first on a connection is
`{"op": "hello", "token": T, "version": 1}`. Responses: `{"id": N, "ok": true,
"result": ...}` or `{"id": N, "ok": false, "errno": E, "error": "ENOENT", "message": M}`
(with `"needed"` for ENOSPC). Responses may come in any order; the id pairs them.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False  # (typing.TYPE_CHECKING, without importing typing)
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
PREFIX = struct.Struct("!II")
MAX_HEADER = 1024 * 1024

# What the runtime puts in a process agent's environment.
ENV_SOCKET = "SPEAR_AGENT_SOCKET"
ENV_TOKEN = "SPEAR_AGENT_TOKEN"
ENV_TASK = "SPEAR_TASK_ID"


class FrameError(Exception):
    """A malformed frame: the connection cannot be trusted any further."""


def encode(header: dict[str, Any], body: bytes | bytearray | memoryview = b"") -> list[bytes]:
    """The pieces of one frame (write them in order; the body is not copied)."""
    import json

    head = json.dumps(header, separators=(",", ":")).encode()
    return [PREFIX.pack(len(head), memoryview(body).nbytes), head, body]  # type: ignore[list-item]


def parse_prefix(prefix: bytes, max_body: int) -> tuple[int, int]:
    head_len, body_len = PREFIX.unpack(prefix)
    if head_len == 0 or head_len > MAX_HEADER:
        raise FrameError(f"a frame header of {head_len} bytes")
    if body_len > max_body:
        raise FrameError(f"a frame body of {body_len} bytes (at most {max_body})")
    return head_len, body_len


def parse_header(raw: bytes) -> dict[str, Any]:
    import json

    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError(f"a frame header that is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("a frame header that is not a JSON object")
    return header
