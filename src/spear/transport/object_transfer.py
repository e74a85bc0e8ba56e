"""The object transfer service: object bytes between nodes (and clients) on a connection of
their own, not as protobuf messages through a pure-Python HTTP/2 stack (docs/objects.md).

One request per exchange, many exchanges per connection. A request is one line of JSON:

    {"op": "get", "key": K, "version": V, "body": B?, "token": T?}
    {"op": "put", "key": K, "size": N, "expected_version": E?, "token": T?}  + N bytes

A get of version V > 0 (a node fetching a copy) is served only from this node's copy of V;
V = 0 (a client) reads the current version as any get on this node does, fetching it from
a holder first if need be; `"body": false` answers with the header only (a prefetch).
The answer is one line of JSON, `{"ok": true, "version": V, "size": N}` (a get's N bytes
follow), or `{"ok": false, "code": C, "message": M}` (spear's error codes). The value is
sent from its file with the kernel's `sendfile` on plain TCP (chunks through TLS when the
cluster has TLS) and received in chunks into a new file, so memory stays bounded whatever
the size; a transfer cut short leaves no file behind.

Who may: a member presents its cluster certificate (TLS); a user a token in the request
(reader for get, submitter for put), checked by the same Authorizer as gRPC calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import orjson

from spear._logging import logger
from spear.errors import (
    InvalidArgument,
    PermissionDenied,
    SpearError,
    Unauthenticated,
    Unavailable,
    error_from_code,
)
from spear.transport.auth import Role, certificate_name
from spear.transport.serving import format_address, parse_listen

if TYPE_CHECKING:
    import ssl
    from pathlib import Path

    from spear.store.objects import ObjectStore
    from spear.transport.channels import Credentials
    from spear.transport.serving import Security

CHUNK = 1 << 20  # bytes read or written at a time: memory per transfer stays about this
_HEADER_MAX = 64 * 1024
_IDLE_S = 60.0  # an idle pooled connection is closed after this
_TIMEOUT_S = 30.0  # no progress for this long: the peer is gone


class _SslPeer:
    """What certificate_name reads (grpclib's peer shape) from an asyncio transport."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._ssl = writer.get_extra_info("ssl_object")

    def cert(self) -> Any:
        return None if self._ssl is None else self._ssl.getpeercert()


class ObjectTransferServer:
    """Serves the node's object store (its own copies only) on a port of its own."""

    def __init__(self, store: ObjectStore, security: Security) -> None:
        self._store = store
        self._security = security
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.address: str | None = None

    async def start(self, listen: str) -> str:
        host, port = parse_listen(listen)
        ssl_ctx = None if self._security.tls is None else self._security.tls.server_context()
        if ssl_ctx is not None:
            ssl_ctx.set_alpn_protocols(["spear-objects"])
        self._server = await asyncio.start_server(self._serve, host, port, ssl=ssl_ctx, limit=CHUNK)
        bound = self._server.sockets[0].getsockname()
        self.address = format_address(host, bound[1])
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    def _check(self, request: dict[str, Any], writer: asyncio.StreamWriter, need: Role) -> None:
        authorizer = self._security.authorizer
        if authorizer is None:
            return
        if certificate_name(_SslPeer(writer)) is not None:
            return  # a member of the cluster (its certificate checked against the CA)
        token = request.get("token")
        if not isinstance(token, str):
            raise Unauthenticated("the object transfer service requires a token or certificate")
        principal = authorizer.tokens.verify(token) if authorizer.tokens is not None else None
        if principal is None:
            raise Unauthenticated("the token was not accepted (unknown or revoked)")
        if principal.role < need:
            raise PermissionDenied(
                f"{principal.name} ({principal.role.name.lower()}) may not"
                f" {request.get('op')} objects: it needs {need.name.lower()}"
            )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if not line.endswith(b"\n") or len(line) > _HEADER_MAX:
                    return
                try:
                    await self._exchange(orjson.loads(line), reader, writer)
                except SpearError as exc:
                    answer = {"ok": False, "code": exc.code, "message": str(exc)}
                    writer.write(orjson.dumps(answer) + b"\n")
                    await writer.drain()
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    writer.write(b'{"ok":false,"code":"invalid","message":"bad request"}\n')
                    await writer.drain()
                    return
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass  # the peer went away; nothing was committed for it
        except Exception:
            logger.exception("object transfer failed")
        finally:
            self._open.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        op = request["op"]
        key = request["key"]
        if op == "get":
            self._check(request, writer, Role.READER)
            version = int(request.get("version") or 0)
            if not version:
                await self._store.get(key)  # the current version, held here from now on
            await self._send(key, version, writer, body=request.get("body", True) is not False)
        elif op == "put":
            size = int(request["size"])
            try:
                self._check(request, writer, Role.SUBMITTER)
            except SpearError:
                await _discard(reader, size)  # (keeps the connection in step)
                raise
            expected = request.get("expected_version")
            await self._receive(key, size, None if expected is None else int(expected), reader)
            info = await self._store.info(key)
            answer = {"ok": True, "version": info.version, "size": info.size}
            writer.write(orjson.dumps(answer) + b"\n")
            await writer.drain()
        else:
            raise InvalidArgument(f"unknown object transfer operation {op!r}")

    async def _send(
        self, key: str, version: int, writer: asyncio.StreamWriter, *, body: bool = True
    ) -> None:
        value, size, held = await self._store.open_local(key)
        if version and held < version:  # committed here a moment ago: its copy is landing
            if not isinstance(value, bytes):
                value.close()
            await self._store.landed(key)
            value, size, held = await self._store.open_local(key)
        try:
            if version and held != version:
                raise Unavailable(f"this node holds version {held} of {key!r}, not {version}")
            writer.write(orjson.dumps({"ok": True, "version": held, "size": size}) + b"\n")
            if not body:
                await writer.drain()
            elif isinstance(value, bytes):
                writer.write(value)
                await writer.drain()
            else:
                loop = asyncio.get_running_loop()
                await writer.drain()
                await loop.sendfile(writer.transport, value, 0, size)
        finally:
            if not isinstance(value, bytes):
                value.close()

    async def _receive(
        self, key: str, size: int, expected: int | None, reader: asyncio.StreamReader
    ) -> None:
        path = await self._store.staging_path()
        try:
            await _read_into(reader, size, path)
            await self._store.put_file(key, path, expected, move=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def _read_into(reader: asyncio.StreamReader, size: int, path: Path) -> None:
    """Exactly `size` bytes from `reader` into the new file `path`, chunk by chunk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        left = size
        while left:
            chunk = await asyncio.wait_for(reader.read(min(left, CHUNK)), _TIMEOUT_S)
            if not chunk:
                raise Unavailable(f"the transfer broke after {size - left} of {size} bytes")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            left -= len(chunk)
    finally:
        os.close(fd)


async def _discard(reader: asyncio.StreamReader, size: int) -> None:
    while size:
        chunk = await asyncio.wait_for(reader.read(min(size, CHUNK)), _TIMEOUT_S)
        if not chunk:
            return
        size -= len(chunk)


class ObjectTransferClient:
    """Gets and puts objects at nodes' transfer services, reusing idle connections."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._ssl: ssl.SSLContext | None = credentials.ssl_context()
        if self._ssl is not None:
            self._ssl.set_alpn_protocols(["spear-objects"])
        self._idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def _connect(self, address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pool = self._idle.get(address)
        while pool:
            reader, writer = pool.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        host, port = parse_listen(address)
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=host if self._ssl else None,
                    limit=CHUNK,
                ),
                _TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            raise Unavailable(
                f"cannot reach the object transfer service at {address}: {exc}"
            ) from None

    def _release(
        self, address: str, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    ) -> None:
        self._idle.setdefault(address, []).append(conn)

    async def _request(
        self, address: str, request: dict[str, Any], body: memoryview | BinaryIO | None = None
    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], dict[str, Any]]:
        if self._credentials.token:
            request["token"] = self._credentials.token
        conn = await self._connect(address)
        reader, writer = conn
        try:
            writer.write(orjson.dumps(request) + b"\n")
            if isinstance(body, memoryview):
                for start in range(0, len(body), CHUNK):
                    writer.write(body[start : start + CHUNK])
                    await writer.drain()
            await writer.drain()
            if body is not None and not isinstance(body, memoryview):
                await asyncio.get_running_loop().sendfile(writer.transport, body)
            line = await asyncio.wait_for(reader.readline(), _TIMEOUT_S)
            if not line:
                raise Unavailable(f"the object transfer service at {address} closed the connection")
            answer: dict[str, Any] = orjson.loads(line)
        except BaseException:
            writer.close()
            raise
        if not answer.get("ok"):
            self._release(address, conn)
            raise error_from_code(str(answer.get("code")), str(answer.get("message")))
        return conn, answer

    async def fetch(self, address: str, key: str, version: int, dest: Path) -> int:
        """Version `version` of `key` into the new file `dest`; its size. On failure `dest`
        does not exist."""
        try:
            conn, answer = await self._request(
                address, {"op": "get", "key": key, "version": version}
            )
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise Unavailable(f"the transfer of {key!r} from {address} failed: {exc}") from None
        size = int(answer["size"])
        try:
            await _read_into(conn[0], size, dest)
        except BaseException as exc:
            conn[1].close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
            if isinstance(exc, (ConnectionError, OSError, TimeoutError)):
                raise Unavailable(f"the transfer of {key!r} from {address} broke: {exc}") from None
            if isinstance(exc, Unavailable):
                raise Unavailable(f"{key!r} from {address}: {exc}") from None
            raise
        self._release(address, conn)
        return size

    async def get(self, address: str, key: str) -> tuple[bytes, int]:
        """(value, version) of `key` as the node at `address` holds it, into memory once."""
        conn, answer = await self._request(address, {"op": "get", "key": key, "version": 0})
        try:
            data = await asyncio.wait_for(conn[0].readexactly(int(answer["size"])), _TIMEOUT_S)
        except BaseException:
            conn[1].close()
            raise
        self._release(address, conn)
        return data, int(answer["version"])

    async def prefetch(self, address: str, key: str) -> tuple[int, int]:
        """Make the node at `address` hold the current version of `key` (fetching it from
        a holder if need be) without sending it here; (version, size)."""
        request = {"op": "get", "key": key, "version": 0, "body": False}
        conn, answer = await self._request(address, request)
        self._release(address, conn)
        return int(answer["version"]), int(answer["size"])

    async def put_file(
        self, address: str, key: str, source: Path, expected_version: int | None = None
    ) -> int:
        """Write the file `source` under `key` at the node at `address` (sent with the
        kernel's sendfile on plain TCP); the new version."""
        with open(source, "rb") as f:  # noqa: ASYNC230 - opening is short
            size = os.fstat(f.fileno()).st_size
            request: dict[str, Any] = {"op": "put", "key": key, "size": size}
            if expected_version is not None:
                request["expected_version"] = expected_version
            conn, answer = await self._request(address, request, f)
        self._release(address, conn)
        return int(answer["version"])

    async def put(
        self, address: str, key: str, value: bytes | memoryview, expected_version: int | None = None
    ) -> int:
        """Write `value` under `key` at the node at `address`; the new version."""
        view = memoryview(value).cast("B")
        request: dict[str, Any] = {"op": "put", "key": key, "size": len(view)}
        if expected_version is not None:
            request["expected_version"] = expected_version
        conn, answer = await self._request(address, request, view)
        self._release(address, conn)
        return int(answer["version"])

    async def aclose(self) -> None:
        writers = [writer for pool in self._idle.values() for _, writer in pool]
        self._idle.clear()
        for writer in writers:
            writer.close()
        with anyio.move_on_after(1.0):  # (TLS needs a few loop turns to close its socket)
            for writer in writers:
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
