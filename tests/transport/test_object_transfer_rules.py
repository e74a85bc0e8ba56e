"""The rules of the object transfer service (transport/object_transfer.py), each stated
exactly: who may ask what (a certificate or a token in each request, its role, its
namespace; the SMS's tokens on a member), the clear text only for members after mutual
TLS, what each answer holds, the sizes a request keeps to, a transfer cut short (nothing
half-received kept), and what the client does with its connections.

tests/transport/test_local_object_transfer.py and tests/cluster/test_object_route.py
check the service through real daemons and a real cluster; these serve a real object store
(LevelDB files, value files) on a real port on loopback, with real TLS (a CA and members'
certificates made as `spear cluster init` makes them) and real tokens, and speak the
protocol by hand where an exact answer is the rule (mutation testing, issue 22). The
client's own rules are checked against a node speaking the protocol by a script (a node
that dies mid-value, or closes a connection while it is idle). Every wait is bounded: a
node that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import ssl
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from log_capture import SpearLog
from test_object_socket_rules import _cluster  # (the SMS's tokens, as a member sees them)

import spear
from spear import join_cluster
from spear.config import Settings
from spear.core import namespaces as ns
from spear.core.object_index import ObjectIndex
from spear.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from spear.node.object_space import NamespaceBytes
from spear.node.quotas import Quota, QuotaFile
from spear.store.leveldb import LevelDBKV
from spear.store.object_info import ObjectInfo
from spear.store.objects import ObjectStore
from spear.store.spare_files import SPARE_DIR
from spear.transport import object_transfer, sealed, tls
from spear.transport.auth import AUTH_DIR, Authorizer, Role, TokenStore
from spear.transport.channels import Credentials
from spear.transport.object_transfer import (
    CHUNK,
    ObjectTransferClient,
    ObjectTransferServer,
    TransferBroken,
    _limiter,
)
from spear.transport.sealed import SealedSocket, new_key
from spear.transport.serving import Security, parse_listen
from spear.transport.tls import CA_CERT, TlsFiles

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterator


WAIT_S = 20  # an answer not there by then is a node that will never answer
HEADER_MAX = 64 * 1024  # a request line's bytes, its newline not counted
NO_CREDENTIAL = "the object transfer service requires a token or certificate"
NOT_ACCEPTED = "the token was not accepted (unknown or revoked)"
BAD_REQUEST = {"ok": False, "code": "invalid", "message": "bad request"}


def _value(size: int, seed: int = 0) -> bytes:
    """`size` bytes that differ at every offset from any other value's (a shift shows)."""
    pattern = bytes((i * 7 + seed) % 251 for i in range(251 * 4))
    return (pattern * (size // len(pattern) + 1))[:size]


# -- the cluster's certificates ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    server: Path  # node-1's TLS files: the node serving
    member: Path  # node-2's: another member of the cluster
    user: Path  # the cluster's CA only: a user, who has no certificate
    stranger: Path  # node-9, certified by another CA (and trusting the cluster's)


def _pki(root: Path) -> Pki:
    tls.create_ca(root / "ca")
    tls.issue(root / "ca", "node-1", root / "node-1")
    tls.issue(root / "ca", "node-2", root / "node-2")
    (root / "user").mkdir()
    (root / "user" / CA_CERT).write_bytes((root / "ca" / CA_CERT).read_bytes())
    tls.create_ca(root / "other-ca")
    tls.issue(root / "other-ca", "node-9", root / "node-9")
    (root / "node-9" / CA_CERT).write_bytes((root / "ca" / CA_CERT).read_bytes())
    return Pki(root / "node-1", root / "node-2", root / "user", root / "node-9")


# -- the protocol by hand ------------------------------------------------------------


class Raw:
    """One connection to the service, spoken by hand. Each call runs in a worker thread
    (the node answers from the event loop this test runs on), bounded by WAIT_S."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")

    @classmethod
    async def open(
        cls, address: str, tls_dir: Path | None = None, *, certificate: bool = False
    ) -> Raw:
        def connect() -> Raw:
            sock = socket.create_connection(parse_listen(address), timeout=WAIT_S)
            if tls_dir is not None:
                ctx = TlsFiles(tls_dir).client_context(present_certificate=certificate)
                sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
            return cls(sock)

        return await anyio.to_thread.run_sync(connect)

    async def send(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = orjson.dumps(data) + b"\n"
        await anyio.to_thread.run_sync(self.sock.sendall, data)

    async def line(self) -> dict[str, Any] | None:
        line = await anyio.to_thread.run_sync(self.rfile.readline)
        if not line:
            return None
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    async def ask(self, request: dict[str, Any], body: bytes = b"") -> dict[str, Any] | None:
        await self.send(orjson.dumps(request) + b"\n" + body)
        return await self.line()

    async def read(self, size: int) -> bytes:
        def read() -> bytes:
            data = self.rfile.read(size)
            assert data is not None
            return data

        return await anyio.to_thread.run_sync(read)

    async def closed_by_node(self) -> bool:
        """Whether the node closed the connection (what is left to read is its end)."""
        try:
            return await self.read(1) == b""
        except ConnectionResetError:  # (closed with our request unread)
            return True

    async def unwrap(self) -> None:
        """The rest of the connection in the clear (after the node said yes)."""
        assert isinstance(self.sock, ssl.SSLSocket)
        plain = await anyio.to_thread.run_sync(self.sock.unwrap)
        self.sock, self.rfile = plain, plain.makefile("rb")

    async def seal(self, ours: bytes, theirs: bytes) -> None:
        """The rest of the connection sealed (after the node said yes, with its key)."""
        assert isinstance(self.sock, ssl.SSLSocket)
        raw = await anyio.to_thread.run_sync(self.sock.unwrap)
        self.wire = raw  # (the bytes on the wire, for a test that alters them)
        sealed = SealedSocket(raw, send_key=ours, receive_key=theirs)
        self.sock, self.rfile = sealed, sealed.makefile("rb")  # type: ignore[assignment]

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


# -- a node serving a real store -----------------------------------------------------


@dataclasses.dataclass
class Node:
    address: str
    home: Path
    store: ObjectStore
    server: ObjectTransferServer
    tokens: TokenStore  # the node's own
    owner: str  # the node owner's token (admin, any namespace)
    pki: Pki | None
    clients: list[ObjectTransferClient] = dataclasses.field(default_factory=list)
    raws: list[Raw] = dataclasses.field(default_factory=list)

    def token(self, name: str, role: Role, namespace: str | None = None) -> str:
        return self.tokens.issue(name, role, namespace)

    def client(
        self,
        token: str | None = None,
        *,
        namespace: str | None = None,
        member: bool = False,
        encrypt: bool = True,
        seal: bool = True,
        tls_dir: Path | None = None,
    ) -> ObjectTransferClient:
        """A client of the node (closed with it): a user's (the CA only, if TLS), or a
        member's (node-2's certificate)."""
        if tls_dir is None and self.pki is not None:
            tls_dir = self.pki.member if member else self.pki.user
        files = TlsFiles(tls_dir) if tls_dir is not None else None
        credentials = Credentials(token=token, tls=files, namespace=namespace)
        client = ObjectTransferClient(credentials, encrypt=encrypt, seal=seal)
        self.clients.append(client)
        return client

    async def raw(self, *, member: bool = False) -> Raw:
        """A connection spoken by hand (TLS if the node serves it; node-2's if `member`)."""
        tls_dir = None if self.pki is None else (self.pki.member if member else self.pki.user)
        raw = await Raw.open(self.address, tls_dir, certificate=member)
        self.raws.append(raw)
        return raw

    def staged(self) -> list[Path]:
        return list((self.home / "objects" / "staging").glob("*"))

    def value_files(self) -> list[Path]:
        """The files of versions the node holds (not staged ones, not spares)."""
        return [
            p
            for p in (self.home / "objects").rglob("*")
            if p.is_file() and "staging" not in p.parts and SPARE_DIR not in p.parts
        ]

    def connections(self) -> int:
        """Connections the node is serving now."""
        with self.server._lock:
            return len(self.server._open)


@contextlib.asynccontextmanager
async def _serving(
    tmp_path: Path,
    *,
    with_tls: bool = True,
    allow_plain: bool = False,
    allow_seal: bool = True,
    open_to_all: bool = False,
    sms: TokenStore | None = None,
    own_tokens: bool = True,
    admit: Callable[[str, str, int], Coroutine[Any, Any, None]] | None = None,
    listen: str = "127.0.0.1:0",
) -> AsyncIterator[Node]:
    """A node's object store served by its transfer service: with the cluster's TLS (node-1's
    certificate) unless not `with_tls`, the node's tokens (and the SMS's, given `sms`;
    only those, without `own_tokens`) and its namespaces' quotas."""
    home = tmp_path / "home"
    home.mkdir()
    pki = _pki(tmp_path / "pki") if with_tls else None
    tokens = TokenStore(home)
    owner = tokens.owner_token()
    files = TlsFiles(pki.server) if pki is not None else None
    if open_to_all:
        security = Security(authorizer=None, tls=files)
    else:
        cluster = _cluster(sms) if sms is not None else None
        authorizer = Authorizer(tokens if own_tokens else None, cluster=cluster)
        security = Security(authorizer, files)
    kv = LevelDBKV.open(str(home / "meta.ldb"))
    store = ObjectStore(kv, home / "objects")
    if admit is None:
        admit = NamespaceBytes(store, QuotaFile(home / AUTH_DIR)).admit
    if allow_plain or not allow_seal:
        server = ObjectTransferServer(
            store, security, allow_plain=allow_plain, allow_seal=allow_seal, admit_put=admit
        )
    else:  # (the default: what a standalone daemon serves)
        server = ObjectTransferServer(store, security, admit_put=admit)
    node: Node | None = None
    try:
        address = await server.start(listen)
        node = Node(address, home, store, server, tokens, owner, pki)
        with anyio.fail_after(WAIT_S):
            yield node
    finally:
        if node is not None:
            for client in node.clients:
                await client.aclose()
            for raw in node.raws:
                raw.close()
        await server.close()
        await kv.aclose()


# -- a node speaking the protocol by a script (the client's rules) --------------------


class ScriptedNode:
    """A port that answers as `script(connection number, conn)` says, one thread per
    connection, for `connections` connections (then it stops listening: a client that
    would try for ever fails instead); what each connection asked is kept in `asked`."""

    def __init__(
        self,
        script: Callable[[int, ScriptedNode.Conn], None],
        connections: int = 4,
        tls_dir: Path | None = None,
    ) -> None:
        self.script = script
        self.connections = connections
        self.tls = TlsFiles(tls_dir).server_context() if tls_dir is not None else None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.asked: list[list[dict[str, Any]]] = []
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    class Conn:
        def __init__(self, sock: socket.socket, asked: list[dict[str, Any]]) -> None:
            self.sock, self.rfile, self.asked = sock, sock.makefile("rb"), asked

        def request(self) -> dict[str, Any] | None:
            line = self.rfile.readline()
            if not line:
                return None
            request: dict[str, Any] = orjson.loads(line)
            self.asked.append(request)
            return request

        def body(self, size: int) -> bytes:
            data = self.rfile.read(size)
            assert data is not None
            return data

        def answer(self, answer: dict[str, Any], data: bytes = b"") -> None:
            self.sock.sendall(orjson.dumps(answer) + b"\n" + data)

    def _accept(self) -> None:
        for number in range(self.connections):
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.settimeout(WAIT_S)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            asked: list[dict[str, Any]] = []
            self.asked.append(asked)
            thread = threading.Thread(target=self._serve, args=(number, sock, asked))
            self.threads.append(thread)
            thread.start()
        self._stop_listening()

    def _stop_listening(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # (wakes a thread in accept)
        self.listener.close()

    def _serve(self, number: int, sock: socket.socket, asked: list[dict[str, Any]]) -> None:
        conn = ScriptedNode.Conn(sock, asked)
        try:
            with contextlib.suppress(OSError):
                self.script(number, conn)
        finally:  # (closed at once even when the script fails: a client never waits on it)
            conn.rfile.close()
            sock.close()

    def close(self) -> None:
        self._stop_listening()
        for thread in self.threads:
            thread.join(WAIT_S)


@contextlib.contextmanager
def _scripted(
    script: Callable[[int, ScriptedNode.Conn], None],
    connections: int = 4,
    tls_dir: Path | None = None,
) -> Iterator[ScriptedNode]:
    node = ScriptedNode(script, connections, tls_dir)
    try:
        yield node
    finally:
        node.close()


async def _until(check: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT_S):
        while not check():
            await anyio.sleep(0.01)


# -- who may: certificates and tokens -------------------------------------------------


@pytest.mark.parametrize("with_tls", [True, False], ids=["tls", "plain"])
def test_a_caller_with_neither_token_nor_certificate_is_refused(
    tmp_path: Path, with_tls: bool
) -> None:
    async def main() -> None:
        async with _serving(tmp_path, with_tls=with_tls) as node:
            await node.store.put("plan", b"secret")
            # (by hand first: a node that never answers fails this in WAIT_S)
            raw = await node.raw()
            answer = await raw.ask({"op": "get", "key": "plan"})
            assert answer == {"ok": False, "code": "unauthenticated", "message": NO_CREDENTIAL}
            # A member's request (a version of a copy) is no different without one.
            answer = await raw.ask({"op": "get", "key": "plan", "version": 1})
            assert answer == {"ok": False, "code": "unauthenticated", "message": NO_CREDENTIAL}
            stranger = node.client()
            with pytest.raises(Unauthenticated, match=f"^{NO_CREDENTIAL}$"):
                await stranger.get(node.address, "plan")
            with pytest.raises(Unauthenticated, match=f"^{NO_CREDENTIAL}$"):
                await stranger.put(node.address, "plan", b"mine now" * 1000)
            with pytest.raises(Unauthenticated, match=f"^{NO_CREDENTIAL}$"):
                await stranger.prefetch(node.address, "plan")
            assert bytes((await node.store.get("plan"))[0]) == b"secret"
            assert node.staged() == []

    anyio.run(main)


def test_a_token_that_is_not_text_unknown_or_revoked_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path) as node:
            await node.store.put("plan", b"secret")
            raw = await node.raw()
            for token in (5, None, ["spear_x"], {"t": 1}):
                answer = await raw.ask({"op": "get", "key": "plan", "token": token})
                assert answer == {"ok": False, "code": "unauthenticated", "message": NO_CREDENTIAL}
            for token in ("spear_unknown", ""):
                answer = await raw.ask({"op": "get", "key": "plan", "token": token})
                assert answer == {"ok": False, "code": "unauthenticated", "message": NOT_ACCEPTED}
            good = node.token("ann", Role.READER)
            answer = await raw.ask({"op": "get", "key": "plan", "token": good})
            assert answer == {"ok": True, "version": 1, "size": 6}
            assert await raw.read(6) == b"secret"
            node.tokens.revoke("ann")
            with pytest.raises(Unauthenticated, match=f"^{re.escape(NOT_ACCEPTED)}$"):
                await node.client(good).get(node.address, "plan")

    anyio.run(main)


def test_a_reader_gets_and_may_not_put_and_a_submitter_may(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path) as node:
            viewer = node.client(node.token("vic", Role.READER))
            writer = node.client(node.token("sam", Role.SUBMITTER))
            version = await writer.put(node.address, "plan", b"sam's")
            assert await viewer.get(node.address, "plan") == (bytearray(b"sam's"), version)
            with pytest.raises(
                PermissionDenied, match=r"^vic \(reader\) may not put objects: it needs submitter$"
            ):
                await viewer.put(node.address, "plan", b"vic's")
            assert await writer.get(node.address, "plan") == (bytearray(b"sam's"), version)
            # A role no token has (a member's) is asked of no one: an admin may both.
            admin = node.client(node.owner)
            assert await admin.put(node.address, "plan", b"owner's") == version + 1
            assert await admin.get(node.address, "plan") == (bytearray(b"owner's"), version + 1)

    anyio.run(main)


def test_a_refused_put_is_read_past_and_the_connection_goes_on(tmp_path: Path) -> None:
    """The node answers a refused put after reading its bytes: the next request on the
    same connection is read as a request, not as the rest of the value."""

    async def main() -> None:
        async with _serving(tmp_path) as node:
            vic = node.token("vic", Role.READER)
            raw = await node.raw()
            # (what requests look like, past one chunk: none of it is read as one)
            body = b'{"op": "get", "key": "x"}\n' * (CHUNK // 20)
            assert len(body) > CHUNK
            request = {"op": "put", "key": "plan", "size": len(body), "token": vic}
            answer = await raw.ask(request, body)
            assert answer == {
                "ok": False,
                "code": "denied",
                "message": "vic (reader) may not put objects: it needs submitter",
            }
            answer = await raw.ask({"op": "get", "key": "plan", "token": vic})
            assert answer is not None and answer["code"] == "not_found"
            answer = await raw.ask({"op": "put", "key": "@ns/x/y", "size": 3, "token": vic}, b"abc")
            assert answer is not None and answer["code"] == "denied"
            version = await node.store.put("plan", b"here")
            answer = await raw.ask({"op": "get", "key": "plan", "token": vic})
            assert answer == {"ok": True, "version": version, "size": 4}
            assert await raw.read(4) == b"here"
            assert node.staged() == []

    anyio.run(main)


def test_the_smss_tokens_are_accepted_after_the_nodes_own(tmp_path: Path) -> None:
    async def main() -> None:
        sms_home = tmp_path / "sms"
        sms_home.mkdir()
        sms = TokenStore(sms_home)
        async with _serving(tmp_path, sms=sms) as node:
            at_sms = node.client(sms.issue("sue", Role.SUBMITTER, "team-a"))
            version = await at_sms.put(node.address, "plan", b"sue's")
            assert bytes((await node.store.get("@ns/team-a/plan"))[0]) == b"sue's"
            assert await at_sms.get(node.address, "plan") == (bytearray(b"sue's"), version)
            reader = node.client(sms.issue("rae", Role.READER))
            with pytest.raises(PermissionDenied, match=r"^rae \(reader\) may not put objects"):
                await reader.put(node.address, "plan", b"x")
            # the node's own tokens still work, and one neither knows is refused
            own = node.client(node.token("ann", Role.READER, "team-a"))
            assert await own.get(node.address, "plan") == (bytearray(b"sue's"), version)
            with pytest.raises(Unauthenticated, match=f"^{re.escape(NOT_ACCEPTED)}$"):
                await node.client("spear_nobody").get(node.address, "plan")

    anyio.run(main)


def test_a_node_without_tokens_of_its_own_asks_the_sms(tmp_path: Path) -> None:
    async def main() -> None:
        sms_home = tmp_path / "sms"
        sms_home.mkdir()
        sms = TokenStore(sms_home)
        async with _serving(tmp_path, sms=sms, own_tokens=False) as node:
            at_sms = node.client(sms.issue("sue", Role.SUBMITTER))
            version = await at_sms.put(node.address, "plan", b"sue's")
            assert await at_sms.get(node.address, "plan") == (bytearray(b"sue's"), version)
            with pytest.raises(Unauthenticated, match=f"^{re.escape(NOT_ACCEPTED)}$"):
                await node.client(node.owner).get(node.address, "plan")

    anyio.run(main)


def test_a_node_with_no_tokens_at_all_refuses_every_token(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path, own_tokens=False) as node:
            with pytest.raises(Unauthenticated, match=f"^{re.escape(NOT_ACCEPTED)}$"):
                await node.client(node.owner).get(node.address, "plan")

    anyio.run(main)


def test_a_member_is_admitted_by_its_certificate_and_reads_the_stores_own_keys(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with _serving(tmp_path, admit=None) as node:
            QuotaFile(node.home / AUTH_DIR).set(Quota("team-a", object_bytes=100))
            member = node.client(member=True)
            # Naming no namespace: the store's own keys, whatever they are.
            version = await member.put(node.address, "@ns/team-a/plan", b"x" * 200)
            assert await member.get(node.address, "@ns/team-a/plan") == (
                bytearray(b"x" * 200),
                version,
            )
            results = await member.put(node.address, "results/t-1", b"a result")
            assert (await node.store.get("results/t-1")) == (b"a result", results)
            # Naming one: its keys, its quota, and results/ are the node's to write.
            in_a = node.client(member=True, namespace="team-a")
            assert await in_a.get(node.address, "plan") == (bytearray(b"x" * 200), version)
            with pytest.raises(ResourceExhausted, match="quota of 100 object bytes"):
                await in_a.put(node.address, "more", b"y" * 50)
            with pytest.raises(PermissionDenied, match="written only by the node"):
                await in_a.put(node.address, "results/t-2", b"forged")
            with pytest.raises(NotFound):
                await node.store.get("@ns/team-a/results/t-2")
            in_b = node.client(member=True, namespace="team-b")
            version = await in_b.put(node.address, "plan", b"b's")
            assert (await node.store.get("@ns/team-b/plan")) == (b"b's", version)

    anyio.run(main)


def test_a_certificate_only_counts_when_the_clusters_ca_signed_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path) as node:
            assert node.pki is not None
            await node.store.put("plan", b"secret")
            # node-9's certificate, of another CA: the node ends the connection unanswered
            # (at the handshake, or at once after it: TLS 1.3 checks it then)
            try:
                raw = await Raw.open(node.address, node.pki.stranger, certificate=True)
                node.raws.append(raw)
                answer = await raw.ask({"op": "get", "key": "plan"})
            except (ssl.SSLError, ConnectionError):
                answer = None
            assert answer is None
            # (and one that does not trust the node's certificate never sends a request)
            lost = tmp_path / "lost"
            tls.create_ca(lost)
            with pytest.raises(TransferBroken, match="cannot reach"):
                await node.client(tls_dir=lost).get(node.address, "plan")

    anyio.run(main)


# -- the clear text: members only, after mutual TLS -----------------------------------


def test_a_member_may_ask_for_the_clear_after_the_handshake(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path, allow_plain=True) as node:
            await node.store.put("plan", b"v" * 10_000)
            raw = await node.raw(member=True)
            assert await raw.ask({"op": "plain"}) == {"ok": True}
            await raw.unwrap()
            # In the clear from here, and still the member: no token asked.
            answer = await raw.ask({"op": "get", "key": "plan"})
            assert answer == {"ok": True, "version": 1, "size": 10_000}
            assert await raw.read(10_000) == b"v" * 10_000
            answer = await raw.ask({"op": "put", "key": "plan", "size": 3}, b"new")
            assert answer == {"ok": True, "version": 2, "size": 3}
            assert node.connections() == 1
            # Once in the clear, there is no more to ask.
            denied = {"ok": False, "code": "denied", "message": "bytes stay encrypted"}
            assert await raw.ask({"op": "plain"}) == denied
            assert await raw.ask({"op": "get", "key": "plan", "body": False}) == answer
            # The member's client does the same when it says encrypt=False...
            clear = node.client(member=True, encrypt=False)
            assert await clear.get(node.address, "plan") == (bytearray(b"new"), 2)
            [[pooled]] = clear._idle.values()
            assert not pooled.tls
            assert pooled.sock.version() is None  # type: ignore[attr-defined]  # (no TLS)
            big = _value(3 * CHUNK + 5)
            version = await clear.put(node.address, "big", big)
            assert await clear.get(node.address, "big") == (bytearray(big), version)
            # ...and keeps the bytes encrypted by default: sealed after the handshake.
            sealed = node.client(member=True)
            assert await sealed.get(node.address, "big") == (bytearray(big), version)
            [[kept]] = sealed._idle.values()
            assert kept.tls and kept.sealed and isinstance(kept.sock, SealedSocket)

    anyio.run(main)


def test_the_clear_is_refused_to_users_and_where_it_is_not_allowed(tmp_path: Path) -> None:
    denied = {"ok": False, "code": "denied", "message": "bytes stay encrypted"}

    async def main() -> None:
        async with _serving(tmp_path, allow_plain=True) as node:
            await node.store.put("plan", b"secret")
            token = node.token("ann", Role.READER)
            raw = await node.raw()  # a user: TLS, no certificate
            assert await raw.ask({"op": "plain", "token": token}) == denied
            # still TLS, and still served
            answer = await raw.ask({"op": "get", "key": "plan", "token": token})
            assert answer == {"ok": True, "version": 1, "size": 6}
            assert await raw.read(6) == b"secret"
            assert isinstance(raw.sock, ssl.SSLSocket) and raw.sock.version() is not None

    anyio.run(main)
    (tmp_path / "home").rename(tmp_path / "home-1")
    (tmp_path / "pki").rename(tmp_path / "pki-1")

    async def not_allowed() -> None:
        async with _serving(tmp_path) as node:
            await node.store.put("plan", b"secret")
            raw = await node.raw(member=True)
            assert await raw.ask({"op": "plain"}) == denied
            answer = await raw.ask({"op": "get", "key": "plan"})
            assert answer == {"ok": True, "version": 1, "size": 6}
            assert await raw.read(6) == b"secret"
            # A member's client that asks keeps TLS there, and is served.
            clear = node.client(member=True, encrypt=False)
            assert await clear.get(node.address, "plan") == (bytearray(b"secret"), 1)
            [[pooled]] = clear._idle.values()
            assert pooled.tls and pooled.sock.version() is not None  # type: ignore[attr-defined]
            assert await clear.put(node.address, "plan", b"again") == 2

    anyio.run(not_allowed)
    (tmp_path / "home").rename(tmp_path / "home-2")

    async def no_tls() -> None:
        async with _serving(tmp_path, with_tls=False, allow_plain=True) as node:
            raw = await node.raw()
            assert await raw.ask({"op": "plain", "token": node.owner}) == denied

    anyio.run(no_tls)


def test_only_a_client_with_a_certificate_asks_for_the_clear(tmp_path: Path) -> None:
    """A client without a certificate never sends `plain` (its token would follow in the
    clear if a node said yes), nor does a member's unless it says encrypt=False: what a
    node is asked, seen by a node speaking TLS by a script."""
    pki = _pki(tmp_path / "pki")

    def script(number: int, conn: ScriptedNode.Conn) -> None:
        while (request := conn.request()) is not None:
            if request["op"] == "plain":
                conn.answer({"ok": False, "code": "denied", "message": "bytes stay encrypted"})
            elif request["op"] == "seal":  # (as a node from before sealing answers it)
                conn.answer({"ok": False, "code": "invalid", "message": "unknown operation"})
            else:
                conn.answer({"ok": True, "version": 1, "size": 1}, b"x")

    async def main() -> None:
        with _scripted(script, tls_dir=pki.server) as peer:
            clients = [
                ObjectTransferClient(Credentials(token="t", tls=TlsFiles(pki.user)), encrypt=False),
                ObjectTransferClient(Credentials(tls=TlsFiles(pki.member))),
                ObjectTransferClient(Credentials(tls=TlsFiles(pki.member)), encrypt=False),
            ]
            try:
                for client in clients:
                    assert await client.get(peer.address, "k") == (bytearray(b"x"), 1)
                    assert await client.get(peer.address, "k") == (bytearray(b"x"), 1)
            finally:
                for client in clients:
                    await client.aclose()
            assert [[r["op"] for r in asked] for asked in peer.asked] == [
                ["seal", "get", "get"],  # (refused: TLS kept, as with an older node)
                ["seal", "get", "get"],
                ["plain", "get", "get"],  # (refused: the rest kept in TLS, on one connection)
            ]

    anyio.run(main)


# -- sealed after the handshake --------------------------------------------------------


def test_a_tls_connection_is_sealed_after_the_handshake_for_users_and_members(
    tmp_path: Path,
) -> None:
    """Each side's key for what it sends goes through TLS; then the connection leaves TLS
    and every request, answer and byte goes in sealed records (transport/sealed.py)."""

    async def main() -> None:
        async with _serving(tmp_path) as node:
            await node.store.put("plan", b"v" * 10_000)
            token = node.token("ann", Role.SUBMITTER)
            for member in (False, True):
                raw = await node.raw(member=member)
                ours = new_key()
                answer = await raw.ask({"op": "seal", "key": ours.hex()})
                assert answer is not None and answer["ok"] is True
                theirs = bytes.fromhex(answer["key"])
                assert len(theirs) == 32 and theirs != ours
                await raw.seal(ours, theirs)
                got = await raw.ask({"op": "get", "key": "plan", "token": token})
                assert got == {"ok": True, "version": 1, "size": 10_000}
                assert await raw.read(10_000) == b"v" * 10_000
                big = _value(2 * CHUNK + 9)
                put = {"op": "put", "key": f"big-{member}", "size": len(big), "token": token}
                assert (await raw.ask(put, big))["ok"] is True  # type: ignore[index]
                value, _ = await node.store.get(f"big-{member}")
                assert bytes(value) == big
                # Sealed once: neither sealed again nor put in the clear.
                again = await raw.ask({"op": "seal", "key": new_key().hex()})
                assert again == {"ok": False, "code": "invalid", "message": "cannot seal this"}
            assert node.connections() == 2
            # The clients do it by default, for a user and a member alike.
            for client in (node.client(token), node.client(member=True)):
                assert await client.get(node.address, "plan") == (bytearray(b"v" * 10_000), 1)
                [[kept]] = client._idle.values()
                assert kept.sealed and isinstance(kept.sock, SealedSocket)
                await client.aclose()

    anyio.run(main)


@pytest.mark.parametrize(
    "key", [None, "", "ab" * 31, "ab" * 33, "zz" * 32, 12], ids=lambda k: repr(k)[:12]
)
def test_a_seal_without_a_proper_key_is_refused_and_tls_kept(tmp_path: Path, key: Any) -> None:
    async def main() -> None:
        async with _serving(tmp_path) as node:
            await node.store.put("plan", b"secret")
            raw = await node.raw(member=True)
            request: dict[str, Any] = {"op": "seal"} | ({} if key is None else {"key": key})
            refused = {"ok": False, "code": "invalid", "message": "cannot seal this"}
            assert await raw.ask(request) == refused
            assert await raw.ask({"op": "get", "key": "plan"}) == {
                "ok": True, "version": 1, "size": 6,
            }  # fmt: skip
            assert await raw.read(6) == b"secret"  # (still in TLS)

    anyio.run(main)


def test_without_tls_there_is_nothing_to_seal_with(tmp_path: Path) -> None:
    """The keys would cross in the clear: a node without TLS refuses, its client never
    asks."""

    async def main() -> None:
        async with _serving(tmp_path, with_tls=False, open_to_all=True) as node:
            await node.store.put("plan", b"x")
            raw = await node.raw()
            refused = {"ok": False, "code": "invalid", "message": "cannot seal this"}
            assert await raw.ask({"op": "seal", "key": new_key().hex()}) == refused
            client = node.client()
            assert await client.get(node.address, "plan") == (bytearray(b"x"), 1)
            [[kept]] = client._idle.values()
            assert not kept.tls and not kept.sealed
            await client.aclose()

    anyio.run(main)


@pytest.mark.parametrize("answer", ["sealed with no key", "closed"])
def test_a_node_that_answers_a_seal_wrongly_is_a_broken_transfer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """A node that says yes with no proper key, or closes the connection: the client says
    the transfer broke (one clean error), never sends a request in the clear, and keeps
    no socket open."""
    pki = _pki(tmp_path / "pki")
    made: list[Any] = []

    class Recorded(object_transfer._Connection):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            made.append(self)

    monkeypatch.setattr(object_transfer, "_Connection", Recorded)

    def script(number: int, conn: ScriptedNode.Conn) -> None:
        request = conn.request()
        assert request is not None and request["op"] == "seal"
        if answer == "sealed with no key":
            conn.answer({"ok": True, "key": "zz" * 32})

    async def main() -> None:
        with _scripted(script, connections=1, tls_dir=pki.server) as peer:
            client = ObjectTransferClient(Credentials(tls=TlsFiles(pki.member)))
            try:
                with pytest.raises(TransferBroken) as info:
                    await client.get(peer.address, "k")
            finally:
                await client.aclose()
            assert made and all(conn.sock.fileno() == -1 for conn in made)  # (closed)
            if answer == "sealed with no key":
                assert str(info.value).endswith("the node sealed the connection with no key")
            assert [[r["op"] for r in asked] for asked in peer.asked] == [["seal"]]

    anyio.run(main)


def test_a_sealed_put_altered_on_the_wire_stores_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path) as node:
            raw = await node.raw(member=True)
            ours = new_key()
            answer = await raw.ask({"op": "seal", "key": ours.hex()})
            assert answer is not None
            theirs = bytes.fromhex(answer["key"])
            await raw.seal(ours, theirs)
            await raw.send({"op": "put", "key": "plan", "size": 3})
            # The body's record, sealed as the client would, one bit altered on the wire.
            record = bytearray(4 + 3 + 16)
            struct.pack_into(">I", record, 0, 3 + 16)
            AESGCM(ours).encrypt_into(bytes(4) + (1).to_bytes(8, "big"), b"new", record[:4],
                                      memoryview(record)[4:])  # fmt: skip
            record[5] ^= 1
            await anyio.to_thread.run_sync(raw.wire.sendall, bytes(record))
            assert await raw.closed_by_node()
            with pytest.raises(NotFound):
                await node.store.get("plan")
            await _until(lambda: node.staged() == [] and node.connections() == 0)

    anyio.run(main)


@pytest.mark.parametrize("side", ["client", "node"])
def test_either_side_can_keep_tls_records(tmp_path: Path, side: str) -> None:
    """object_transfer_seal = false: a client that does not ask, or a node that refuses;
    the bytes go in TLS's own records."""

    async def main() -> None:
        async with _serving(tmp_path, allow_seal=side == "client") as node:
            client = node.client(member=True, seal=side == "node")
            big = _value(CHUNK + 3)
            version = await client.put(node.address, "big", big)
            assert await client.get(node.address, "big") == (bytearray(big), version)
            [[kept]] = client._idle.values()
            assert kept.tls and not kept.sealed and isinstance(kept.sock, ssl.SSLSocket)
            await client.aclose()
            if side == "node":  # (asked, and refused)
                raw = await node.raw(member=True)
                refused = {"ok": False, "code": "invalid", "message": "cannot seal this"}
                assert await raw.ask({"op": "seal", "key": new_key().hex()}) == refused

    anyio.run(main)


def test_a_sealed_connection_carries_on_across_key_updates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sealed, "REKEY_EVERY", 2)

    async def main() -> None:
        async with _serving(tmp_path) as node:
            big = _value(3 * CHUNK + 1)  # (4 records a way, and the lines)
            client = node.client(member=True)
            for _ in range(3):
                version = await client.put(node.address, "big", big)
                assert await client.get(node.address, "big") == (bytearray(big), version)
            [[kept]] = client._idle.values()  # (one connection all along)
            assert isinstance(kept.sock, SealedSocket) and kept.sock.sent_bytes > 9 * CHUNK
            assert node.connections() == 1
            await client.aclose()

    anyio.run(main)


# -- namespaces ------------------------------------------------------------------------


def test_a_token_acts_in_its_namespace_and_an_admin_in_the_one_it_names(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with _serving(tmp_path) as node:
            alice = node.token("alice", Role.SUBMITTER, "team-a")
            as_alice = node.client(alice)
            a = await as_alice.put(node.address, "plan", b"a's")
            assert await node.store.get("@ns/team-a/plan") == (b"a's", a)
            as_owner = node.client(node.owner)
            default = await as_owner.put(node.address, "plan", b"default's")
            assert await node.store.get("plan") == (b"default's", default)
            in_b = node.client(node.owner, namespace="team-b")
            b = await in_b.put(node.address, "plan", b"b's")
            assert await node.store.get("@ns/team-b/plan") == (b"b's", b)
            assert await in_b.get(node.address, "plan") == (bytearray(b"b's"), b)
            assert await as_alice.get(node.address, "plan") == (bytearray(b"a's"), a)
            assert await as_owner.get(node.address, "plan") == (bytearray(b"default's"), default)
            # Its own namespace named is its own; another is refused; a bad name is invalid.
            named = node.client(alice, namespace="team-a")
            assert await named.get(node.address, "plan") == (bytearray(b"a's"), a)
            with pytest.raises(
                PermissionDenied, match="^alice may act only in namespace 'team-a', not 'team-b'$"
            ):
                await node.client(alice, namespace="team-b").get(node.address, "plan")
            with pytest.raises(InvalidArgument, match="invalid namespace 'Team_B'"):
                await node.client(node.owner, namespace="Team_B").get(node.address, "plan")
            # Reserved keys are no namespace's, and results/ are read-only.
            with pytest.raises(InvalidArgument, match="reserved"):
                await as_owner.get(node.address, "@ns/team-a/plan")
            with pytest.raises(PermissionDenied, match="written only by the node"):
                await as_alice.put(node.address, "results/t-1", b"forged")
            done = await node.store.put(ns.result_key("team-a", "t-1"), b"done")
            assert await as_alice.get(node.address, "results/t-1") == (bytearray(b"done"), done)
            raw = await node.raw()
            answer = await raw.ask({"op": "get", "key": "plan", "token": alice, "namespace": ""})
            assert answer == {"ok": True, "version": a, "size": 3}
            assert await raw.read(3) == b"a's"
            answer = await raw.ask(
                {"op": "get", "key": "plan", "token": node.owner, "namespace": ["team-a"]}
            )
            assert answer is not None and answer["code"] == "invalid"

    anyio.run(main)


def test_an_open_node_still_keeps_namespaces_apart(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path, with_tls=False, open_to_all=True) as node:
            anyone = node.client(namespace="team-a")
            assert await anyone.put(node.address, "plan", b"a's") == 1
            assert bytes((await node.store.get("@ns/team-a/plan"))[0]) == b"a's"
            with pytest.raises(PermissionDenied, match="written only by the node"):
                await anyone.put(node.address, "results/t", b"x")
            bare = node.client()
            assert await bare.get(node.address, "@ns/team-a/plan") == (bytearray(b"a's"), 1)
            with pytest.raises(InvalidArgument, match="invalid namespace"):
                await node.client(namespace="-x").get(node.address, "plan")

    anyio.run(main)


def test_a_put_is_admitted_by_its_namespace_with_the_users_key_and_size(tmp_path: Path) -> None:
    admitted: list[tuple[str, str, int]] = []

    async def admit(namespace: str, key: str, size: int) -> None:
        admitted.append((namespace, key, size))
        if key == "too-big":
            raise ResourceExhausted("no room")

    async def main() -> None:
        async with _serving(tmp_path, admit=admit) as node:
            alice = node.client(node.token("alice", Role.SUBMITTER, "team-a"))
            await alice.put(node.address, "plan", b"x" * 300)
            with pytest.raises(ResourceExhausted, match="^no room$"):
                await alice.put(node.address, "too-big", b"y" * 5000)
            with pytest.raises(NotFound):
                await node.store.get("@ns/team-a/too-big")
            await node.client(member=True).put(node.address, "raw-key", b"z")
            await node.client(member=True, namespace="team-c").put(node.address, "k", b"zz")
            assert admitted == [
                ("team-a", "plan", 300),
                ("team-a", "too-big", 5000),
                ("team-c", "k", 2),
            ]
            # (refused after reading its bytes: the client's connection is still good)
            assert await alice.get(node.address, "plan") == (bytearray(b"x" * 300), 1)
            await _until(lambda: node.staged() == [])

    anyio.run(main)


# -- what crosses: sizes, versions, info --------------------------------------------

SIZES = [0, 1, 4096, 4097, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3]


@pytest.mark.parametrize("with_tls", [True, False], ids=["tls", "plain"])
def test_values_of_every_size_cross_whole(tmp_path: Path, with_tls: bool) -> None:
    async def main() -> None:
        async with _serving(tmp_path, with_tls=with_tls) as node:
            client = node.client(node.owner)
            for i, size in enumerate(SIZES):
                key, value = f"k{i}", _value(size, seed=i)
                version = await client.put(node.address, key, value)
                assert await client.get(node.address, key) == (bytearray(value), version)
                got, info = await client.get_object(node.address, key)
                assert (got, info.version, info.size) == (value, version, size)
                assert await client.prefetch(node.address, key) == (version, size)
                dest = tmp_path / f"fetched-{i}"
                assert await client.fetch(node.address, key, version, dest) == size
                assert dest.read_bytes() == value
                assert dest.stat().st_mode & 0o777 == 0o600
                source = tmp_path / f"source-{i}"
                source.write_bytes(value[::-1])
                again = await client.put_file(node.address, key, source)
                assert bytes((await node.store.get(key))[0]) == value[::-1]
                info = await client.put_object(node.address, key, value)
                assert (info.version, info.size) == (again + 1, size)
                assert bytes((await node.store.get(key))[0]) == value
            assert node.staged() == []
            assert node.connections() == 1  # (every request on one pooled connection)

    anyio.run(main)


@pytest.mark.parametrize("member", [False, True], ids=["plain-tcp", "member-in-the-clear"])
def test_an_empty_file_is_put_with_the_kernels_sendfile(tmp_path: Path, member: bool) -> None:
    """Before, `put_file` of an empty file on plain TCP failed (socket.sendfile refuses a
    count of 0): to a node serving without TLS, `spear obj put KEY EMPTY --node` with an
    expected version failed with Unavailable, and without one fell back to gRPC."""
    empty = tmp_path / "empty"
    empty.write_bytes(b"")

    async def main() -> None:
        async with _serving(tmp_path, with_tls=member, allow_plain=True) as node:
            client = node.client(None if member else node.owner, member=member, encrypt=False)
            version = await client.put_file(node.address, "empty", empty)
            assert await client.get(node.address, "empty") == (bytearray(), version)
            [[pooled]] = client._idle.values()
            assert not pooled.tls

    anyio.run(main)


def test_a_get_of_a_version_is_served_only_from_that_copy(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path) as node:
            member = node.client(member=True)
            value = _value(50_000)
            await node.store.put("plan", b"first")
            await node.store.put("plan", value)
            dest = tmp_path / "copy"
            assert await member.fetch(node.address, "plan", 2, dest) == len(value)
            assert dest.read_bytes() == value
            for version in (1, 3):
                gone = tmp_path / f"copy-{version}"
                with pytest.raises(
                    Unavailable, match=f"^this node holds version 2 of 'plan', not {version}$"
                ):
                    await member.fetch(node.address, "plan", version, gone)
                assert not gone.exists()
            # (a small value lives in its record, not a file: the same rule)
            small = await node.store.put("small", b"tiny")
            with pytest.raises(
                Unavailable, match=f"^this node holds version {small} of 'small', not 9$"
            ):
                await member.fetch(node.address, "small", 9, tmp_path / "small")
            assert await member.fetch(node.address, "small", small, tmp_path / "small") == 4
            with pytest.raises(NotFound):
                await member.fetch(node.address, "nothing", 1, tmp_path / "none")
            assert not (tmp_path / "none").exists()
            # A fetch never writes over a file that is there.
            with pytest.raises(TransferBroken):
                await member.fetch(node.address, "plan", 2, dest)
            dest.write_bytes(b"mine")
            with pytest.raises(TransferBroken):
                await member.fetch(node.address, "plan", 2, dest)
            assert dest.read_bytes() == b"mine"
            # By hand: the header only when no body is asked; the body's bytes otherwise.
            raw = await node.raw(member=True)
            for request in (
                {"op": "get", "key": "plan", "version": 2, "body": False},
                {"op": "get", "key": "plan", "body": False},
                {"op": "get", "key": "plan", "version": 0, "body": False},
            ):
                assert await raw.ask(request) == {"ok": True, "version": 2, "size": len(value)}
            answer = await raw.ask({"op": "get", "key": "plan", "version": 2, "body": None})
            assert answer == {"ok": True, "version": 2, "size": len(value)}
            assert await raw.read(len(value)) == value
            answer = await raw.ask({"op": "get", "key": "plan", "version": None})
            assert answer == {"ok": True, "version": 2, "size": len(value)}
            assert await raw.read(len(value)) == value

    anyio.run(main)


@pytest.mark.parametrize("with_tls", [True, False], ids=["tls", "plain"])
@pytest.mark.parametrize("size", [3, CHUNK + 7], ids=["small", "past-a-chunk"])
def test_answers_say_exactly_what_is_known_of_the_object(
    tmp_path: Path, with_tls: bool, size: int
) -> None:
    """(A value past a chunk is sent from its file on plain TCP: the answer is the same.)"""
    first, second, third = _value(size, 1), _value(size + 1, 2), _value(size, 3)

    async def main() -> None:
        async with _serving(tmp_path, with_tls=with_tls) as node:
            client = node.client(node.owner)
            info = await client.put_object(node.address, "plan", first)
            assert info == ObjectInfo(key="plan", version=1, size=size)
            await node.store.add_ref("plan")
            await node.store.add_ref("plan")
            await node.store.pin("plan")
            data, info = await client.get_object(node.address, "plan")
            assert (data, info) == (
                first,
                ObjectInfo(key="plan", version=1, size=size, refs=2, pinned=True),
            )
            info = await client.put_object(node.address, "plan", second, expected_version=1)
            version = (await node.store.info("plan")).version
            assert info == ObjectInfo(
                key="plan", version=version, size=size + 1, refs=2, pinned=True
            )
            raw = await node.raw()
            for info_asked, extra in (
                (True, {"refs": 2, "pinned": True, "locations": []}),
                (False, {}),
                (1, {}),
            ):
                request = {"op": "put", "key": "plan", "size": size, "info": info_asked}
                answer = await raw.ask({**request, "token": node.owner}, third)
                version = answer["version"] if answer else None
                assert answer == {"ok": True, "version": version, "size": size, **extra}
                request = {"op": "get", "key": "plan", "info": info_asked}
                answer = await raw.ask({**request, "token": node.owner})
                assert answer == {"ok": True, "version": version, "size": size, **extra}
                assert await raw.read(size) == third

    anyio.run(main)


@pytest.mark.parametrize("with_tls", [True, False], ids=["tls", "plain"])
def test_a_clients_get_racing_a_put_gets_one_version_whole(tmp_path: Path, with_tls: bool) -> None:
    """A put that lands between a client's get looking the key up and sending it: the get
    is answered with one version whole (on plain TCP, the one that landed: its file goes
    by sendfile), never refused."""
    first, second = _value(2 * CHUNK + 3, 1), _value(2 * CHUNK + 5, 2)

    async def main() -> None:
        async with _serving(tmp_path, with_tls=with_tls) as node:
            versions = [await node.store.put("plan", first)]
            read = node.server._read

            async def racing(key: str, info: bool) -> Any:
                looked_up = await read(key, info)
                versions.append(await node.store.put("plan", second))  # (lands first)
                return looked_up

            node.server._read = racing  # type: ignore[method-assign]
            data, info = await node.client(node.owner).get_object(node.address, "plan")
            assert (data, info.version) in zip([first, second], versions, strict=True)
            assert info.size == len(data)

    anyio.run(main)


def test_an_expected_version_is_kept_to(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path) as node:
            client = node.client(node.owner)
            source = tmp_path / "source"
            source.write_bytes(b"from a file")
            assert await client.put(node.address, "k", b"one", expected_version=0) == 1
            with pytest.raises(Conflict):
                await client.put(node.address, "k", b"two", expected_version=0)
            with pytest.raises(Conflict):
                await client.put_file(node.address, "k", source, expected_version=2)
            with pytest.raises(Conflict):
                await client.put_object(node.address, "k", b"two", expected_version=5)
            assert await client.put_file(node.address, "k", source, expected_version=1) == 2
            info = await client.put_object(node.address, "k", b"three", expected_version=2)
            assert info.version == 3
            assert await client.put(node.address, "k", b"four", expected_version=3) == 4
            assert await client.get(node.address, "k") == (bytearray(b"four"), 4)
            raw = await node.raw()
            request = {"op": "put", "key": "k", "size": 1, "token": node.owner}
            answer = await raw.ask({**request, "expected_version": "4"}, b"5")
            assert answer == {"ok": True, "version": 5, "size": 1}
            answer = await raw.ask({**request, "expected_version": None}, b"6")
            assert answer == {"ok": True, "version": 6, "size": 1}
            # (a request answered after: the put's staging file is gone by then)
            assert await raw.ask({"op": "get", "key": "k", "token": node.owner, "body": False})
            assert node.staged() == []

    anyio.run(main)


def test_a_member_in_the_clear_reads_what_the_clusters_index_keeps(tmp_path: Path) -> None:
    """In a cluster, a small value may live in the SMS's index only (no copy on the node
    asked): the node sends it from there, in the clear too; a large one it fetches from
    its holder first. (Members with object_transfer_encrypt = false, in this process.)"""
    tls.create_ca(tmp_path / "ca")
    for name in ("sms", "a", "b"):
        tls.issue(tmp_path / "ca", name, tmp_path / name / "tls")
    big = _value(CHUNK + 10)

    def clear(name: str) -> Settings:
        return Settings(
            data_dir=tmp_path / name, listen="127.0.0.1:0", object_transfer_encrypt=False
        )

    async def main() -> None:
        async with (
            spear.serve_sms(tmp_path / "sms") as sms,
            join_cluster(clear("a"), sms=sms.address, name="a") as a,
            join_cluster(clear("b"), sms=sms.address, name="b") as b,
        ):
            at_a = (await a.node_info()).object_transfer_address
            at_b = (await b.node_info()).object_transfer_address
            member = ObjectTransferClient(
                Credentials(tls=TlsFiles(tmp_path / "b" / "tls")), encrypt=False
            )
            try:
                tiny = await member.put(at_b, "tiny", b"in the index")
                large = await member.put(at_b, "large", big)
                assert await member.get(at_a, "tiny") == (bytearray(b"in the index"), tiny)
                assert await member.prefetch(at_a, "large") == (large, len(big))
                assert await member.get(at_a, "large") == (bytearray(big), large)
                data, info = await member.get_object(at_a, "large")
                assert data == big and "b" in info.locations  # (its writer holds it)
                for pool in member._idle.values():
                    assert not any(conn.tls for conn in pool)  # (all in the clear)
            finally:
                await member.aclose()

    anyio.run(main)


# -- malformed requests and limits --------------------------------------------------------


def test_a_malformed_request_is_answered_invalid_and_ends_the_connection(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with _serving(tmp_path, with_tls=False, open_to_all=True) as node:
            for line in (
                b"not json\n",
                b"[1]\n",  # (JSON, not an object: before, no answer and a traceback logged)
                b'"get"\n',
                b'{"op": "get", "key": 5, "namespace": "team-a"}\n',  # (a key not text: so)
                b'{"op": "put", "key": ["k"], "size": 1}\nz',
                b'{"op": "get", "key": null}\n',
                b'{"op": "get"}\n',  # no key
                b'{"key": "k"}\n',  # no op
                b'{"op": "put", "key": "k"}\n',  # no size
                b'{"op": "put", "key": "k", "size": "many"}\n',
                b'{"op": "put", "key": "k", "size": -1}\n',
                b'{"op": "get", "key": "k", "version": "latest"}\n',
                b'{"op": "put", "key": "k", "size": 1, "expected_version": "x"}\nz',
            ):
                with SpearLog("ERROR") as logged:
                    raw = await node.raw()
                    await raw.send(line)
                    assert await raw.line() == BAD_REQUEST, line
                    assert await raw.closed_by_node()
                assert logged == [], line  # (a caller's mistake, not the node's)
            assert node.staged() == []
            # a line cut short by the client's end
            raw = await node.raw()
            await raw.send(b'{"op": "get", "key": "k"}')
            raw.sock.shutdown(socket.SHUT_WR)
            assert await raw.line() == BAD_REQUEST
            assert await raw.closed_by_node()
            # An unknown operation or a refused one is answered, and the connection goes on.
            raw = await node.raw()
            answer = await raw.ask({"op": "delete", "key": "k"})
            assert answer == {
                "ok": False,
                "code": "invalid",
                "message": "unknown object transfer operation 'delete'",
            }
            answer = await raw.ask({"op": "get", "key": "k"})
            assert answer is not None and answer["code"] == "not_found"
            assert await raw.ask({"op": "put", "key": "k", "size": 1}, b"1") == {
                "ok": True,
                "version": 1,
                "size": 1,
            }

    anyio.run(main)


def test_a_request_line_is_at_most_64_kib(tmp_path: Path) -> None:
    def line(total: int) -> bytes:
        """A get request of exactly `total` bytes with its newline."""
        head = b'{"op": "get", "key": "k", "pad": "'
        tail = b'"}\n'
        return head + b"p" * (total - len(head) - len(tail)) + tail

    async def main() -> None:
        async with _serving(tmp_path, with_tls=False, open_to_all=True) as node:
            await node.store.put("k", b"v")
            raw = await node.raw()
            await raw.send(line(HEADER_MAX + 1))
            assert await raw.line() == {"ok": True, "version": 1, "size": 1}
            assert await raw.read(1) == b"v"
            await raw.send(line(HEADER_MAX + 2))
            assert await raw.line() == BAD_REQUEST
            assert await raw.closed_by_node()

    anyio.run(main)


# -- a transfer cut short: nothing half-received is kept --------------------------------


@pytest.mark.parametrize("with_tls", [True, False], ids=["tls", "plain"])
def test_a_put_cut_short_keeps_nothing(tmp_path: Path, with_tls: bool) -> None:
    async def main() -> None:
        async with _serving(tmp_path, with_tls=with_tls) as node:
            raw = await node.raw(member=True)
            size = 3 * CHUNK
            await raw.send({"op": "put", "key": "cut", "size": size, "token": node.owner})
            await raw.send(b"y" * (CHUNK + 100))
            await _until(lambda: len(node.staged()) == 1)  # being received
            raw.close()
            await _until(lambda: node.staged() == [] and node.connections() == 0)
            with pytest.raises(NotFound):
                await node.store.get("cut")

    anyio.run(main)


@pytest.mark.parametrize("with_tls", [True, False], ids=["tls", "plain"])
def test_a_value_file_that_ends_early_breaks_the_transfer(tmp_path: Path, with_tls: bool) -> None:
    """A node whose value file is shorter than its record says (a disk that lost its end)
    sends what it has and closes: the reader gets TransferBroken and keeps nothing."""

    async def main() -> None:
        async with _serving(tmp_path, with_tls=with_tls) as node:
            value = _value(CHUNK + 4096)
            await node.store.put("plan", value)
            [path] = node.value_files()
            os.truncate(path, 4096 + 10)
            dest = tmp_path / "copy"
            with pytest.raises(TransferBroken, match="broke after"):
                await node.client(node.owner, member=True).fetch(node.address, "plan", 1, dest)
            assert not dest.exists()

    anyio.run(main)


@pytest.mark.parametrize("size", [CHUNK + 4096, 5 * CHUNK + 3])
def test_a_value_read_into_memory_whole_or_said_to_have_broken(tmp_path: Path, size: int) -> None:
    """A client's get reads the value into a new `bytes`, in place (transport/
    filled_bytes.py): all of it, or TransferBroken with how far it got (a node that died
    mid-value), never a value cut short."""
    value = _value(size)

    def script(number: int, conn: ScriptedNode.Conn) -> None:
        if conn.request() is not None:
            conn.answer({"ok": True, "version": 3, "size": size}, value[: CHUNK + 10])

    async def main() -> None:
        async with _serving(tmp_path) as node:
            await node.store.put("plan", value)
            client = node.client(node.owner)
            got, version = await client.get(node.address, "plan")
            assert type(got) is bytes and (got, version) == (value, 1)
            await client.aclose()
        with _scripted(script, connections=1) as peer:
            client = ObjectTransferClient(Credentials())
            with pytest.raises(TransferBroken, match=f"broke after {CHUNK + 10} of {size} bytes$"):
                await client.get(peer.address, "plan")
            await client.aclose()

    anyio.run(main)


@pytest.mark.parametrize("with_tls", [True, False], ids=["tls", "plain"])
def test_a_value_file_longer_than_its_record_sends_the_records_size(
    tmp_path: Path, with_tls: bool
) -> None:
    """What follows an answer is exactly its size, whatever the file holds past it: the
    connection stays in step for the next request."""

    async def main() -> None:
        async with _serving(tmp_path, with_tls=with_tls) as node:
            value = _value(CHUNK + 4096)
            version = await node.store.put("plan", value)
            [path] = node.value_files()
            with path.open("ab") as f:
                f.write(b"garbage" * 1000)
            raw = await node.raw(member=True)
            request = {"op": "get", "key": "plan", "version": version, "token": node.owner}
            for _ in range(2):  # (the second answer on the same connection: in step)
                answer = await raw.ask(request)
                assert answer == {"ok": True, "version": version, "size": len(value)}
                assert await raw.read(len(value)) == value

    anyio.run(main)


@pytest.mark.parametrize("with_tls", [True, False], ids=["tls", "plain"])
def test_a_file_that_ends_before_its_size_is_not_put(tmp_path: Path, with_tls: bool) -> None:
    # A sysfs file says it holds a page (st_size 4096) and reads as a few bytes: what a
    # file cut short between the client's look at its size and its sending would be.
    short = Path("/sys/devices/system/cpu/online")
    if not short.is_file() or short.stat().st_size <= len(short.read_bytes()):
        pytest.skip("no sysfs file here that says it holds more than it reads")

    admitted: list[str] = []

    async def admit(namespace: str, key: str, size: int) -> None:
        admitted.append(key)

    async def main() -> None:
        async with _serving(tmp_path, with_tls=with_tls, admit=admit) as node:
            client = node.client(node.owner)
            with pytest.raises(
                TransferBroken,
                match=f"^the object transfer with {node.address} failed: the value file ended"
                " early$",
            ):
                await client.put_file(node.address, "cpus", short)
            # the node took the request, then saw it cut short
            await _until(lambda: admitted == ["cpus"] and node.connections() == 0)
            assert node.staged() == []
            with pytest.raises(NotFound):
                await node.store.get("cpus")
            assert client._idle == {}

    anyio.run(main)


def test_a_node_dying_mid_value_leaves_the_reader_nothing(tmp_path: Path) -> None:
    value = _value(2 * CHUNK + 10)

    def script(number: int, conn: ScriptedNode.Conn) -> None:
        request = conn.request()
        assert request is not None
        conn.answer({"ok": True, "version": 3, "size": len(value)}, value[: CHUNK + 5])

    async def main() -> None:
        with _scripted(script) as peer:
            client = ObjectTransferClient(Credentials())
            try:
                dest = tmp_path / "copy"
                message = (
                    f"^the object transfer with {peer.address} failed: the transfer broke"
                    f" after {CHUNK + 5} of {len(value)} bytes$"
                )
                with pytest.raises(TransferBroken, match=message):
                    await client.fetch(peer.address, "plan", 3, dest)
                assert not dest.exists()
                with pytest.raises(TransferBroken, match=message):
                    await client.get(peer.address, "plan")
                with pytest.raises(TransferBroken, match=message):
                    await client.get_object(peer.address, "plan")
                assert client._idle == {}  # (a broken connection is never kept)
            finally:
                await client.aclose()
            assert [len(asked) for asked in peer.asked] == [1, 1, 1]

    anyio.run(main)


# -- the client: answers, connections kept, what is sent again ----------------------------


def test_the_client_sends_its_token_and_namespace_and_reads_the_answer(tmp_path: Path) -> None:
    def script(number: int, conn: ScriptedNode.Conn) -> None:
        while (request := conn.request()) is not None:
            if request["op"] == "put":
                conn.body(request["size"])
                conn.answer({"ok": True, "version": 7, "size": request["size"]})
            elif request["key"] == "refused":
                conn.answer({"ok": False, "code": "conflict", "message": "not that version"})
            elif request["key"] == "held":
                held = {"refs": "3", "pinned": 1, "locations": ["node-1", 2]}
                conn.answer({"ok": True, "version": "5", "size": 2, **held}, b"ho")
            else:
                conn.answer({"ok": True, "version": 4, "size": 2}, b"hi")

    async def main() -> None:
        with _scripted(script) as peer:
            credentials = Credentials(token="spear_t", namespace="team-a")
            client = ObjectTransferClient(credentials)
            bare = ObjectTransferClient(Credentials())
            try:
                info = await client.put_object(peer.address, "k", b"abc", expected_version=2)
                assert info == ObjectInfo(key="k", version=7, size=3)  # (nothing more said)
                data, info = await client.get_object(peer.address, "k")
                assert (data, info) == (b"hi", ObjectInfo(key="k", version=4, size=2))
                data, info = await client.get_object(peer.address, "held")
                assert (data, info) == (
                    b"ho",
                    ObjectInfo(
                        key="held",
                        version=5,
                        size=2,
                        refs=3,
                        pinned=True,
                        locations=("node-1", "2"),
                    ),
                )
                with pytest.raises(Conflict, match="^not that version$"):
                    await client.get(peer.address, "refused")
                assert await client.get(peer.address, "k") == (bytearray(b"hi"), 4)
                assert await bare.put(peer.address, "k", memoryview(b"ab")) == 7
                assert await bare.prefetch(peer.address, "k") == (4, 2)
            finally:
                await client.aclose()
                await bare.aclose()
            common = {"token": "spear_t", "namespace": "team-a"}
            assert peer.asked == [
                [
                    {"op": "put", "key": "k", "size": 3, "info": True, "expected_version": 2}
                    | common,
                    {"op": "get", "key": "k", "version": 0, "info": True} | common,
                    {"op": "get", "key": "held", "version": 0, "info": True} | common,
                    {"op": "get", "key": "refused", "version": 0} | common,
                    {"op": "get", "key": "k", "version": 0} | common,
                ],
                [
                    {"op": "put", "key": "k", "size": 2},
                    {"op": "get", "key": "k", "version": 0, "body": False},
                ],
            ]

    anyio.run(main)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"[1]\n", "a request or answer is one JSON object"),
        (b'{"ok": true, "version": 1, "size": 1}', "bad request line"),  # (cut short)
        (b"not json\n", "invalid literal"),
    ],
    ids=["not-an-object", "no-newline", "not-json"],
)
def test_an_answer_that_is_not_one_line_of_json_breaks_the_transfer(
    tmp_path: Path, answer: bytes, why: str
) -> None:
    def script(number: int, conn: ScriptedNode.Conn) -> None:
        if conn.request() is not None:
            conn.sock.sendall(answer)

    async def main() -> None:
        with _scripted(script) as peer:
            client = ObjectTransferClient(Credentials())
            try:
                with pytest.raises(TransferBroken, match=f"with {peer.address} failed: {why}"):
                    await client.get(peer.address, "k")
                assert client._idle == {}
            finally:
                await client.aclose()

    anyio.run(main)


def test_a_connection_closed_while_idle_is_not_used_again(tmp_path: Path) -> None:
    """The node closes the first connection after one answer: the next get goes on a
    new connection (seen closed before anything is sent on it)."""

    def script(number: int, conn: ScriptedNode.Conn) -> None:
        while conn.request() is not None:
            conn.answer({"ok": True, "version": number + 1, "size": 1}, b"x")
            if number == 0:
                return

    async def main() -> None:
        with _scripted(script) as peer:
            client = ObjectTransferClient(Credentials())
            try:
                assert await client.get(peer.address, "k") == (bytearray(b"x"), 1)
                await _until(lambda: not peer.threads[0].is_alive())
                assert await client.get(peer.address, "k") == (bytearray(b"x"), 2)
                assert await client.get(peer.address, "k") == (bytearray(b"x"), 2)
            finally:
                await client.aclose()
            assert [len(asked) for asked in peer.asked] == [1, 2]

    anyio.run(main)


def test_a_get_lost_on_a_kept_connection_is_sent_again_a_put_never(tmp_path: Path) -> None:
    """The node closes a kept connection just as a request comes (its idle timeout): a
    get is sent again on a new connection; a put may have been taken, and is not."""

    def script(number: int, conn: ScriptedNode.Conn) -> None:
        while (request := conn.request()) is not None:
            if request["op"] == "put":
                conn.body(request["size"])
            if number == 0 and len(conn.asked) == 2:
                return  # the second request on the first connection: closed unanswered
            if request["op"] == "put":
                conn.answer({"ok": True, "version": number + 1, "size": request["size"]})
            else:
                conn.answer({"ok": True, "version": number + 1, "size": 1}, b"xy"[number:][:1])

    async def main() -> None:
        with _scripted(script) as peer:
            client = ObjectTransferClient(Credentials())
            try:
                assert await client.get(peer.address, "k") == (bytearray(b"x"), 1)
                assert await client.get(peer.address, "k") == (bytearray(b"y"), 2)
            finally:
                await client.aclose()
            assert [len(asked) for asked in peer.asked] == [2, 1]

        with _scripted(script) as peer:
            client = ObjectTransferClient(Credentials())
            try:
                assert await client.put(peer.address, "k", b"a") == 1
                with pytest.raises(TransferBroken, match="failed: the connection was closed$"):
                    await client.put(peer.address, "k", b"b")
                assert await client.put(peer.address, "k", b"c") == 2  # (on a new one)
            finally:
                await client.aclose()
            assert [[r["op"] for r in asked] for asked in peer.asked] == [["put", "put"], ["put"]]

    def first_answers_nothing(number: int, conn: ScriptedNode.Conn) -> None:
        conn.request()

    async def unanswered() -> None:
        with _scripted(first_answers_nothing) as peer:
            client = ObjectTransferClient(Credentials())
            try:
                with pytest.raises(TransferBroken, match="failed: the connection was closed$"):
                    await client.get(peer.address, "k")
            finally:
                await client.aclose()
            assert [len(asked) for asked in peer.asked] == [1]

    anyio.run(main)
    anyio.run(unanswered)


def test_connections_are_kept_across_answers_and_closed_with_the_client(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path) as node:
            await node.store.put("plan", b"v")
            client = node.client(node.owner)
            for _ in range(3):
                assert await client.get(node.address, "plan") == (bytearray(b"v"), 1)
                with pytest.raises(NotFound):  # (an error answer keeps the connection)
                    await client.get(node.address, "nothing")
            assert node.connections() == 1
            # Two at once: two connections, both kept.
            async with anyio.create_task_group() as tg:
                for _ in range(2):
                    tg.start_soon(client.put, node.address, "big", _value(4 * CHUNK))
            assert node.connections() == 2
            await client.aclose()
            await _until(lambda: node.connections() == 0)
            # The node closing its side: a kept connection is seen closed, a new one made.
            other = node.client(node.owner)
            assert await other.get(node.address, "plan") == (bytearray(b"v"), 1)
            with node.server._lock:
                [conn] = node.server._open
            conn.sock.shutdown(socket.SHUT_RDWR)
            await _until(lambda: node.connections() == 0)
            assert await other.get(node.address, "plan") == (bytearray(b"v"), 1)
            assert node.connections() == 1

    anyio.run(main)


def test_at_most_16_transfers_of_a_process_are_under_way_at_once(tmp_path: Path) -> None:
    """Each transfer holds a thread and a connection: past 16 at once, the others wait."""
    go = threading.Event()

    def script(number: int, conn: ScriptedNode.Conn) -> None:
        if conn.request() is not None:
            go.wait(WAIT_S)
            conn.answer({"ok": True, "version": 1, "size": 1}, b"x")

    async def main() -> None:
        with _scripted(script, connections=20) as peer:
            client = ObjectTransferClient(Credentials())
            got: list[tuple[bytearray, int]] = []

            async def get() -> None:
                got.append(await client.get(peer.address, "k"))

            try:
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(get)
                    await _until(lambda: sum(len(a) for a in peer.asked) == 16)
                    stats = _limiter.statistics()
                    assert (stats.borrowed_tokens, stats.tasks_waiting) == (16, 4)
                    go.set()
                assert got == [(bytearray(b"x"), 1)] * 20
            finally:
                go.set()
                await client.aclose()

    anyio.run(main)


def test_an_address_nobody_serves_cannot_be_reached(tmp_path: Path) -> None:
    async def main() -> None:
        with socket.socket() as bound:  # (bound, never listening: connections are refused)
            bound.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{bound.getsockname()[1]}"
            client = ObjectTransferClient(Credentials())
            try:
                with pytest.raises(TransferBroken, match=f"^cannot reach .* at {address}: "):
                    await client.get(address, "k")
                with pytest.raises(TransferBroken, match="^cannot reach"):
                    await client.put(address, "k", b"v")
            finally:
                await client.aclose()

    anyio.run(main)


# -- the server: its port, its connections, its end -------------------------------------


def test_the_node_serves_at_most_64_connections_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path, with_tls=False, open_to_all=True) as node:
            await node.store.put("k", b"v")
            raws = [await node.raw() for _ in range(64)]
            for raw in raws:  # (each answered: each is being served)
                assert await raw.ask({"op": "get", "key": "k"}) == {
                    "ok": True,
                    "version": 1,
                    "size": 1,
                }
                assert await raw.read(1) == b"v"
            extra = await node.raw()
            await extra.send({"op": "get", "key": "k"})
            assert await extra.closed_by_node()
            raws[0].close()
            node.raws.remove(raws[0])
            await _until(lambda: node.connections() == 63)
            again = await node.raw()
            assert await again.ask({"op": "get", "key": "k"}) == {
                "ok": True,
                "version": 1,
                "size": 1,
            }

    anyio.run(main)


def test_closing_the_node_ends_its_connections_and_its_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path) as node:
            raw = await node.raw(member=True)
            assert await raw.ask({"op": "get", "key": "k", "body": False}) is not None
            await node.server.close()
            assert await raw.closed_by_node()
            with pytest.raises(TransferBroken, match="cannot reach"):
                await node.client(node.owner).get(node.address, "k")
            await node.server.close()  # (twice is safe)

    anyio.run(main)


def test_a_node_closed_before_it_started_or_twice_is_closed(tmp_path: Path) -> None:
    async def main() -> None:
        kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
        try:
            server = ObjectTransferServer(ObjectStore(kv, tmp_path / "objects"), Security.open())
            assert server.address is None
            await server.close()
            await server.close()
        finally:
            await kv.aclose()

    anyio.run(main)


def test_the_nodes_threads_never_keep_a_process_alive(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path, with_tls=False, open_to_all=True) as node:
            raw = await node.raw()
            assert await raw.ask({"op": "get", "key": "k"}) is not None
            threads = threading.enumerate()
            accepting = [t for t in threads if t.name == "spear-objects-accept"]
            serving = [t for t in threads if t.name.endswith("(_serve)")]
            assert accepting and serving
            assert all(t.daemon for t in accepting + serving)

    anyio.run(main)


def test_the_node_serves_on_ipv6_and_names_its_protocol(tmp_path: Path) -> None:
    async def main() -> None:
        async with _serving(tmp_path, listen="[::1]:0") as node:
            assert node.address.startswith("[::1]:")
            assert parse_listen(node.address)[1] == node.server._listener.getsockname()[1]  # type: ignore[union-attr]
            client = node.client(member=True)
            assert await client.put(node.address, "k", b"six") == 1
            assert await client.get(node.address, "k") == (bytearray(b"six"), 1)

    anyio.run(main)
    (tmp_path / "home").rename(tmp_path / "home-1")
    (tmp_path / "pki").rename(tmp_path / "pki-1")

    async def alpn() -> None:
        async with _serving(tmp_path) as node:
            assert node.pki is not None
            address = node.address

            def handshake() -> str | None:
                ctx = TlsFiles(node.pki.user).client_context(present_certificate=False)  # type: ignore[union-attr]
                ctx.set_alpn_protocols(["h2", "spear-objects"])
                with (
                    socket.create_connection(parse_listen(address), timeout=WAIT_S) as sock,
                    ctx.wrap_socket(sock, server_hostname="127.0.0.1") as wrapped,
                ):
                    return wrapped.selected_alpn_protocol()

            assert await anyio.to_thread.run_sync(handshake) == "spear-objects"

    anyio.run(alpn)


# -- time limits, files and logs (what the second mutation run found unchecked) -----------


def test_a_peer_that_stalls_mid_put_is_dropped_after_the_idle_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that sends part of a value and then nothing (without closing) is dropped by
    the node once no byte came for its idle timeout, and what it sent is not kept. (The
    timeout is shortened here: 30 s is the real one.)"""
    monkeypatch.setattr(object_transfer, "_TIMEOUT_S", 0.5)

    async def main() -> None:
        async with _serving(tmp_path, with_tls=False, open_to_all=True) as node:
            raw = await node.raw()
            request = orjson.dumps({"op": "put", "key": "stalled", "size": 3 * CHUNK})
            await raw.send(request + b"\n" + b"y" * (CHUNK + 100))
            # nothing more sent, and the connection left open: the node ends it
            assert await raw.closed_by_node()
            await _until(lambda: node.staged() == [] and node.connections() == 0)
            with pytest.raises(NotFound):
                await node.store.get("stalled")

    anyio.run(main)


def test_the_client_gives_up_on_a_node_that_stops_mid_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that takes a request and then sends nothing more (without closing) is given
    up by the client: waiting for its answer after the answer timeout, for the bytes after
    it or for room to send a value's bytes after the idle timeout; each a TransferBroken
    that says it timed out (the node ends nothing itself). (Both timeouts shortened here:
    600 s and 30 s are the real ones.)"""
    monkeypatch.setattr(object_transfer, "_TIMEOUT_S", 0.5)
    monkeypatch.setattr(object_transfer, "_ANSWER_TIMEOUT_S", 1.0)
    released = threading.Event()  # (the node's end of each connection: the test's end)

    def script(number: int, conn: ScriptedNode.Conn) -> None:
        if conn.request() is None:
            return
        if number == 1:  # an answer, and 3 of the 10 bytes it promised
            conn.answer({"ok": True, "version": 1, "size": 10}, b"abc")
        # number 0: no answer; number 2: the put's bytes never read
        released.wait(WAIT_S / 2)

    async def main() -> None:
        with _scripted(script, connections=3) as peer:
            client = ObjectTransferClient(Credentials())
            timed_out = f"^the object transfer with {peer.address} failed: timed out$"
            try:
                with pytest.raises(TransferBroken, match=timed_out):  # no answer
                    await client.get(peer.address, "k")
                with pytest.raises(TransferBroken, match=timed_out):  # the value cut off
                    await client.get(peer.address, "k")
                with pytest.raises(TransferBroken, match=timed_out):  # never read
                    await client.put(peer.address, "k", bytes(32 * CHUNK))
                assert client._idle == {}
            finally:
                released.set()
                await client.aclose()
            assert [[r["op"] for r in asked] for asked in peer.asked] == [["get"], ["get"], ["put"]]

    anyio.run(main)


def test_an_unexpected_failure_is_logged_and_ends_only_its_connection(tmp_path: Path) -> None:
    """A failure that is neither the caller's mistake nor a refusal (here the namespace's
    quota check breaking) is logged with its traceback, and its connection ended; the
    node serves the others."""

    async def admit(namespace: str, key: str, size: int) -> None:
        raise RuntimeError("the quota file is unreadable")

    async def main() -> None:
        async with _serving(tmp_path, with_tls=False, open_to_all=True, admit=admit) as node:
            await node.store.put("k", b"v")
            with SpearLog("ERROR") as logged:
                raw = await node.raw()
                await raw.send({"op": "put", "key": "k", "size": 3, "namespace": "team-a"})
                assert await raw.closed_by_node()
            [message] = logged
            first, *_, last = message.splitlines()
            assert first == "ERROR: object transfer failed"
            assert last == "RuntimeError: the quota file is unreadable"
            other = await node.raw()
            assert await other.ask({"op": "get", "key": "k"}) == {
                "ok": True,
                "version": 1,
                "size": 1,
            }
            assert await other.read(1) == b"v"
            assert node.staged() == []

    anyio.run(main)


def test_a_fetch_whose_file_was_removed_meanwhile_breaks_as_any_other(tmp_path: Path) -> None:
    """The file a fetch receives into, removed by someone else before the node died
    mid-value: still TransferBroken (nothing to remove), not a Python error."""
    removed = threading.Event()
    value = _value(2 * CHUNK)

    def script(number: int, conn: ScriptedNode.Conn) -> None:
        if conn.request() is not None:
            conn.answer({"ok": True, "version": 3, "size": len(value)}, value[:CHUNK])
            removed.wait(WAIT_S / 2)

    async def main() -> None:
        with _scripted(script, connections=1) as peer:
            client = ObjectTransferClient(Credentials())
            dest = tmp_path / "copy"

            async def fetch() -> None:
                message = f"failed: the transfer broke after {CHUNK} of {len(value)} bytes$"
                with pytest.raises(TransferBroken, match=message):
                    await client.fetch(peer.address, "plan", 3, dest)

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(fetch)
                    await _until(lambda: dest.exists() and dest.stat().st_size == CHUNK)
                    dest.unlink()
                    removed.set()
                assert not dest.exists()
                assert client._idle == {}
            finally:
                removed.set()
                await client.aclose()

    anyio.run(main)


def test_a_received_value_is_kept_in_the_file_it_was_received_into(tmp_path: Path) -> None:
    """The bytes of a put are written once: the file they were received into becomes the
    value's file (taken over, not copied)."""

    async def main() -> None:
        async with _serving(tmp_path, with_tls=False, open_to_all=True) as node:
            value = _value(2 * CHUNK)
            raw = await node.raw()
            await raw.send({"op": "put", "key": "plan", "size": len(value)})
            await raw.send(value[:CHUNK])
            await _until(lambda: len(node.staged()) == 1)
            [staged] = node.staged()
            received_into = staged.stat()
            await raw.send(value[CHUNK:])
            assert await raw.line() == {"ok": True, "version": 1, "size": len(value)}
            [kept] = node.value_files()
            assert kept.read_bytes() == value
            kept_as = kept.stat()
            assert (kept_as.st_dev, kept_as.st_ino) == (received_into.st_dev, received_into.st_ino)
            assert node.staged() == []

    anyio.run(main)


@pytest.mark.parametrize("with_tls", [True, False], ids=["tls", "plain"])
def test_a_values_file_goes_by_the_kernels_sendfile_on_plain_tcp_only(
    tmp_path: Path, with_tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On plain TCP a value's file is sent by the kernel (the node's answer to a get, the
    client's put of a file), never read through this process; through TLS never (the
    kernel would send it in the clear). (A kernel that refuses a `sendfile` outright has
    Python's `socket.sendfile` send the bytes itself: counted as sent by the kernel's
    path, which spear chose, and the refusal kept for the failure's message.) The node's
    thread counts what its `sendfile` sent once the call returns, which can be after the
    client has every byte: the test waits for the count (a CI run under load once read
    it first and found nothing sent)."""
    sent: list[int] = []
    refused: list[OSError] = []
    counting = threading.Condition()
    sendfile = os.sendfile

    def add_sent(n: int) -> None:
        with counting:
            sent.append(n)
            counting.notify_all()

    def counted(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        try:
            n = sendfile(out_fd, in_fd, offset, count)
        except BlockingIOError:
            raise
        except OSError as exc:
            refused.append(exc)
            add_sent(os.fstat(in_fd).st_size - (offset or 0))  # (all of it, by send)
            raise
        add_sent(n)
        return n

    def sent_in_all(expected: int) -> int:
        """What sendfile sent, once it is `expected` (or 10 s passed: then less)."""
        with counting:
            counting.wait_for(lambda: sum(sent) >= expected, timeout=10)
            return sum(sent)

    monkeypatch.setattr(os, "sendfile", counted)
    value = _value(2 * CHUNK + 5)
    source = tmp_path / "source"
    source.write_bytes(value[::-1])

    async def main() -> None:
        async with _serving(tmp_path, with_tls=with_tls) as node:
            await node.store.put("plan", value)
            client = node.client(node.owner)
            expected = 0 if with_tls else len(value)
            assert await client.get(node.address, "plan") == (bytearray(value), 1)
            assert await anyio.to_thread.run_sync(sent_in_all, expected) == expected, refused
            with counting:
                sent.clear()
            assert await client.put_file(node.address, "plan", source) == 2
            assert bytes((await node.store.get("plan"))[0]) == value[::-1]
            assert await anyio.to_thread.run_sync(sent_in_all, expected) == expected, refused

    anyio.run(main)


class _HeldCommits:
    """A node's authority in a cluster (a real ObjectIndex on LevelDB, as the SMS keeps
    it) whose commits can be held once the index took them (`gate`): a put committed, its
    copy not kept on its node yet."""

    def __init__(self, index: ObjectIndex, node: str) -> None:
        self.index, self.node = index, node
        self.gate: anyio.Event | None = None
        self.committed: list[int] = []

    async def commit(
        self, key: str, size: int, expected_version: int | None, value: bytes | None = None
    ) -> int:
        record = await self.index.commit(key, self.node, self.node, size, expected_version, value)
        self.committed.append(record.version)
        if self.gate is not None:
            await self.gate.wait()
        return record.version


def test_a_version_committed_here_a_moment_ago_is_served_once_its_copy_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node asked for the version it committed a moment ago (its copy not kept yet: in a
    cluster the index takes a put first) waits for that copy and serves it; asked for the
    version it holds, it serves it at once, not held up by a newer one landing."""
    first, second, third = _value(10_000, 1), _value(10_001, 2), _value(10_002, 3)

    async def main() -> None:
        async with _serving(tmp_path, with_tls=False, open_to_all=True) as node:
            sms = LevelDBKV.open(str(tmp_path / "sms.ldb"))
            try:
                authority = _HeldCommits(ObjectIndex(sms), "node-1")
                node.store.authority = authority  # type: ignore[assignment]  # (joined)
                await node.store.put("plan", first)
                waited: list[str] = []
                landed = node.store.landed

                async def waits_for(key: str) -> None:
                    waited.append(key)
                    assert authority.gate is not None
                    authority.gate.set()  # (the put goes on once the node waits for it)
                    await landed(key)

                monkeypatch.setattr(node.store, "landed", waits_for)
                client = node.client()

                async def put(value: bytes) -> None:
                    await node.store.put("plan", value)

                authority.gate = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(put, second)
                    await _until(lambda: len(authority.committed) == 2)
                    version = authority.committed[-1]
                    dest = tmp_path / "second"
                    assert await client.fetch(node.address, "plan", version, dest) == len(second)
                assert dest.read_bytes() == second
                assert waited == ["plan"]
                assert (await node.store.get_local("plan"))[1] == version
                # Its copy of `version` held: served at once, while a third is committed.
                authority.gate = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(put, third)
                    await _until(lambda: len(authority.committed) == 3)
                    again = tmp_path / "again"
                    assert await client.fetch(node.address, "plan", version, again) == len(second)
                    authority.gate.set()
                assert again.read_bytes() == second
                assert waited == ["plan"]
            finally:
                await sms.aclose()

    anyio.run(main)
