"""The object socket: objects for clients on the node's own host (docs/objects.md).

A Unix socket in the data dir (`DATA/objects.sock`, owner-only; SOCK_SEQPACKET, so each
request and each answer is one message). No value's bytes cross it: a get is answered
with the value's open file (SCM_RIGHTS), which the client reads, and a put hands over a
memfd the client filled (kept for its next put), which the node copies into its store in
the kernel. That is how Ray's driver reads its raylet's shared memory; over TCP (the object
transfer service) the same value crosses a socket and, with TLS, is encrypted twice.

    {"op": "hello", "token": T}
        -> {"ok": true, "node": N, "pid": P, "started_at": S}
    {"op": "get", "key": K, "info": I?, "token": T, "namespace": S?}
        -> {"ok": true, "version": V, "size": N, ...} + the value's file (or, for a small
           one, the value itself after the line)
    {"op": "put", "key": K, "size": N, "expected_version": E?, "info": I?, ...} + a file
        -> {"ok": true, "version": V, "size": N, ...}

Errors are `{"ok": false, "code": C, "message": M}` (so is the answer to a request the
kernel cut short: longer than MESSAGE_MAX, or with more than one file). Who may: a token
in each request, checked as the transfer service checks it (roles, namespaces, the
`object_bytes` quota); `hello` (the node's name, pid and start, so a client knows the
socket is its node's) needs a reader's. Everything runs on the node's event loop: a
request costs no thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import orjson

from spear._logging import logger
from spear.core import namespaces as ns
from spear.errors import (
    InvalidArgument,
    SpearError,
    error_from_code,
)
from spear.transport.auth import Role
from spear.transport.object_transfer import (
    TransferBroken,
    asked_namespace,
    info_fields,
    request_token,
    token_namespace,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine
    from pathlib import Path

    from spear.store.objects import ObjectStore
    from spear.transport.channels import Credentials
    from spear.transport.serving import Security

SOCKET_NAME = "objects.sock"
MESSAGE_MAX = 256 * 1024  # a request or an answer, with a small value after its line
TAIL_MAX = 64 * 1024  # a value up to this goes inside the answer, not as a file
_PATH_MAX = 107  # sun_path, less its terminating NUL
_COPY_IN_LOOP = 1024 * 1024  # a put or a read up to this is copied on the event loop
_SPARE_MAX = 4 * 1024 * 1024  # a put up to this reuses a memfd of the client's


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


# -- the node's side ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving_object_socket(
    store: ObjectStore,
    security: Security,
    path: Path,
    hello: dict[str, Any],
    admit_put: Callable[[str, str, int], Coroutine[Any, Any, None]] | None = None,
) -> AsyncIterator[str]:
    """While inside, `store` is served on the Unix socket `path` (yields the path, or ""
    when it cannot be: a path too long for a Unix socket, say). `hello`: what the node
    says of itself."""
    if len(os.fsencode(path)) > _PATH_MAX:
        logger.info("no object socket: its path is too long ({})", path)
        yield ""
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # (left by a node that did not stop cleanly)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)  # the node's own user only (and its tokens, per request)
        listener.listen(64)
    except OSError as exc:
        listener.close()
        logger.info("no object socket at {}: {}", path, exc)
        yield ""
        return
    listener.setblocking(False)
    server = _SocketServer(store, security, hello, admit_put)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.accept, listener, tg)
            try:
                yield str(path)
            finally:
                tg.cancel_scope.cancel()
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class _SocketServer:
    def __init__(
        self,
        store: ObjectStore,
        security: Security,
        hello: dict[str, Any],
        admit_put: Callable[[str, str, int], Coroutine[Any, Any, None]] | None,
    ) -> None:
        self._store = store
        self._security = security
        self._hello = hello
        self._admit_put = admit_put

    async def accept(self, listener: socket.socket, tg: anyio.abc.TaskGroup) -> None:
        while True:
            await anyio.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            sock.setblocking(False)
            tg.start_soon(self.serve, sock)

    async def serve(self, sock: socket.socket) -> None:
        with sock:
            while True:
                await anyio.wait_readable(sock)
                try:
                    message, fds, flags, _ = socket.recv_fds(sock, MESSAGE_MAX, 1)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not message:
                    _close_all(fds)
                    return
                try:
                    answer, tail, send_fd = await self._answer(message, fds, flags)
                finally:
                    _close_all(fds)
                try:
                    socket.send_fds(sock, [orjson.dumps(answer) + b"\n" + tail], send_fd)
                except OSError:
                    return  # the client went away (or stopped reading): nothing was held
                finally:
                    _close_all(send_fd)

    async def _answer(
        self, message: bytes, fds: list[int], flags: int
    ) -> tuple[dict[str, Any], bytes, list[int]]:
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                # The kernel cut the request to what fits (the files past the first are
                # closed unseen): it is not what was sent, so "one file" could not be
                # checked, nor a request's end.
                raise InvalidArgument(
                    f"a request is one message of at most {MESSAGE_MAX} bytes, with at most"
                    " one file"
                )
            request = orjson.loads(message)
            if not isinstance(request, dict):
                raise InvalidArgument("bad request")
            return await self._exchange(request, fds)
        except SpearError as exc:
            return {"ok": False, "code": exc.code, "message": str(exc)}, b"", []
        except (KeyError, TypeError, ValueError):
            return {"ok": False, "code": "invalid", "message": "bad request"}, b"", []
        except Exception as exc:  # a bug: this request fails, the node goes on
            logger.exception("object socket request failed")
            return {"ok": False, "code": "internal", "message": str(exc)}, b"", []

    async def _admit(self, request: dict[str, Any], need: Role) -> str | None:
        asked = asked_namespace(request)
        authorizer = self._security.authorizer
        if authorizer is None:  # open (tests, benchmarks)
            return asked
        token = request_token(request, "the object socket requires a token")
        principal = authorizer.tokens.verify(token) if authorizer.tokens is not None else None
        if principal is None and authorizer.cluster is not None:  # a token of the SMS's
            principal = await authorizer.cluster.verify(token)
        return token_namespace(authorizer, principal, request, need)

    async def _exchange(
        self, request: dict[str, Any], fds: list[int]
    ) -> tuple[dict[str, Any], bytes, list[int]]:
        op = request.get("op")
        if op == "hello":
            await self._admit(request, Role.READER)
            return {"ok": True, **self._hello}, b"", []
        key = request["key"]
        if not isinstance(key, str):
            raise InvalidArgument("bad request")
        if op == "get":
            namespace = await self._admit(request, Role.READER)
            stored = key if namespace is None else ns.stored_key(namespace, key)
            return await self._get(stored, request.get("info") is True)
        if op == "put":
            namespace = await self._admit(request, Role.SUBMITTER)
            size = int(request["size"])
            if namespace is not None:
                ns.refuse_system_write(key)
                if self._admit_put is not None:
                    await self._admit_put(namespace, key, size)
                key = ns.stored_key(namespace, key)
            if len(fds) != 1:
                raise InvalidArgument("a put over the object socket hands over one file")
            expected = request.get("expected_version")
            return await self._put(key, fds[0], size, expected, request.get("info") is True)
        raise InvalidArgument(f"unknown object socket operation {op!r}")

    async def _get(self, key: str, info: bool) -> tuple[dict[str, Any], bytes, list[int]]:
        opened, found = await self._store.open_with_info(key)  # (fetched here if need be)
        answer: dict[str, Any] = {"ok": True, "version": found.version, "size": found.size}
        if info:
            answer |= info_fields(found)
        if isinstance(opened, (bytes, memoryview)):  # a small value, kept in its record
            if len(opened) <= TAIL_MAX:
                return answer, bytes(opened), []
            fd = os.memfd_create("spear-get", os.MFD_CLOEXEC)  # (sent, then closed)
            _write_all(fd, memoryview(opened))
            return answer, b"", [fd]
        with opened:
            return answer, b"", [os.dup(opened.fileno())]  # (sent, then closed)

    async def _put(
        self, key: str, fd: int, size: int, expected: Any, info: bool
    ) -> tuple[dict[str, Any], bytes, list[int]]:
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode) or held.st_size < size or size < 0:
            raise InvalidArgument(f"a put of {size} bytes hands over a file of that size")
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
            raise InvalidArgument("a put hands over a file open for reading, not write-only")
        path = self._store.staging_path()
        try:
            self._store.spares.place(path, size)  # (written over: store/spare_files.py)
            if size <= _COPY_IN_LOOP:
                _copy(fd, path, size)
            else:
                await anyio.to_thread.run_sync(_copy, fd, path, size)
            version = await self._store.put_file(
                key, path, None if expected is None else int(expected), move=True
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        answer: dict[str, Any] = {"ok": True, "version": version, "size": size}
        if info:
            found = await self._store.info(key)
            answer |= info_fields(found)
        return answer, b"", []


def _copy(source: int, path: Path, size: int) -> None:
    """`size` bytes of the file `source` into the file `path` (new, or a spare placed
    there to write over), in the kernel."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        offset = 0
        while offset < size:
            sent = os.sendfile(out, source, offset, size - offset)
            if not sent:
                raise InvalidArgument(f"the file handed over ended after {offset} bytes")
            offset += sent
        os.ftruncate(out, size)
    finally:
        os.close(out)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the client's side --------------------------------------------------------------------


class ObjectSocketClient:
    """Gets and puts at a node's object socket (one request at a time per connection,
    idle connections kept)."""

    def __init__(self, path: str, credentials: Credentials) -> None:
        self.path = path
        self._credentials = credentials
        self._idle: list[socket.socket] = []
        self._spare: list[int] = []  # memfds of earlier puts, to write the next into

    async def hello(self) -> dict[str, Any]:
        """What the node says of itself (its name, pid and start): is it the one meant?"""
        answer, _, _ = await self._exchange({"op": "hello"}, [])
        return answer

    async def get(self, key: str, *, info: bool = False) -> tuple[bytes, dict[str, Any]]:
        """(value, the answer: its version, size and, with `info`, refs, pin, locations)."""
        request: dict[str, Any] = {"op": "get", "key": key}
        if info:
            request["info"] = True
        answer, tail, fds = await self._exchange(request, [])
        size = int(answer["size"])
        if not fds:
            return tail, answer
        try:
            if size <= _COPY_IN_LOOP:
                return _read_file(fds[0], size), answer
            return await anyio.to_thread.run_sync(_read_file, fds[0], size), answer
        finally:
            _close_all(fds)

    async def put(
        self,
        key: str,
        value: bytes | memoryview,
        expected_version: int | None = None,
        *,
        info: bool = False,
    ) -> dict[str, Any]:
        """Write `value` under `key`; the answer (its new version, and with `info` refs,
        pin and locations)."""
        view = memoryview(value).cast("B")
        request: dict[str, Any] = {"op": "put", "key": key, "size": len(view)}
        if expected_version is not None:
            request["expected_version"] = expected_version
        if info:
            request["info"] = True
        # A small value goes through a memfd kept for the next put: its pages are then
        # written over, not allocated and freed again (the node has copied them out by
        # the time it answers).
        kept = len(view) <= _SPARE_MAX
        fd = (
            self._spare.pop()
            if kept and self._spare
            else os.memfd_create("spear-put", os.MFD_CLOEXEC)
        )
        try:
            if len(view) <= _COPY_IN_LOOP:
                _write_all(fd, view)
            else:
                await anyio.to_thread.run_sync(_write_all, fd, view)
            answer, _, _ = await self._exchange(request, [fd])
        except BaseException:
            os.close(fd)
            raise
        if kept:
            self._spare.append(fd)
        else:
            os.close(fd)
        return answer

    async def put_file(
        self, key: str, source: Path, expected_version: int | None = None, *, info: bool = False
    ) -> dict[str, Any]:
        """Write the file `source` under `key`: the file itself is handed over (the node
        copies it in the kernel); the answer, as `put`'s."""
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            request: dict[str, Any] = {"op": "put", "key": key, "size": os.fstat(fd).st_size}
            if expected_version is not None:
                request["expected_version"] = expected_version
            if info:
                request["info"] = True
            answer, _, _ = await self._exchange(request, [fd])
        finally:
            os.close(fd)
        return answer

    async def _exchange(
        self, request: dict[str, Any], fds: list[int]
    ) -> tuple[dict[str, Any], bytes, list[int]]:
        if self._credentials.token:
            request["token"] = self._credentials.token
        if self._credentials.namespace:
            request["namespace"] = self._credentials.namespace
        sock = self._idle.pop() if self._idle else None
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise TransferBroken(f"cannot reach the object socket {self.path}: {exc}") from None
            sock.setblocking(False)
        try:
            socket.send_fds(sock, [orjson.dumps(request)], fds)
            while True:
                await anyio.wait_readable(sock)
                try:
                    message, received, _, _ = socket.recv_fds(sock, MESSAGE_MAX, 1)
                    break
                except BlockingIOError:
                    continue
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError):
                raise TransferBroken(f"the object socket {self.path} failed: {exc}") from None
            raise
        if not message:
            sock.close()
            raise TransferBroken(f"the object socket {self.path} closed the connection")
        self._idle.append(sock)
        line, _, tail = message.partition(b"\n")
        answer: dict[str, Any] = orjson.loads(line)
        if not answer.get("ok"):
            _close_all(received)
            raise error_from_code(str(answer.get("code")), str(answer.get("message")))
        return answer, tail, received

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()
        spare, self._spare = self._spare, []
        _close_all(spare)


def _read_file(fd: int, size: int) -> bytes:
    value = os.pread(fd, size, 0)
    if len(value) != size:
        raise TransferBroken(f"the value's file handed over has {len(value)} of {size} bytes")
    return value


def _write_all(fd: int, view: memoryview) -> None:
    """`view` at the start of the file `fd` (what lies past its end is left: a put names
    its size)."""
    offset = 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)
