"""`spear run --stream`: the task's caller stream over the terminal.

Framing (`--framing`):
- `lines` (default): each line read from stdin (without its newline) is one message to
  the task; each message from the task is written to stdout followed by a newline. A
  message that itself contains newlines therefore reads back as several lines.
- `length`: binary-safe; every message, both ways, is a 4-byte big-endian length then
  that many bytes.

End of stdin ends the task's input (the task reads -EPIPE after the queued messages). The
guest's own stdout and stderr go to its task logs (`spear logs ID`), so stdout carries only
messages. Backpressure holds both ways: stdin is not read while the task's input queue is
full, and the task waits (EAGAIN) while stdout is slow.
"""

from __future__ import annotations

import asyncio
import signal
import struct
import sys
import threading
from typing import TYPE_CHECKING, BinaryIO

import anyio

from spear.errors import InvalidArgument, Unavailable

if TYPE_CHECKING:
    from spear.core.models import FunctionSpec, Task
    from spear.node.api import NodeAPI, StreamingTask

FRAMINGS = ("lines", "length")
_LENGTH = struct.Struct(">I")


def check_framing(framing: str) -> str:
    if framing not in FRAMINGS:
        raise InvalidArgument(f"--framing must be one of {', '.join(FRAMINGS)}, not {framing!r}")
    return framing


def read_frames(source: BinaryIO, framing: str) -> list[bytes] | None:
    """The next message from `source` (a one-item list), or None at its end."""
    if framing == "lines":
        line = source.readline()
        if not line:
            return None
        return [line[:-1] if line.endswith(b"\n") else line]
    head = source.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    body = source.read(length)
    return [body] if len(body) == length else None


def frame(message: bytes, framing: str) -> bytes:
    if framing == "lines":
        return message + b"\n"
    return _LENGTH.pack(len(message)) + message


def _reader_thread(
    source: BinaryIO,
    framing: str,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[bytes | None],
) -> None:
    # A thread of its own: a blocked read of a terminal cannot be cancelled, and this one
    # must not keep the process alive once the task ended.
    try:
        while (got := read_frames(source, framing)) is not None:
            asyncio.run_coroutine_threadsafe(queue.put(got[0]), loop).result()
    except (OSError, RuntimeError, ValueError):
        pass  # stdin closed, or the loop already finished
    finally:
        try:
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()
        except RuntimeError:
            pass


async def _pump_in(stream: StreamingTask, framing: str) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
    threading.Thread(
        target=_reader_thread,
        args=(sys.stdin.buffer, framing, loop, queue),
        name="spear-stream-stdin",
        daemon=True,
    ).start()
    try:
        while (message := await queue.get()) is not None:
            await stream.send(message)
    except Unavailable:
        return  # the task ended: nobody to send to
    await stream.close()


async def run_streaming(api: NodeAPI, spec: FunctionSpec, framing: str = "lines") -> Task:
    """Run `spec` with stdin/stdout as its caller stream; SIGINT/SIGTERM cancel it."""
    check_framing(framing)
    out = sys.stdout.buffer
    async with api.start_task(spec) as stream:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    await stream.cancel("cancelled by signal")
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals)
            tg.start_soon(_pump_in, stream, framing)
            async for message in stream.messages():
                await anyio.to_thread.run_sync(_write, out, frame(message, framing))
            task = await stream.wait()
            tg.cancel_scope.cancel()
    return task


def _write(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()
