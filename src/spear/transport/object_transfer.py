"""The object transfer service: object bytes between nodes (and clients) on a connection of
their own, not as protobuf messages through a pure-Python HTTP/2 stack (docs/objects.md).

One request per exchange, many exchanges per connection. A request is one line of JSON:

    {"op": "get", "key": K, "version": V, "body": B?, "info": I?, "token": T?, "namespace": S?}
    {"op": "put", "key": K, "size": N, "expected_version": E?, "info": I?, ...}  + N bytes

A get of version V > 0 (a node fetching a copy) is served only from this node's copy of V;
V = 0 (a client) reads the current version as any get on this node does, fetching it from
a holder first if need be; `"body": false` answers with the header only (a prefetch).
The answer is one line of JSON, `{"ok": true, "version": V, "size": N}` (a get's N bytes
follow; with `"info": true` also the object's `refs`, `pinned` and `locations`), or
`{"ok": false, "code": C, "message": M}` (spear's error codes). Keys are a namespace's, as
over gRPC: the token's namespace (or the one named, if the token may act in it); a member
naming none reads the store's own keys.

Bytes move on blocking sockets in threads (the GIL is released in every send and
receive): the sender uses the kernel's `sendfile` from the value's file on plain TCP, or
1 MiB reads through TLS; the receiver reads 1 MiB at a time straight into a new file. So
memory stays bounded whatever the size, and a transfer cut short leaves no file behind.
Measured on this loaded 2-core machine (256 MiB, loopback): asyncio streams moved
30-240 MB/s, these threads several times that (benchmarks/objects_cluster_bench.py).

Who may: a member presents its cluster certificate (TLS); a user a token in the request
(reader for get, submitter for put), checked by the same Authorizer as gRPC calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import threading
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import anyio.to_thread
import orjson

from spear._logging import logger
from spear.core import namespaces as ns
from spear.errors import (
    InvalidArgument,
    SpearError,
    Unauthenticated,
    Unavailable,
    error_from_code,
)
from spear.store.object_info import ObjectInfo
from spear.transport.auth import NAMESPACE_KEY, Role, require_role
from spear.transport.filled_bytes import filled_bytes
from spear.transport.sealed import KEY_BYTES, SealedSocket, new_key
from spear.transport.serving import format_address, parse_listen

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Coroutine
    from pathlib import Path

    from spear.store.objects import ObjectStore
    from spear.transport.auth import Authorizer, Principal
    from spear.transport.channels import Credentials
    from spear.transport.serving import Security

CHUNK = 1 << 20  # bytes read or written at a time: memory per transfer stays about this
_LINE_BUFFER = 64 * 1024  # a sealed connection's read buffer (request and answer lines)
_HEADER_MAX = 64 * 1024
_TIMEOUT_S = 30.0  # no progress for this long: the peer is gone
_ANSWER_TIMEOUT_S = 600.0  # a node may fetch a large value before it answers a client
_MAX_CONNECTIONS = 64
_ALPN = ["spear-objects"]
_limiter = anyio.CapacityLimiter(16)  # client transfers at once, per process


class TransferBroken(Unavailable):
    """The transfer service could not be reached, or the connection broke (rather than
    the service answering that the object is unavailable)."""


class _Connection:
    """A blocking socket (TLS, sealed or in the clear) with a buffered reader, for one side
    of a transfer. `tls`: its bytes are encrypted (no `sendfile`); `sealed`: by spear's own
    records after a TLS handshake (transport/sealed.py), no longer by TLS."""

    def __init__(
        self,
        sock: socket.socket | SealedSocket,
        *,
        tls: bool,
        peer: str | None = None,
        sealed: bool = False,
    ) -> None:
        self.sock = sock
        # (a sealed record that fits is opened straight into a large read's buffer: the
        # buffered reader hands reads larger than its buffer to the socket whole)
        self.rfile: Any = sock.makefile("rb", buffering=_LINE_BUFFER if sealed else CHUNK)
        self.tls = tls  # (an unwrapped SSLSocket still has getpeercert: say it plainly)
        self.peer = peer  # the member's name from its certificate, on a server
        self.sealed = sealed

    @property
    def in_tls(self) -> bool:
        """Still in TLS (it may leave it: `plain`, `seal`)."""
        return self.tls and not self.sealed

    def send_line(self, message: dict[str, Any]) -> None:
        self.sock.sendall(orjson.dumps(message) + b"\n")

    def read_line(self) -> dict[str, Any] | None:
        line = self.rfile.readline(_HEADER_MAX + 1)
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise InvalidArgument("bad request line")
        answer = orjson.loads(line)
        if not isinstance(answer, dict):
            raise InvalidArgument("a request or answer is one JSON object")
        return answer

    def send_file(self, f: BinaryIO, size: int) -> None:
        if not self.tls:  # the kernel's sendfile (socket.sendfile copes with the timeout)
            assert isinstance(self.sock, socket.socket)
            # (an empty file sends nothing: socket.sendfile refuses a count of 0)
            if size and self.sock.sendfile(f, 0, size) != size:
                raise ConnectionError("the value file ended early")
            return
        buf = bytearray(min(CHUNK, size) or 1)
        view = memoryview(buf)
        left = size
        while left:
            n = f.readinto(view[: min(left, CHUNK)])  # type: ignore[attr-defined]
            if not n:
                raise ConnectionError("the value file ended early")
            self.sock.sendall(view[:n])
            left -= n

    def send_bytes(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK):
            self.sock.sendall(view[start : start + CHUNK])

    def read_into_file(self, size: int, path: Path, *, over: bool = False) -> None:
        """Exactly `size` bytes into the new file `path` (with `over`, into a file there
        too, written over from its start: a spare, store/spare_files.py); on failure no
        file remains."""
        exclusive = 0 if over else os.O_EXCL
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | exclusive, 0o600)
        try:
            buf = bytearray(min(CHUNK, size) or 1)
            view = memoryview(buf)
            left = size
            while left:
                n = self.rfile.readinto(view[: min(left, CHUNK)])
                if not n:
                    raise Unavailable(f"the transfer broke after {size - left} of {size} bytes")
                written = view[:n]
                while written:
                    written = written[os.write(fd, written) :]
                left -= n
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        os.close(fd)

    def read_exactly(self, size: int) -> bytes:
        """The next `size` bytes, read into a new `bytes` (transport/filled_bytes.py)."""
        return filled_bytes(size, self._read_into)

    def _read_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self.rfile.readinto(view[got:])
            if not n:
                raise Unavailable(f"the transfer broke after {got} of {len(view)} bytes")
            got += n

    def discard(self, size: int) -> None:
        while size:
            chunk = self.rfile.read(min(size, CHUNK))
            if not chunk:
                return
            size -= len(chunk)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            self.sock.close()


def asked_namespace(request: dict[str, Any]) -> str | None:
    """The namespace a request names (checked: one clear error if malformed), or None."""
    asked = request.get("namespace") or None
    if asked is None:
        return None
    return ns.check_name(str(asked))


def request_token(request: dict[str, Any], missing: str) -> str:
    """The token a request carries; Unauthenticated with `missing` if it carries none."""
    token = request.get("token")
    if not isinstance(token, str):
        raise Unauthenticated(missing)
    return token


def token_namespace(
    authorizer: Authorizer, principal: Principal | None, request: dict[str, Any], need: Role
) -> str:
    """The namespace a request acts in, for the principal its token named (None: the
    token is unknown), if that principal may do what it asks (`need`)."""
    if principal is None:
        raise Unauthenticated("the token was not accepted (unknown or revoked)")
    require_role(principal, need, f"{request.get('op')} objects")
    namespace = authorizer.namespace(principal, {NAMESPACE_KEY: request.get("namespace") or ""})
    assert namespace is not None  # (a principal with a token is no member)
    return namespace


def _certificate_name(sock: Any) -> str | None:
    cert = sock.getpeercert()
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def info_fields(info: ObjectInfo) -> dict[str, Any]:
    """What an answer with `"info": true` adds: the object's refs, pin and holders."""
    return {"refs": info.refs, "pinned": info.pinned, "locations": list(info.locations)}


def answer_info(key: str, answer: dict[str, Any]) -> ObjectInfo:
    """What an answer says of the object `key` (its version, size, refs, pin, holders)."""
    return ObjectInfo(
        key=key,
        version=int(answer["version"]),
        size=int(answer["size"]),
        refs=int(answer.get("refs", 0)),
        pinned=bool(answer.get("pinned", False)),
        locations=tuple(str(n) for n in answer.get("locations", ())),
    )


class ObjectTransferServer:
    """Serves the node's object store on a port of its own; a thread per connection."""

    def __init__(
        self,
        store: ObjectStore,
        security: Security,
        *,
        allow_plain: bool = False,
        allow_seal: bool = True,
        admit_put: Callable[[str, str, int], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """`allow_plain`: a member may ask for the bytes in the clear after the TLS handshake
        authenticated it (setting object_transfer_encrypt = false). `allow_seal`: a caller
        may have the connection sealed after the handshake (object_transfer_seal).
        `admit_put(namespace, key, size)` raises if a namespace's put would break its
        quota."""
        self._store = store
        self._admit_put = admit_put
        self._security = security
        self._allow_plain = allow_plain
        self._allow_seal = allow_seal
        self._ssl: ssl.SSLContext | None = None
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: set[_Connection] = set()
        self._lock = threading.Lock()
        self.address: str | None = None

    async def start(self, listen: str) -> str:
        """Serve on `listen`; values a previous run left half-received are removed first
        (only this service receives into the store's staging files)."""
        await self._store.clear_staging()
        host, port = parse_listen(listen)
        if self._security.tls is not None:
            self._ssl = self._security.tls.server_context()
            self._ssl.set_alpn_protocols(_ALPN)
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(64)
        self._listener = listener
        self.address = format_address(host, listener.getsockname()[1])
        threading.Thread(target=self._accept, name="spear-objects-accept", daemon=True).start()
        return self.address

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                full = len(self._open) >= _MAX_CONNECTIONS
            if full:
                sock.close()
                continue
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _check(self, request: dict[str, Any], conn: _Connection, need: Role) -> str | None:
        """Whether the caller may; the namespace it acts in (None: the store's own keys)."""
        asked = asked_namespace(request)
        authorizer = self._security.authorizer
        if authorizer is None or conn.peer is not None:
            # open (tests, benchmarks), or a member (certificate checked by the CA)
            return asked
        token = request_token(
            request, "the object transfer service requires a token or certificate"
        )
        principal = authorizer.tokens.verify(token) if authorizer.tokens is not None else None
        if principal is None and authorizer.cluster is not None:  # a token of the SMS's
            principal = self._call(authorizer.cluster.verify(token))
        return token_namespace(authorizer, principal, request, need)

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_side=True)
        except OSError:
            sock.close()
            return
        tls = self._ssl is not None
        conn = _Connection(sock, tls=tls, peer=_certificate_name(sock) if tls else None)
        with self._lock:
            self._open.add(conn)
        try:
            while True:
                try:
                    request = conn.read_line()
                except (ValueError, SpearError):
                    conn.send_line({"ok": False, "code": "invalid", "message": "bad request"})
                    return
                if request is None:
                    return
                if request.get("op") == "plain":
                    conn = self._unwrap(conn)
                    continue
                if request.get("op") == "seal":
                    conn = self._seal(conn, request)
                    continue
                try:
                    self._exchange(request, conn)
                except SpearError as exc:
                    conn.send_line({"ok": False, "code": exc.code, "message": str(exc)})
                except (KeyError, TypeError, ValueError):
                    conn.send_line({"ok": False, "code": "invalid", "message": "bad request"})
                    return
        except (OSError, ConnectionError):
            pass  # the peer went away; nothing was committed for it
        except Exception:
            logger.exception("object transfer failed")
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _unwrap(self, conn: _Connection) -> _Connection:
        """The rest of the connection in the clear, for a member (certificate) only."""
        if not (self._allow_plain and conn.in_tls and conn.peer is not None):
            conn.send_line({"ok": False, "code": "denied", "message": "bytes stay encrypted"})
            return conn
        conn.send_line({"ok": True})
        plain = _Connection(conn.sock.unwrap(), tls=False, peer=conn.peer)  # type: ignore[union-attr]
        return self._became(conn, plain)

    def _seal(self, conn: _Connection, request: dict[str, Any]) -> _Connection:
        """The rest of the connection sealed (transport/sealed.py): the client's key for
        what it sends came in the request, through TLS; ours goes back the same way."""
        theirs = _key(request.get("key"))
        if not (self._allow_seal and conn.in_tls) or theirs is None:
            conn.send_line({"ok": False, "code": "invalid", "message": "cannot seal this"})
            return conn
        ours = new_key()
        conn.send_line({"ok": True, "key": ours.hex()})
        raw = conn.sock.unwrap()  # type: ignore[union-attr]  # (in TLS: an SSLSocket)
        sealed = SealedSocket(raw, send_key=ours, receive_key=theirs)
        return self._became(conn, _Connection(sealed, tls=True, peer=conn.peer, sealed=True))

    def _became(self, conn: _Connection, new: _Connection) -> _Connection:
        """`new`, the connection `conn` became (out of TLS), served and closed in its place."""
        with self._lock:
            self._open.discard(conn)
            self._open.add(new)
        return new

    def _exchange(self, request: dict[str, Any], conn: _Connection) -> None:
        op, key, info = request["op"], request["key"], request.get("info") is True
        if not isinstance(key, str):  # (malformed: answered so, and the connection closed)
            raise TypeError(f"an object key is text, not {key!r}")
        if op == "get":
            namespace = self._check(request, conn, Role.READER)
            key = key if namespace is None else ns.stored_key(namespace, key)
            version = int(request.get("version") or 0)
            body = request.get("body", True) is not False
            if version:
                self._send(key, version, conn, body=body)
                return
            # A client: the current version as any get here (one hand-off to the loop).
            value, answer = self._call(self._read(key, info))
            if conn.tls or len(value) <= CHUNK:  # (a small one may live in the index only)
                conn.send_line(answer)
                if body:
                    conn.send_bytes(value)
            else:  # held here from now on: its file goes with the kernel's sendfile
                self._send(key, answer["version"], conn, body=body, answer=answer, newer=True)
        elif op == "put":
            size = int(request["size"])
            try:
                namespace = self._check(request, conn, Role.SUBMITTER)
                if namespace is not None:
                    ns.refuse_system_write(key)
                    if self._admit_put is not None:
                        self._call(self._admit_put(namespace, key, size))
                    key = ns.stored_key(namespace, key)
            except SpearError:
                conn.discard(size)  # (keeps the connection in step)
                raise
            expected = request.get("expected_version")
            expected = None if expected is None else int(expected)
            path = self._store.staging_path()
            try:
                self._store.spares.place(path, size)
                conn.read_into_file(size, path, over=True)
                put = self._write(
                    key, path, size, None if expected is None else int(expected), info
                )
                conn.send_line(self._call(put))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        else:
            raise InvalidArgument(f"unknown object transfer operation {op!r}")

    async def _read(self, key: str, info: bool) -> tuple[memoryview, dict[str, Any]]:
        if not info:
            value, version = await self._store.get(key)
            return value, {"ok": True, "version": version, "size": len(value)}
        value, found = await self._store.get_with_info(key)  # (no second lookup)
        answer = {"ok": True, "version": found.version, "size": len(value)}
        return value, answer | info_fields(found)

    async def _write(
        self, key: str, path: Path, size: int, expected: int | None, info: bool
    ) -> dict[str, Any]:
        version = await self._store.put_file(key, path, expected, move=True)
        answer = {"ok": True, "version": version, "size": size}
        if info:
            answer.update(info_fields(await self._store.info(key)))
        return answer

    def _send(
        self,
        key: str,
        version: int,
        conn: _Connection,
        *,
        body: bool,
        answer: dict[str, Any] | None = None,
        newer: bool = False,
    ) -> None:
        """Send `version` of `key` from this node's copy (waiting for a copy committed a
        moment ago to land); `newer`: a client's get of the current version, which is
        sent a version that landed since it was looked up, not refused."""
        value, size, held = self._call(self._store.open_local(key))
        if version and held < version:  # committed here a moment ago: its copy is landing
            if not isinstance(value, bytes):
                value.close()
            self._call(self._store.landed(key))
            value, size, held = self._call(self._store.open_local(key))
        try:
            if version and held != version and not (newer and held > version):
                raise Unavailable(f"this node holds version {held} of {key!r}, not {version}")
            conn.send_line({**(answer or {}), "ok": True, "version": held, "size": size})
            if not body:
                return
            if isinstance(value, bytes):
                conn.send_bytes(value)
            else:
                conn.send_file(value, size)
        finally:
            if not isinstance(value, bytes):
                value.close()


class ObjectTransferClient:
    """Gets and puts objects at nodes' transfer services, reusing idle connections."""

    def __init__(
        self, credentials: Credentials, *, encrypt: bool = True, seal: bool = True
    ) -> None:
        """`encrypt` false: a member (presenting its certificate) asks nodes for the bytes
        in the clear after the handshake; nodes that do not allow it keep TLS. Otherwise,
        over TLS, the connection is sealed after the handshake (transport/sealed.py), or
        stays in TLS with a node that does not seal; `seal` false never asks
        (object_transfer_seal)."""
        self._credentials = credentials
        self._plain = not encrypt and credentials.tls is not None and credentials.tls.present
        self._ssl: ssl.SSLContext | None = credentials.ssl_context()
        self._seal = seal
        if self._ssl is not None:
            self._ssl.set_alpn_protocols(_ALPN)
        self._idle: dict[str, list[_Connection]] = {}
        self._lock = threading.Lock()

    def _connect(self, address: str) -> tuple[_Connection, bool]:
        """A connection to `address`, and whether it was pooled (idle since its last use)."""
        while True:
            with self._lock:
                pool = self._idle.get(address)
                conn = pool.pop() if pool else None
            if conn is None:
                break
            readable, _, _ = select.select([conn.sock], [], [], 0)
            if not readable:  # (an idle connection has nothing to read unless it closed)
                return conn, True
            conn.close()
        host, port = parse_listen(address)
        sock: socket.socket | None = None
        made: _Connection | None = None
        try:
            sock = socket.create_connection((host, port), timeout=_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=host)
            conn = made = _Connection(sock, tls=self._ssl is not None)
            if self._plain and conn.tls:
                conn.send_line({"op": "plain"})
                answer = conn.read_line()
                if answer is not None and answer.get("ok"):
                    conn = _Connection(sock.unwrap(), tls=False)  # type: ignore[attr-defined]
            elif self._seal and conn.tls:
                conn = _sealed(conn)
        except (OSError, ValueError) as exc:
            if made is not None:  # (a seal or plain that failed: nothing kept open)
                made.close()
            elif sock is not None:  # (a handshake that failed)
                sock.close()
            raise TransferBroken(
                f"cannot reach the object transfer service at {address}: {exc}"
            ) from None
        return conn, False

    def _release(self, address: str, conn: _Connection) -> None:
        with self._lock:
            self._idle.setdefault(address, []).append(conn)

    def _exchange(
        self,
        address: str,
        request: dict[str, Any],
        body: bytes | memoryview | BinaryIO | None,
        receive: Any,
    ) -> Any:
        """One request and its answer; `receive` reads what follows a good answer."""
        if self._credentials.token:
            request["token"] = self._credentials.token
        if self._credentials.namespace:
            request["namespace"] = self._credentials.namespace
        while True:
            conn, pooled = self._connect(address)
            try:
                conn.send_line(request)
                if isinstance(body, (bytes, bytearray, memoryview)):
                    conn.send_bytes(body)
                elif body is not None:
                    conn.send_file(body, os.fstat(body.fileno()).st_size)
                conn.sock.settimeout(_ANSWER_TIMEOUT_S)
                answer = conn.read_line()
                conn.sock.settimeout(_TIMEOUT_S)
                if answer is None:
                    raise ConnectionError("the connection was closed")
            except (OSError, ValueError, SpearError) as exc:
                conn.close()
                if pooled and body is None and not isinstance(exc, TimeoutError):
                    continue  # closed by the peer while idle: a get is safe to send again
                raise TransferBroken(f"the object transfer with {address} failed: {exc}") from None
            except BaseException:
                conn.close()
                raise
            if not answer.get("ok"):
                self._release(address, conn)
                raise error_from_code(str(answer.get("code")), str(answer.get("message")))
            try:
                out = receive(conn, answer)
            except (OSError, ValueError, SpearError) as exc:
                conn.close()
                raise TransferBroken(f"the object transfer with {address} failed: {exc}") from None
            except BaseException:
                conn.close()
                raise
            self._release(address, conn)
            return out

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=_limiter)

    async def fetch(
        self, address: str, key: str, version: int, dest: Path, *, over: bool = False
    ) -> int:
        """Version `version` of `key` into the new file `dest` (with `over`, into a file
        there too, written over: a store's spare); its size. On failure `dest` does not
        exist."""

        def receive(conn: _Connection, answer: dict[str, Any]) -> int:
            size = int(answer["size"])
            conn.read_into_file(size, dest, over=over)
            return size

        request = {"op": "get", "key": key, "version": version}
        size: int = await self._run(self._exchange, address, request, None, receive)
        return size

    async def get(self, address: str, key: str) -> tuple[bytes, int]:
        """(value, version): the current version of `key`, read by the node at `address`."""

        def receive(conn: _Connection, answer: dict[str, Any]) -> tuple[bytes, int]:
            return conn.read_exactly(int(answer["size"])), int(answer["version"])

        request = {"op": "get", "key": key, "version": 0}
        out: tuple[bytes, int] = await self._run(self._exchange, address, request, None, receive)
        return out

    async def get_object(self, address: str, key: str) -> tuple[bytes, ObjectInfo]:
        """(value, what is known of it): `key` as the node at `address` reads it."""

        def receive(conn: _Connection, answer: dict[str, Any]) -> tuple[bytes, ObjectInfo]:
            return conn.read_exactly(int(answer["size"])), answer_info(key, answer)

        request = {"op": "get", "key": key, "version": 0, "info": True}
        out: tuple[bytes, ObjectInfo] = await self._run(
            self._exchange, address, request, None, receive
        )
        return out

    async def put_object(
        self, address: str, key: str, value: bytes | memoryview, expected_version: int | None = None
    ) -> ObjectInfo:
        """`put`, answered with what is known of the object after it."""
        view = memoryview(value).cast("B")
        request: dict[str, Any] = {"op": "put", "key": key, "size": len(view), "info": True}
        if expected_version is not None:
            request["expected_version"] = expected_version

        def receive(conn: _Connection, answer: dict[str, Any]) -> ObjectInfo:
            return answer_info(key, answer)

        info: ObjectInfo = await self._run(self._exchange, address, request, view, receive)
        return info

    async def prefetch(self, address: str, key: str) -> tuple[int, int]:
        """Make the node at `address` hold the current version of `key` (fetching it from
        a holder if need be) without sending it here; (version, size)."""

        def receive(conn: _Connection, answer: dict[str, Any]) -> tuple[int, int]:
            return int(answer["version"]), int(answer["size"])

        request = {"op": "get", "key": key, "version": 0, "body": False}
        out: tuple[int, int] = await self._run(self._exchange, address, request, None, receive)
        return out

    async def put(
        self, address: str, key: str, value: bytes | memoryview, expected_version: int | None = None
    ) -> int:
        """Write `value` under `key` at the node at `address`; the new version."""
        view = memoryview(value).cast("B")
        return await self._put(address, key, len(view), view, expected_version)

    async def put_file(
        self, address: str, key: str, source: Path, expected_version: int | None = None
    ) -> int:
        """Write the file `source` under `key` at the node at `address` (sent with the
        kernel's sendfile on plain TCP); the new version."""
        with open(source, "rb") as f:  # noqa: ASYNC230 - opening is short
            size = os.fstat(f.fileno()).st_size
            return await self._put(address, key, size, f, expected_version)

    async def _put(
        self,
        address: str,
        key: str,
        size: int,
        body: memoryview | BinaryIO,
        expected_version: int | None,
    ) -> int:
        request: dict[str, Any] = {"op": "put", "key": key, "size": size}
        if expected_version is not None:
            request["expected_version"] = expected_version

        def receive(conn: _Connection, answer: dict[str, Any]) -> int:
            return int(answer["version"])

        version: int = await self._run(self._exchange, address, request, body, receive)
        return version

    async def aclose(self) -> None:
        with self._lock:
            conns = [c for pool in self._idle.values() for c in pool]
            self._idle.clear()
        for conn in conns:
            conn.close()


def _key(text: Any) -> bytes | None:
    """A sealing key sent as hex, if it is one."""
    if not isinstance(text, str) or len(text) != 2 * KEY_BYTES:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _sealed(conn: _Connection) -> _Connection:
    """A new TLS connection sealed (transport/sealed.py), or as it is if the node does
    not seal (an older node answers that it does not know the operation)."""
    ours = new_key()
    conn.send_line({"op": "seal", "key": ours.hex()})
    answer = conn.read_line()
    if answer is None or not answer.get("ok"):
        return conn
    theirs = _key(answer.get("key"))
    if theirs is None:
        raise ConnectionError("the node sealed the connection with no key")
    raw = conn.sock.unwrap()  # type: ignore[union-attr]  # (in TLS: an SSLSocket)
    return _Connection(SealedSocket(raw, send_key=ours, receive_key=theirs), tls=True, sealed=True)
