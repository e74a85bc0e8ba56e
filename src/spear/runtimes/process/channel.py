"""The hostcall channel of process agents: a Unix socket the SPEARlet serves.

One socket per node process (`DATA/run/agent-<pid>.sock`, in a 0700 directory; a short
directory under /tmp when that path is too long for a socket address). Each task gets a
credential, a random token the runtime puts in its environment; a connection presents it
first (`hello`) and from then on acts as that task only: its objects are written as that
task, its handles (the caller stream) are that task's table, and the credential dies with
the task (its connections are closed). One task cannot act as another without that
other's token.

The operations are those of `docs/hostcalls.md`, carried out by `hostops` (the same code
the WASM imports call); this module only moves frames (`spear._agent_wire`) and turns
`HostError` into `{"errno", "error", "message"}`. Requests on one connection run
concurrently (a blocking `poll` does not hold up a `put`), at most `MAX_IN_FLIGHT` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import socket
import struct
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from spear import _agent_wire as wire
from spear._logging import logger
from spear.core.stats import hostcall_counter
from spear.runtimes.host import model_ops as hostops_models
from spear.runtimes.host import ops as hostops
from spear.runtimes.host.ops import HostError
from spear.runtimes.host.toolkit_ops import dispatch as toolkit_dispatch

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from spear.core.worker import TaskContext
    from spear.runtimes.process.cgroups import TaskCgroup

MAX_IN_FLIGHT = 64
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes with its NUL; keep a margin
_POLL_SLICE_S = 0.1  # a poll waits on a worker thread in slices, so a dropped call frees it
_MAX_POLL_THREADS = 1024  # agents blocked in poll at once, node-wide


@dataclass(eq=False)
class Credential:
    """One task's right to the channel."""

    token: str
    socket_path: str
    ctx: TaskContext
    connections: set[_Connection] = field(default_factory=set)
    on_protocol_error: Callable[[str], None] | None = None
    cgroup: TaskCgroup | None = None
    # Where the task's cgroup is known only once its process started (a warm child's own,
    # spare_cgroups.py): asked at each connection; None from it refuses the connection.
    late_cgroup: Callable[[], TaskCgroup | None] | None = None
    served: anyio.Event = field(default_factory=anyio.Event)  # its last connection ended

    async def connections_ended(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until the task's connections have been read to
        their ends: after its process exits, what it sent last is still being read."""
        if self.connections:
            with anyio.move_on_after(timeout_s):
                await self.served.wait()

    def admits(self, writer: asyncio.StreamWriter) -> bool:
        """With a task cgroup, the connecting process must be one of the task's: a token
        read out of another task's environment is no use elsewhere."""
        cgroup = self.cgroup if self.late_cgroup is None else self.late_cgroup()
        if cgroup is None:
            return self.late_cgroup is None
        sock = writer.get_extra_info("socket")
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        except (OSError, AttributeError):
            return False
        pid, _, _ = _PEERCRED.unpack(raw)
        return cgroup.holds(pid)

    @property
    def task_id(self) -> str:
        return self.ctx.task.id

    def env(self) -> dict[str, str]:
        """What the runtime adds to the task's environment."""
        return {
            wire.ENV_SOCKET: self.socket_path,
            wire.ENV_TOKEN: self.token,
            wire.ENV_TASK: self.task_id,
        }

    def protocol_error(self, message: str) -> None:
        with contextlib.suppress(Exception):
            self.ctx.agent_log("WARNING", f"hostcall channel: {message}")
        if self.on_protocol_error is not None:
            self.on_protocol_error(message)


class AgentChannel:
    """The node's hostcall server for process agents."""

    def __init__(self, runtime_dir: Path, max_body: int = 1024**3 + 1024) -> None:
        self._runtime_dir = runtime_dir
        self._max_body = max_body
        self._tokens: dict[str, Credential] = {}
        self._connections: set[_Connection] = set()
        # Agents blocked in poll wait on threads of their own, never the default ones.
        self._poll_limiter = anyio.CapacityLimiter(_MAX_POLL_THREADS)
        self._server: asyncio.AbstractServer | None = None
        self._temp_dir: str | None = None
        self.path = ""

    async def start(self) -> None:
        directory = str(self._runtime_dir)
        path = os.path.join(directory, f"agent-{os.getpid()}.sock")
        if len(path.encode()) > MAX_SOCKET_PATH:
            self._temp_dir = tempfile.mkdtemp(prefix="spear-")
            directory = self._temp_dir
            path = os.path.join(directory, "agent.sock")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a process with our pid that died
        self._server = await asyncio.start_unix_server(self._serve, path=path)
        os.chmod(path, 0o600)
        self.path = path

    def register(self, ctx: TaskContext, cgroup: TaskCgroup | None = None) -> Credential:
        """A new credential for a task; with `cgroup`, only its processes may use it."""
        credential = Credential(secrets.token_urlsafe(32), self.path, ctx, cgroup=cgroup)
        self._tokens[credential.token] = credential
        return credential

    async def revoke(self, credential: Credential) -> None:
        """The task ended: its token stops working and its connections are closed."""
        self._tokens.pop(credential.token, None)
        with anyio.CancelScope(shield=True):  # also when the node is being cancelled
            for conn in list(credential.connections):
                await conn.close()

    async def aclose(self) -> None:
        self._tokens.clear()
        with anyio.CancelScope(shield=True):
            for conn in list(self._connections):
                await conn.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def _authenticate(self, token: Any) -> Credential | None:
        return self._tokens.get(token) if isinstance(token, str) else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(reader, writer, self._max_body, self._poll_limiter)
        self._connections.add(conn)
        try:
            try:
                frame = await conn.read_frame()
            except (wire.FrameError, asyncio.IncompleteReadError, ConnectionError):
                return
            if frame is None:
                return
            header, _ = frame
            credential = (
                self._authenticate(header.get("token")) if header.get("op") == "hello" else None
            )
            if credential is None:
                await conn.send_error(header.get("id", 0), HostError(errno.EACCES, "bad token"))
                return
            if not await _admitted(credential, writer):
                message = "not a process of the task this token belongs to"
                await conn.send_error(header.get("id", 0), HostError(errno.EACCES, message))
                return
            if header.get("version") != wire.VERSION:
                message = f"channel version {wire.VERSION} only"
                await conn.send_error(header.get("id", 0), HostError(errno.EPROTO, message))
                return
            credential.connections.add(conn)
            try:
                await conn.send(
                    {
                        "id": header.get("id", 0),
                        "ok": True,
                        "result": {"task_id": credential.task_id},
                    }
                )
                await conn.serve(credential)
            finally:
                credential.connections.discard(conn)
                if not credential.connections:
                    credential.served.set()
        finally:
            self._connections.discard(conn)
            with anyio.CancelScope(shield=True):
                await conn.close()


async def _admitted(credential: Credential, writer: asyncio.StreamWriter) -> bool:
    """`credential.admits(writer)`, looked at again for a moment: a child started cold is
    moved into its task's cgroup just after it started (supervisor.py), and on a busy
    machine it may connect before that."""
    for _ in range(_ADMIT_TRIES):
        if credential.admits(writer):
            return True
        await asyncio.sleep(_ADMIT_PAUSE_S)
    return credential.admits(writer)


_ADMIT_TRIES = 100
_ADMIT_PAUSE_S = 0.02  # (2 s in all before a process is refused)


class _Connection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_body: int,
        poll_limiter: anyio.CapacityLimiter,
    ) -> None:
        self._poll_limiter = poll_limiter
        self._reader = reader
        self._writer = writer
        self._max_body = max_body
        self._write_lock = asyncio.Lock()
        self._calls: dict[asyncio.Task[None], str] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._closed = False

    async def read_frame(self) -> tuple[dict[str, Any], bytes] | None:
        """The next frame; None at a clean end. IncompleteReadError: cut mid-frame."""
        try:
            prefix = await self._reader.readexactly(wire.PREFIX.size)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise
        head_len, body_len = wire.parse_prefix(prefix, self._max_body)
        header = wire.parse_header(await self._reader.readexactly(head_len))
        body = await self._reader.readexactly(body_len) if body_len else b""
        return header, body

    async def send(self, header: dict[str, Any], body: bytes | memoryview = b"") -> None:
        if self._closed:
            return
        async with self._write_lock:
            try:
                self._writer.writelines(wire.encode(header, body))
                await self._writer.drain()
            except (ConnectionError, RuntimeError):
                self._closed = True

    async def send_error(self, call_id: Any, exc: HostError) -> None:
        header: dict[str, Any] = {
            "id": call_id,
            "ok": False,
            "errno": exc.errno,
            "error": errno.errorcode.get(exc.errno, str(exc.errno)),
            "message": str(exc),
        }
        if exc.needed is not None:
            header["needed"] = exc.needed
        await self.send(header)

    async def serve(self, credential: Credential) -> None:
        while True:
            try:
                frame = await self.read_frame()
            except asyncio.IncompleteReadError:
                credential.protocol_error("the agent closed the channel in the middle of a request")
                break
            except wire.FrameError as exc:
                credential.protocol_error(f"malformed request: {exc}")
                break
            except ConnectionError:
                break
            if frame is None:
                if self._calls:
                    ops = ", ".join(sorted(set(self._calls.values())))
                    credential.protocol_error(f"the agent closed the channel during a call ({ops})")
                break
            header, body = frame
            await self._slots.acquire()
            call = asyncio.ensure_future(self._call(credential.ctx, header, body))
            self._calls[call] = str(header.get("op"))
            call.add_done_callback(self._call_done)
        for call in list(self._calls):
            call.cancel()

    def _call_done(self, call: asyncio.Task[None]) -> None:
        self._calls.pop(call, None)
        self._slots.release()
        if not call.cancelled() and call.exception() is not None:  # pragma: no cover
            logger.opt(exception=call.exception()).error("hostcall channel call failed")

    async def _call(self, ctx: TaskContext, header: dict[str, Any], body: bytes) -> None:
        trace = ctx.trace
        if trace is None:
            return await self._serve_call(ctx, header, body)
        started = time.time_ns()  # a traced task: a span per hostcall (docs/observability.md)
        try:
            await self._serve_call(ctx, header, body)
        finally:
            trace.hostcall(str(header.get("op")), started)

    async def _serve_call(self, ctx: TaskContext, header: dict[str, Any], body: bytes) -> None:
        call_id = header.get("id", 0)
        try:
            result, out = await _dispatch(ctx, header, body, self._poll_limiter)
        except HostError as exc:
            await self.send_error(call_id, exc)
            return
        except (KeyError, TypeError, ValueError) as exc:
            await self.send_error(call_id, HostError(errno.EINVAL, f"bad arguments: {exc}"))
            return
        except Exception as exc:  # a host bug answers EIO; it never takes the node down
            logger.exception("hostcall {} failed", header.get("op"))
            await self.send_error(call_id, HostError(errno.EIO, f"host error: {exc}"))
            return
        # Counted once served: an unknown op (an agent's typo) makes no metric label.
        hostcall_counter("process", str(header.get("op")))[0] += 1
        await self.send({"id": call_id, "ok": True, "result": result}, out)

    async def close(self) -> None:
        if self._closed and self._writer.is_closing():
            return
        self._closed = True
        for call in list(self._calls):
            call.cancel()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


def _info(info: Any) -> dict[str, Any]:
    return {
        "key": info.key,
        "size": info.size,
        "version": info.version,
        "refcount": info.refs,
        "pinned": info.pinned,
    }


def _expected(header: dict[str, Any]) -> int | None:
    value = header.get("expected_version")
    if value is None:
        return None
    if not isinstance(value, int) or value < 0:
        raise HostError(errno.EINVAL, "expected_version must be None, 0 or a version")
    return value


def _key(header: dict[str, Any], name: str = "key") -> str:
    key = header[name]
    if not isinstance(key, str):
        raise HostError(errno.EINVAL, f"{name} must be a string")
    return key


async def _poll(
    ctx: TaskContext,
    interests: list[tuple[int, int]],
    timeout_s: float | None,
    limiter: anyio.CapacityLimiter,
) -> list[int]:
    ready = hostops.poll(ctx, interests, 0)  # ready already: no thread at all
    if any(ready) or timeout_s == 0:
        return ready
    end = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = None if end is None else max(0.0, end - time.monotonic())
        piece = _POLL_SLICE_S if left is None else min(left, _POLL_SLICE_S)
        ready = await anyio.to_thread.run_sync(
            hostops.poll, ctx, interests, piece, limiter=limiter, abandon_on_cancel=True
        )
        if any(ready) or (left is not None and left <= piece):
            return ready


async def _dispatch(
    ctx: TaskContext, h: dict[str, Any], body: bytes, poll_limiter: anyio.CapacityLimiter
) -> tuple[Any, bytes | memoryview]:
    """One operation: (JSON result, body bytes)."""
    op = h.get("op")
    if op == "log":
        hostops.log(ctx, h.get("level", "INFO"), str(h["message"]))
        return None, b""
    if op == "obj_put":
        return await hostops.obj_put(ctx, _key(h), body, _expected(h)), b""
    if op == "obj_get":
        value, version = await hostops.obj_get(ctx, _key(h))
        return {"version": version}, value
    if op == "obj_info":
        return _info(await hostops.obj_info(ctx, _key(h))), b""
    if op == "obj_list":
        prefix = h.get("prefix", "")
        if not isinstance(prefix, str):
            raise HostError(errno.EINVAL, "prefix must be a string")
        return [_info(i) for i in await hostops.obj_list(ctx, prefix)], b""
    if op == "obj_delete":
        await hostops.obj_delete(ctx, _key(h), _expected(h))
        return None, b""
    if op == "obj_add_ref":
        return await hostops.obj_add_ref(ctx, _key(h)), b""
    if op == "obj_remove_ref":
        return await hostops.obj_remove_ref(ctx, _key(h)), b""
    if op == "obj_pin":
        await hostops.obj_pin(ctx, _key(h))
        return None, b""
    if op == "obj_unpin":
        await hostops.obj_unpin(ctx, _key(h))
        return None, b""
    if op == "result_set":
        return await hostops.result_set(ctx, body), b""
    if op == "stream_caller":
        return hostops.stream_caller(ctx), b""
    if op == "stream_read":
        capacity = h.get("capacity")
        return None, hostops.stream_read(ctx, int(h["handle"]), capacity)
    if op == "stream_write":
        return hostops.stream_write(ctx, int(h["handle"]), body), b""
    if op == "close":
        hostops.close(ctx, int(h["handle"]))
        return None, b""
    if op == "poll":
        interests = [(int(handle), int(events)) for handle, events in h["interests"]]
        if len(interests) > 1024:
            raise HostError(errno.EINVAL, "at most 1024 handles per poll")
        timeout = h.get("timeout")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise HostError(errno.EINVAL, "timeout must be None or >= 0 seconds")
        return await _poll(ctx, interests, timeout, poll_limiter), b""
    if isinstance(op, str) and op.startswith("model_"):
        return await hostops_models.dispatch(ctx, op, h, body)
    if isinstance(op, str) and op.startswith(("tool_", "task_", "vec_")):
        return await toolkit_dispatch(ctx, op, h, body)
    raise HostError(errno.ENOSYS, f"no such operation: {op!r}")
