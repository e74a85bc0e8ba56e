"""The rules of the object socket (transport/object_socket.py), each stated exactly: who
may ask what (a token in each request, its role, its namespace; the SMS's tokens on a
member), what each answer holds (its line, what follows it, the files), the sizes a put
must keep to, and what the client does with its connections and memfds.

tests/transport/test_local_object_transfer.py checks the socket through a real daemon;
these serve a real object store (LevelDB files, value files) on a real Unix socket in the
test's dir, with real tokens, and speak the protocol itself where an exact answer is the
rule (mutation testing, issue 22). Every wait on the node is bounded: a node that never
answers fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import orjson
import pytest
from log_capture import SpearLog

from spear.core import namespaces as ns
from spear.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from spear.node.object_space import NamespaceBytes
from spear.node.quotas import Quota, QuotaFile
from spear.store.leveldb import LevelDBKV
from spear.store.objects import INLINE_MAX, ObjectStore
from spear.store.spare_files import SPARE_DIR
from spear.transport.auth import AUTH_DIR, Authorizer, Role, TokenStore
from spear.transport.channels import Credentials
from spear.transport.cluster_tokens import ClusterTokens, verify_at_sms
from spear.transport.object_socket import (
    MESSAGE_MAX,
    TAIL_MAX,
    ObjectSocketClient,
    serving_object_socket,
    socket_path,
)
from spear.transport.object_transfer import TransferBroken
from spear.transport.serving import Security

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine

    from spear.transport._gen.pb import sms_pb2

WAIT_S = 20  # an answer not there by then is a node that will never answer
HELLO = {"node": "node-1", "pid": 4242, "started_at": 1700000000.5}
FOUR_MIB = 4 * 1024 * 1024  # a client keeps its memfd for its next put up to this
LARGE = 10_000  # past the store's inline_max: the value has a file of its own


@dataclasses.dataclass
class Served:
    path: str
    home: Path
    store: ObjectStore
    tokens: TokenStore  # the node's own
    owner: str  # the node owner's token (admin, any namespace)
    clients: list[ObjectSocketClient] = dataclasses.field(default_factory=list)

    def token(self, name: str, role: Role, namespace: str | None = None) -> str:
        return self.tokens.issue(name, role, namespace)

    def client(self, token: str | None, namespace: str | None = None) -> ObjectSocketClient:
        """A client of the socket (closed with the node)."""
        client = ObjectSocketClient(self.path, Credentials(token=token, namespace=namespace))
        self.clients.append(client)
        return client

    def value_files(self) -> list[Path]:
        root = self.home / "objects"
        return [
            p
            for p in root.rglob("*")
            if p.is_file() and "staging" not in p.parts and SPARE_DIR not in p.parts
        ]

    def staged(self) -> list[Path]:
        return list((self.home / "objects" / "staging").glob("*"))


def _cluster(sms: TokenStore) -> ClusterTokens:
    """A member's view of the SMS's tokens: what the SMS answers VerifyToken with (its own
    token store), without the network in between."""

    async def ask(token: str) -> sms_pb2.VerifyTokenResponse:
        return verify_at_sms(sms, token)

    return ClusterTokens(ask)


@contextlib.asynccontextmanager
async def _serving(
    tmp_path: Path,
    *,
    inline_max: int = INLINE_MAX,
    sms: TokenStore | None = None,
    own_tokens: bool = True,
    open_to_all: bool = False,
    hello: dict[str, Any] | None = None,
    admit: Callable[[str, str, int], Coroutine[Any, Any, None]] | None = None,
) -> AsyncIterator[Served]:
    """A node's object store served on its object socket, with the node's tokens (and the
    SMS's, given `sms`; only those, without `own_tokens`) and its namespaces' quotas."""
    home = tmp_path / "home"
    home.mkdir()
    tokens = TokenStore(home)
    owner = tokens.owner_token()
    if open_to_all:
        security = Security.open()
    else:
        cluster = _cluster(sms) if sms is not None else None
        security = Security(Authorizer(tokens if own_tokens else None, cluster=cluster))
    kv = LevelDBKV.open(str(home / "meta.ldb"))
    try:
        store = ObjectStore(kv, home / "objects", inline_max=inline_max)
        if admit is None:
            admit = NamespaceBytes(store, QuotaFile(home / AUTH_DIR)).admit
        async with serving_object_socket(
            store, security, socket_path(home), HELLO if hello is None else hello, admit
        ) as path:
            assert path == str(home / "objects.sock")
            served = Served(path, home, store, tokens, owner)
            try:
                with anyio.fail_after(WAIT_S):
                    yield served
            finally:
                for client in served.clients:
                    await client.aclose()
    finally:
        await kv.aclose()


class _Raw:
    """One connection to the socket, speaking the protocol itself: each answer as the node
    sent it (its line, what follows the line, the files handed over)."""

    def __init__(self, path: str, sndbuf: int = 0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if sndbuf:  # (room for one message of that size, as far as the host allows)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.connect(path)
        self.sock.setblocking(False)

    async def ask(
        self, request: dict[str, Any] | bytes, fds: list[int] | None = None
    ) -> tuple[dict[str, Any], bytes, list[int]]:
        message = request if isinstance(request, bytes) else orjson.dumps(request)
        socket.send_fds(self.sock, [message], fds or [])
        with anyio.fail_after(WAIT_S):
            while True:
                await anyio.wait_readable(self.sock)
                with contextlib.suppress(BlockingIOError):
                    data, received, _, _ = socket.recv_fds(self.sock, MESSAGE_MAX, 4)
                    break
        assert data, "the node closed the connection"
        line, _, tail = data.partition(b"\n")
        return orjson.loads(line), tail, received

    def close(self) -> None:
        self.sock.close()


async def _ask(
    path: str, request: dict[str, Any] | bytes, fds: list[int] | None = None
) -> tuple[dict[str, Any], bytes, list[int]]:
    raw = _Raw(path)
    try:
        return await raw.ask(request, fds)
    finally:
        raw.close()


def _refused(code: str, message: str) -> tuple[dict[str, Any], bytes, list[int]]:
    """A refusal as the node sends it: its line alone, no file."""
    return {"ok": False, "code": code, "message": message}, b"", []


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("test-put")
    view, offset = memoryview(data), 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)
    return fd


def _read(fd: int) -> bytes:
    try:
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def _open_files(kind: str) -> int:
    """How many of this process's open files are of `kind` ("socket:", "/memfd:")."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{name}").startswith(kind)
    return count


async def _put_raw(
    path: str, token: str | None, key: str, data: bytes, **fields: Any
) -> tuple[dict[str, Any], bytes, list[int]]:
    request: dict[str, Any] = {"op": "put", "key": key, "size": len(data), **fields}
    if token is not None:
        request["token"] = token
    fd = _memfd(data)
    try:
        return await _ask(path, request, [fd])
    finally:
        os.close(fd)


# -- who may ---------------------------------------------------------------------------


async def test_a_request_without_a_token_the_node_knows_is_refused(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        await served.client(served.owner).put("plan", b"secret")
        gone = served.token("gone", Role.ADMIN)
        served.tokens.revoke("gone")
        for op in ("hello", "get", "put"):
            request: dict[str, Any] = {"op": op, "key": "plan", "size": 3}
            fd = _memfd(b"new")
            try:
                assert await _ask(served.path, request, [fd]) == _refused(
                    "unauthenticated", "the object socket requires a token"
                )
                for token in (123, ["a"], None):  # (not text: no token)
                    assert await _ask(served.path, {**request, "token": token}, [fd]) == (
                        _refused("unauthenticated", "the object socket requires a token")
                    )
                for token in ("not-a-token", gone, ""):
                    assert await _ask(served.path, {**request, "token": token}, [fd]) == (
                        _refused(
                            "unauthenticated", "the token was not accepted (unknown or revoked)"
                        )
                    )
            finally:
                os.close(fd)
        assert (await served.store.get("plan"))[0] == b"secret"  # (no put went through)
        with pytest.raises(Unauthenticated, match="^the object socket requires a token$"):
            await served.client(None).get("plan")


async def test_a_reader_may_ask_who_the_node_is_and_get_but_not_put(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        vic = served.token("vic", Role.READER, "team-a")
        await served.client(served.owner, "team-a").put("plan", b"team-a's")
        assert await _ask(served.path, {"op": "hello", "token": vic}) == (
            {"ok": True, **HELLO},
            b"",
            [],
        )
        assert (await served.client(vic).get("plan"))[0] == b"team-a's"
        assert await _put_raw(served.path, vic, "plan", b"mine now") == _refused(
            "denied", "vic (reader) may not put objects: it needs submitter"
        )
        assert (await served.store.get("@ns/team-a/plan"))[0] == b"team-a's"


async def test_a_token_acts_only_in_its_own_namespace(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        alice_token = served.token("alice", Role.SUBMITTER, "team-a")
        alice = served.client(alice_token)
        bob = served.client(served.token("bob", Role.SUBMITTER, "team-b"))
        owner = served.client(served.owner)
        put = await alice.put("plan", b"team-a's")
        assert (await served.store.get("@ns/team-a/plan")) == (b"team-a's", put["version"])
        with pytest.raises(NotFound):  # (team-b's "plan" is another key)
            await bob.get("plan")
        with pytest.raises(NotFound):  # (and so is the default namespace's)
            await owner.get("plan")
        await bob.put("plan", b"team-b's")
        assert (await alice.get("plan"))[0] == b"team-a's"
        # A namespace the token is not bound to, named in the request: refused.
        elsewhere = served.client(alice_token, "team-b")
        for call in (elsewhere.get("plan"), elsewhere.put("plan", b"x"), elsewhere.hello()):
            with pytest.raises(
                PermissionDenied, match=r"^alice may act only in namespace 'team-a', not 'team-b'$"
            ):
                await call
        # A stored key of another namespace, named as a key: refused, for anyone.
        for client in (alice, owner):
            for call in (client.get("@ns/team-b/plan"), client.put("@ns/team-b/plan", b"x")):
                with pytest.raises(InvalidArgument, match="^object keys starting with '@ns/'"):
                    await call
        assert (await bob.get("plan"))[0] == b"team-b's"
        # The owner (an admin) acts in the namespace it names.
        in_a = served.client(served.owner, "team-a")
        assert (await in_a.get("plan"))[0] == b"team-a's"
        await in_a.put("notes", b"by the owner")
        assert (await alice.get("notes"))[0] == b"by the owner"
        with pytest.raises(InvalidArgument, match="^invalid namespace 'Team A'"):
            await served.client(served.owner, "Team A").get("plan")
        for c in (alice, bob, owner, elsewhere, in_a):
            await c.aclose()


async def test_results_are_read_but_never_written_over_the_socket(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        alice = served.client(served.token("alice", Role.SUBMITTER, "team-a"))
        await served.store.put(ns.result_key("team-a", "t1"), b"the result")
        assert (await alice.get("results/t1"))[0] == b"the result"
        for client in (alice, served.client(served.owner)):
            with pytest.raises(
                PermissionDenied,
                match=r"^'results/t1' is written only by the node \(keys under results/ hold",
            ):
                await client.put("results/t1", b"forged")
            await client.aclose()
        assert (await served.store.get(ns.result_key("team-a", "t1")))[0] == b"the result"
        with pytest.raises(NotFound):
            await served.store.get("results/t1")


async def test_a_put_keeps_its_namespaces_object_bytes_quota(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        token = served.token("alice", Role.SUBMITTER, "team-a")
        alice = served.client(token)
        QuotaFile(served.home / AUTH_DIR).set(Quota("team-a", object_bytes=1000))
        await alice.put("a", b"x" * 600)
        with pytest.raises(
            ResourceExhausted,
            match=r"^namespace 'team-a' is at its quota of 1000 object bytes \(600 used; this"
            r" object is 401\)$",
        ):
            await alice.put("b", b"y" * 401)
        await alice.put("b", b"y" * 400)  # (exactly the quota)
        await alice.put("a", b"z" * 600)  # (its own value replaced: the same bytes)
        # What the quota counts is what is kept: the size the put names, whatever the
        # file handed over holds past it.
        fd = _memfd(b"w" * 5000)
        try:
            answer, tail, _ = await _ask(
                served.path, {"op": "put", "key": "a", "size": 600, "token": token}, [fd]
            )
        finally:
            os.close(fd)
        assert (answer["ok"], answer["size"], tail) == (True, 600, b"")
        assert (await alice.get("a"))[0] == b"w" * 600
        # The default namespace has a quota of its own.
        QuotaFile(served.home / AUTH_DIR).set(Quota("default", object_bytes=10))
        with pytest.raises(ResourceExhausted, match="^namespace 'default' is at its quota"):
            await served.client(served.owner).put("big", b"x" * 11)
        await alice.aclose()


async def test_a_members_socket_takes_its_own_tokens_and_the_smss(tmp_path: Path) -> None:
    sms = TokenStore(tmp_path / "sms")
    async with _serving(tmp_path, sms=sms) as served:
        own = served.client(served.owner)  # (the SMS does not know it)
        await own.put("plan", b"the owner's")
        assert (await own.hello())["node"] == "node-1"
        carol = served.client(sms.issue("carol", Role.SUBMITTER, "team-c"))  # (not here)
        await carol.put("plan", b"carol's")
        assert (await carol.get("plan"))[0] == b"carol's"
        assert (await served.store.get("@ns/team-c/plan"))[0] == b"carol's"
        reader = served.client(sms.issue("ray", Role.READER, "team-c"))
        assert (await reader.get("plan"))[0] == b"carol's"
        with pytest.raises(
            PermissionDenied, match=r"^ray \(reader\) may not put objects: it needs submitter$"
        ):
            await reader.put("plan", b"x")
        with pytest.raises(Unauthenticated, match="not accepted"):
            await served.client("known-to-no-one").get("plan")
        for c in (own, carol, reader):
            await c.aclose()


async def test_a_socket_that_knows_only_the_smss_tokens(tmp_path: Path) -> None:
    sms = TokenStore(tmp_path / "sms")
    async with _serving(tmp_path, sms=sms, own_tokens=False) as served:
        carol = served.client(sms.issue("carol", Role.SUBMITTER))
        await carol.put("plan", b"carol's")
        assert (await carol.get("plan"))[0] == b"carol's"
        with pytest.raises(Unauthenticated, match="not accepted"):
            await served.client(served.owner).get("plan")  # (the node's tokens: not asked)
        await carol.aclose()


async def test_an_open_socket_takes_the_namespace_a_request_names(tmp_path: Path) -> None:
    # Security.open() (benchmarks, tests of the bare transport): no token asked; the
    # namespace a request names is still where it acts, and the key is still checked.
    async with _serving(tmp_path, open_to_all=True) as served:
        plain, in_a = served.client(None), served.client(None, "team-a")
        put = await plain.put("plan", b"the node's")
        assert (await plain.get("plan")) == (b"the node's", {"ok": True, **put})
        await in_a.put("plan", b"team-a's")
        assert (await served.store.get("@ns/team-a/plan"))[0] == b"team-a's"
        assert (await in_a.get("plan"))[0] == b"team-a's"
        assert (await plain.get("plan"))[0] == b"the node's"
        with pytest.raises(InvalidArgument, match="^invalid namespace"):
            await served.client(None, "-bad-").get("plan")
        await plain.aclose()
        await in_a.aclose()


# -- what is answered ------------------------------------------------------------------


async def test_every_malformed_request_is_answered_and_the_connection_goes_on(
    tmp_path: Path,
) -> None:
    async with _serving(tmp_path) as served:
        owner = served.owner
        raw = _Raw(served.path)
        try:
            bad = _refused("invalid", "bad request")
            assert await raw.ask(b"not json") == bad
            assert await raw.ask(b"[1, 2]") == bad  # (not an object)
            assert await raw.ask({"op": "get", "token": owner}) == bad  # (no key)
            assert await raw.ask({"op": "get", "key": 7, "token": owner}) == bad
            assert await raw.ask({"op": "put", "key": "k", "token": owner}) == bad  # no size
            assert await raw.ask({"op": "put", "key": "k", "size": "ten", "token": owner}) == bad
            assert await raw.ask({"op": "delete", "key": "k", "token": owner}) == _refused(
                "invalid", "unknown object socket operation 'delete'"
            )
            assert await raw.ask({"key": "k", "token": owner}) == _refused(
                "invalid", "unknown object socket operation None"
            )
            assert await raw.ask({"op": "hello", "token": owner}) == (
                {"ok": True, **HELLO},
                b"",
                [],
            )
        finally:
            raw.close()


async def test_a_request_the_kernel_cut_short_is_refused(tmp_path: Path) -> None:
    # (A bug found by mutation testing: a put handing over two files was taken with the
    # first, the kernel having closed the second unseen; a request longer than the
    # largest message was read cut short, and taken when what was left still parsed.)
    async with _serving(tmp_path) as served:
        cut = _refused(
            "invalid",
            f"a request is one message of at most {MESSAGE_MAX} bytes, with at most one file",
        )
        files = [_memfd(b"one"), _memfd(b"two")]
        memfds = _open_files("/memfd:")
        try:
            put = {"op": "put", "key": "k", "size": 3, "token": served.owner}
            assert await _ask(served.path, put, files) == cut
            assert await _ask(served.path, {"op": "hello", "token": served.owner}, files) == cut
            padded = orjson.dumps({"op": "put", "key": "k", "size": 3, "token": served.owner})
            padded += b" " * MESSAGE_MAX  # (still one JSON object, whole or cut)
            raw = _Raw(served.path, sndbuf=2 * len(padded))
            try:
                room = raw.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                if room > len(padded) + 32:  # (else no client here can send one that long)
                    assert await raw.ask(padded, files[:1]) == cut
            finally:
                raw.close()
            assert _open_files("/memfd:") == memfds  # (the node kept none of them)
            with pytest.raises(NotFound):
                await served.store.get("k")
            # One file, in one message: taken.
            assert (await _ask(served.path, put, files[1:]))[0]["ok"]
            assert (await served.store.get("k"))[0] == b"two"
        finally:
            for fd in files:
                os.close(fd)


async def test_a_get_answers_the_version_and_size_and_with_info_the_rest(
    tmp_path: Path,
) -> None:
    async with _serving(tmp_path) as served:
        owner = served.client(served.owner)
        small = await owner.put("small", b"line one\nline two\n")  # (newlines after the line)
        large = await owner.put("large", b"L" * LARGE)
        await served.store.add_ref("large")
        got = {"op": "get", "key": "small", "token": served.owner}
        assert await _ask(served.path, got) == (
            {"ok": True, "version": small["version"], "size": 18},
            b"line one\nline two\n",
            [],
        )
        answer, tail, fds = await _ask(served.path, {**got, "key": "large", "info": True})
        value = _read(fds[0])
        assert (answer, tail, len(fds), value) == (
            {
                "ok": True,
                "version": large["version"],
                "size": LARGE,
                "refs": 1,
                "pinned": False,
                "locations": [],
            },
            b"",
            1,
            b"L" * LARGE,
        )
        for info in (1, "true", False):  # (only `true` asks for it)
            answer, _, fds = await _ask(served.path, {**got, "info": info})
            assert "refs" not in answer
        assert await owner.get("small") == (b"line one\nline two\n", {"ok": True, **small})
        value, answer = await owner.get("large")
        assert (value, "refs" in answer) == (b"L" * LARGE, False)
        value, answer = await owner.get("large", info=True)
        assert (value, answer["refs"], answer["pinned"]) == (b"L" * LARGE, 1, False)
        with pytest.raises(NotFound):
            await owner.get("nothing")
        await owner.aclose()


async def test_the_file_a_get_hands_over_cannot_change_the_value(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        await served.client(served.owner).put("large", b"L" * LARGE)
        _, _, fds = await _ask(served.path, {"op": "get", "key": "large", "token": served.owner})
        try:
            with pytest.raises(OSError):
                os.pwrite(fds[0], b"forged", 0)
        finally:
            os.close(fds[0])
        assert (await served.store.get("large"))[0] == b"L" * LARGE


async def test_a_value_kept_in_its_record_comes_inside_the_answer_up_to_64_kib(
    tmp_path: Path,
) -> None:
    # A store that keeps values of up to 128 KiB in their records (no file of their own):
    # up to TAIL_MAX after the answer's line, past it in a memfd of their own.
    async with _serving(tmp_path, inline_max=2 * TAIL_MAX) as served:
        owner = served.client(served.owner)
        inside, outside = b"i" * TAIL_MAX, b"o" * (TAIL_MAX + 1)
        await owner.put("inside", inside)
        await owner.put("outside", outside)
        assert served.value_files() == []  # (both in their records)
        got = {"op": "get", "token": served.owner}
        answer, tail, fds = await _ask(served.path, {**got, "key": "inside"})
        assert (answer["size"], tail, fds) == (TAIL_MAX, inside, [])
        answer, tail, fds = await _ask(served.path, {**got, "key": "outside"})
        assert (answer["size"], tail, len(fds)) == (TAIL_MAX + 1, b"", 1)
        assert _read(fds[0]) == outside
        assert (await owner.get("inside"))[0] == inside
        assert (await owner.get("outside"))[0] == outside
        await owner.aclose()


async def test_a_put_answers_the_version_and_size_and_with_info_the_rest(
    tmp_path: Path,
) -> None:
    async with _serving(tmp_path) as served:
        answer, tail, fds = await _put_raw(served.path, served.owner, "k", b"v1")
        assert (answer, tail, fds) == (
            {"ok": True, "version": answer["version"], "size": 2},
            b"",
            [],
        )
        answer, tail, fds = await _put_raw(served.path, served.owner, "k", b"v22", info=True)
        assert (answer, tail, fds) == (
            {
                "ok": True,
                "version": answer["version"],
                "size": 3,
                "refs": 0,
                "pinned": False,
                "locations": [],
            },
            b"",
            [],
        )
        answer, _, _ = await _put_raw(served.path, served.owner, "k", b"v3", info=1)
        assert "refs" not in answer  # (only `true` asks for it)
        owner = served.client(served.owner)
        assert "refs" not in await owner.put("k", b"v4")
        put = await owner.put("k", b"v5", info=True)
        assert (put["refs"], put["pinned"], put["locations"]) == (0, False, [])
        with pytest.raises(Conflict):
            await owner.put("k", b"v6", expected_version=put["version"] - 1)
        assert (await owner.put("k", b"v6", expected_version=put["version"]))["version"] > put[
            "version"
        ]
        await owner.aclose()


async def test_a_file_put_whole_keeps_the_same_rules(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        owner = served.client(served.owner)
        source = tmp_path / "value.bin"
        source.write_bytes(b"F" * LARGE)
        first = await owner.put_file("file", source)
        assert first == {"ok": True, "version": first["version"], "size": LARGE}
        assert (await served.store.get("file")) == (b"F" * LARGE, first["version"])
        with pytest.raises(Conflict):
            await owner.put_file("file", source, expected_version=first["version"] + 1)
        second = await owner.put_file("file", source, expected_version=first["version"])
        assert second["version"] > first["version"]
        third = await owner.put_file("file", source, info=True)
        assert (third["refs"], third["pinned"], third["locations"]) == (0, False, [])
        assert source.read_bytes() == b"F" * LARGE  # (the caller's file: left as it was)
        await owner.aclose()


async def test_a_put_hands_over_one_regular_file_of_at_least_its_size(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        owner = served.owner
        put = {"op": "put", "key": "k", "token": owner}
        assert await _ask(served.path, {**put, "size": 3}) == _refused(
            "invalid", "a put over the object socket hands over one file"
        )
        fd = _memfd(b"x" * 10)
        reading, writing = os.pipe()
        try:
            for size in (11, -1):
                assert await _ask(served.path, {**put, "size": size}, [fd]) == _refused(
                    "invalid", f"a put of {size} bytes hands over a file of that size"
                )
            os.write(writing, b"piped")
            for size in (0, 5):  # (a pipe says it holds 0 bytes)
                assert await _ask(served.path, {**put, "size": size}, [reading]) == _refused(
                    "invalid", f"a put of {size} bytes hands over a file of that size"
                )
            write_only = os.open(tmp_path / "w.bin", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(write_only, b"written")
                assert await _ask(served.path, {**put, "size": 7}, [write_only]) == _refused(
                    "invalid", "a put hands over a file open for reading, not write-only"
                )  # (before: sendfile failed, answered "internal" and logged as a bug)
            finally:
                os.close(write_only)
            with pytest.raises(NotFound):
                await served.store.get("k")
            answer, _, _ = await _ask(served.path, {**put, "size": 0}, [fd])
            assert (answer["size"], (await served.store.get("k"))[0]) == (0, b"")
            answer, _, _ = await _ask(served.path, {**put, "size": 10}, [fd])
            assert (answer["size"], (await served.store.get("k"))[0]) == (10, b"x" * 10)
        finally:
            for f in (fd, reading, writing):
                os.close(f)
        assert served.staged() == []  # (nothing left half-received)


async def test_a_file_that_ends_before_its_stated_size_is_refused(tmp_path: Path) -> None:
    # A sysfs file says it holds a page (st_size 4096) and reads as a few bytes: what a
    # file cut short between the node's look at its size and its copy would be.
    short = Path("/sys/devices/system/cpu/online")
    if not short.is_file() or short.stat().st_size <= len(short.read_bytes()):
        pytest.skip("no sysfs file here that says it holds more than it reads")
    held = len(short.read_bytes())
    async with _serving(tmp_path) as served:
        owner = served.client(served.owner)
        with pytest.raises(
            InvalidArgument, match=f"^the file handed over ended after {held} bytes$"
        ):
            await owner.put_file("cpus", short)
        with pytest.raises(NotFound):
            await owner.get("cpus")
        assert served.staged() == []
        await owner.aclose()


async def test_a_value_put_over_the_socket_is_kept_for_the_nodes_user_only(
    tmp_path: Path,
) -> None:
    async with _serving(tmp_path) as served:
        owner = served.client(served.owner)
        await owner.put("large", b"L" * LARGE)
        source = tmp_path / "shared.bin"
        source.write_bytes(b"S" * LARGE)
        source.chmod(0o644)
        await owner.put_file("file", source)
        files = served.value_files()
        assert len(files) == 2
        assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [0o600, 0o600]
        await owner.aclose()


async def test_a_request_that_fails_by_a_bug_is_answered_and_logged(tmp_path: Path) -> None:
    async def broken(namespace: str, key: str, size: int) -> None:
        raise RuntimeError(f"quota file unreadable ({namespace}, {key}, {size})")

    async with _serving(tmp_path, admit=broken) as served:
        raw = _Raw(served.path)
        fd = _memfd(b"abc")
        try:
            with SpearLog("ERROR") as logged:
                put = {"op": "put", "key": "k", "size": 3, "token": served.owner}
                assert await raw.ask(put, [fd]) == _refused(
                    "internal", "quota file unreadable (default, k, 3)"
                )
            (line, *traceback) = logged[0].splitlines()
            assert (len(logged), line) == (1, "ERROR: object socket request failed")
            assert traceback[-1] == "RuntimeError: quota file unreadable (default, k, 3)"
            assert (await raw.ask({"op": "hello", "token": served.owner}))[0]["ok"]
        finally:
            os.close(fd)
            raw.close()


# -- the client ------------------------------------------------------------------------


async def test_a_client_keeps_one_memfd_for_its_next_put_of_up_to_4_mib(
    tmp_path: Path,
) -> None:
    async with _serving(tmp_path) as served:
        client = served.client(served.owner)
        before = _open_files("/memfd:")
        try:
            for value in (b"a" * FOUR_MIB, b"b" * 10, b"c" * 100_000):
                await client.put("k", value)
                assert _open_files("/memfd:") == before + 1  # (one, written over each time)
                assert (await client.get("k"))[0] == value
            await client.put("k", b"d" * (FOUR_MIB + 1))  # (a memfd of its own, closed)
            assert _open_files("/memfd:") == before + 1
            assert (await client.get("k"))[0] == b"d" * (FOUR_MIB + 1)
        finally:
            await client.aclose()
        assert _open_files("/memfd:") == before


async def test_a_client_asks_in_turn_on_one_connection(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        client = served.client(served.owner)
        try:
            await client.hello()
            sockets = _open_files("socket:")
            for i in range(5):
                await client.put("k", b"v%d" % i)
                assert (await client.get("k"))[0] == b"v%d" % i
            assert _open_files("socket:") == sockets
        finally:
            await client.aclose()
        assert _open_files("socket:") < sockets


async def test_a_client_sends_the_namespace_of_its_credentials(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        in_a = served.client(served.owner, "team-a")
        await in_a.put("plan", b"team-a's")
        await in_a.put_file("file", _write(tmp_path / "f", b"F" * LARGE))
        assert (await served.store.get("@ns/team-a/plan"))[0] == b"team-a's"
        assert (await served.store.get("@ns/team-a/file"))[0] == b"F" * LARGE
        assert (await in_a.get("plan"))[0] == b"team-a's"
        with pytest.raises(NotFound):
            await served.client(served.owner).get("plan")
        await in_a.aclose()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def test_a_client_says_which_socket_failed_and_how(tmp_path: Path) -> None:
    path = str(socket_path(tmp_path / "home"))
    nowhere = ObjectSocketClient(path, Credentials(token="t"))
    with pytest.raises(
        TransferBroken, match=rf"^cannot reach the object socket {re.escape(path)}: .*"
    ):
        await nowhere.hello()
    await nowhere.aclose()
    client = ObjectSocketClient(path, Credentials(token="t"))
    try:
        async with _serving(tmp_path) as served:
            client = ObjectSocketClient(served.path, Credentials(token=served.owner))
            await client.hello()  # (its connection kept)
        # The node stopped: the kept connection's other end is closed.
        with pytest.raises(
            TransferBroken, match=rf"^the object socket {re.escape(path)} failed: .*"
        ):
            await client.hello()
        with pytest.raises(TransferBroken, match="^cannot reach"):  # (not kept: a new one)
            await client.hello()
    finally:
        await client.aclose()


async def test_an_answer_the_node_cannot_send_closes_the_connection(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        most = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)  # (one message's)
    async with _serving(tmp_path, hello={"node": "n" * most}) as served:
        client = served.client(served.owner)
        with pytest.raises(
            TransferBroken,
            match=rf"^the object socket {re.escape(served.path)} closed the connection$",
        ):
            await client.hello()
        await client.put("k", b"still served")  # (on a new connection)
        assert (await client.get("k"))[0] == b"still served"
        await client.aclose()


async def test_a_damaged_value_file_is_said_not_returned_short(tmp_path: Path) -> None:
    async with _serving(tmp_path) as served:
        client = served.client(served.owner)
        await client.put("large", b"L" * LARGE)
        (damaged,) = served.value_files()
        os.truncate(damaged, 3)
        with pytest.raises(
            TransferBroken, match=rf"^the value's file handed over has 3 of {LARGE} bytes$"
        ):
            await client.get("large")
        await client.aclose()


# -- the socket itself -----------------------------------------------------------------


async def test_a_client_that_stops_reading_its_answers_is_dropped_not_waited_for(
    tmp_path: Path,
) -> None:
    # Everything runs on the node's event loop: a send that waited for a client to read
    # would stop every other client (and the node) with it.
    async with _serving(tmp_path) as served:
        request = orjson.dumps({"op": "hello", "token": served.owner})

        def flood() -> str:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.settimeout(WAIT_S)
                sock.connect(served.path)
                try:
                    for _ in range(100_000):
                        sock.send(request)  # (its answers never read)
                except TimeoutError:
                    return "the node stopped reading: it waits for this client"
                except OSError:
                    return "dropped"
            return "never dropped"

        assert await anyio.to_thread.run_sync(flood) == "dropped"
        assert (await _ask(served.path, {"op": "hello", "token": served.owner}))[0]["ok"]


async def test_the_socket_is_the_owners_alone_and_gone_when_the_node_stops(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    socket_path(home).write_text("left by a node that did not stop cleanly")
    served_at = ""
    kv = LevelDBKV.open(str(home / "meta.ldb"))
    try:
        store = ObjectStore(kv, home / "objects")
        security = Security(Authorizer(TokenStore(home)))
        async with serving_object_socket(store, security, socket_path(home), HELLO) as path:
            served_at = path
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            owner = TokenStore(home).owner_token()
            assert (await _ask(path, {"op": "hello", "token": owner}))[0]["ok"]
    finally:
        await kv.aclose()
    assert served_at == str(socket_path(home)) and not socket_path(home).exists()


async def test_no_socket_where_its_path_is_too_long_or_cannot_be_bound(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (108 - len(str(tmp_path))))
    deep.mkdir()
    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    try:
        store = ObjectStore(kv, tmp_path / "objects")
        security = Security(Authorizer(TokenStore(tmp_path)))
        async with serving_object_socket(store, security, socket_path(deep), HELLO) as path:
            assert path == ""
        nowhere = tmp_path / "missing" / "objects.sock"
        async with serving_object_socket(store, security, nowhere, HELLO) as path:
            assert path == ""
    finally:
        await kv.aclose()
    assert not socket_path(deep).exists()
