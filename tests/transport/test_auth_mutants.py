"""What transport/auth.py's token store saves, and what a refused caller gets on the wire.

A node checks the token of every call it serves, so the store must not read its file, nor
hash a token, more often than the rules say: the file at most once a second (and again
only if it changed), each token once until the file changes. These count the reads of
the real file and the hashes, on a clock the test moves (mutation testing, issue 22).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
from pathlib import PosixPath
from typing import TYPE_CHECKING, Any

import grpc
import orjson
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from spear.errors import InvalidArgument, PermissionDenied, Unauthenticated
from spear.transport import auth
from spear.transport._status import RpcError
from spear.transport.aio_client import AioChannel
from spear.transport.aio_server import AioServer
from spear.transport.auth import (
    Authorizer,
    Principal,
    Role,
    TokenStore,
    admit,
    certificate_name,
    current_namespace,
    current_principal,
)
from spear.transport.channels import NO_CREDENTIALS, Credentials
from spear.transport.cluster_tokens import ClusterTokens, verify_at_sms
from spear.transport.services import Cardinality
from spear.transport.serving import Security
from spear.transport.standard_services import reflection_methods

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from conftest import Cli

    from spear.transport.services import ServedMethod


class _NoTls:
    def cert(self) -> Any:
        raise AttributeError("no TLS on this connection")


NO_TLS = _NoTls()
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
Status = grpc.StatusCode


class Clock:
    """`time` as auth.py sees it, with a monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


class CountedPath(PosixPath):
    """A real path that counts the looks at (stat) and the reads of the token file."""

    looks: list[str] = []
    reads: list[str] = []

    def stat(self, **kwargs: Any) -> os.stat_result:
        CountedPath.looks.append(self.name)
        return super().stat(**kwargs)

    def read_bytes(self) -> bytes:
        CountedPath.reads.append(self.name)
        return super().read_bytes()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(auth, "time", clock)
    return clock


@pytest.fixture
def counted(tmp_path: Path) -> tuple[list[str], list[str]]:
    CountedPath.looks, CountedPath.reads = [], []
    return CountedPath.looks, CountedPath.reads


def test_a_running_node_reads_its_token_file_once_a_second_and_only_if_it_changed(
    tmp_path: Path, clock: Clock, counted: tuple[list[str], list[str]]
) -> None:
    looks, reads = counted
    token = TokenStore(tmp_path).issue("ci", Role.READER)  # `spear token create`
    running = TokenStore(CountedPath(tmp_path))
    for _ in range(50):  # a burst of calls within a second
        assert running.verify(token) == Principal("ci", Role.READER, "token", "default")
    assert (looks.count("tokens.json"), reads.count("tokens.json")) == (1, 1)
    clock.now += 0.5
    assert running.verify(token) is not None
    assert (looks.count("tokens.json"), reads.count("tokens.json")) == (1, 1)
    clock.now += 0.5  # a second since it looked: it looks again, and the file is the same
    assert running.verify(token) is not None
    assert (looks.count("tokens.json"), reads.count("tokens.json")) == (2, 1)
    TokenStore(tmp_path).revoke("ci")  # `spear token rm ci`
    clock.now += 1.0  # "stops accepting a revoked one within a second" (docs/security.md)
    assert running.verify(token) is None
    assert reads.count("tokens.json") == 2


def test_a_token_checked_on_every_call_is_hashed_once_until_the_file_changes(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    digest = auth._digest

    def counting(secret: str) -> str:
        hashed.append(secret)
        return digest(secret)

    monkeypatch.setattr(auth, "_digest", counting)
    token = TokenStore(tmp_path).issue("ci", Role.SUBMITTER)
    running = TokenStore(tmp_path)
    hashed.clear()
    for _ in range(20):
        assert running.verify(token) is not None
    assert len(hashed) == 1
    other = TokenStore(tmp_path).issue("other", Role.READER)  # the file changes
    clock.now += 1.0
    assert running.verify(token) is not None and running.verify(other) is not None
    assert running.verify(token) is not None and running.verify(other) is not None
    assert len(hashed) == 4  # ci's again, and other's (issuing it hashed it once)


def test_a_token_revoked_through_a_store_is_refused_by_it_at_once(
    tmp_path: Path, clock: Clock
) -> None:
    store = TokenStore(tmp_path)
    token = store.issue("ci", Role.ADMIN)
    assert store.verify(token) is not None
    store.revoke("ci")
    assert store.verify(token) is None  # the clock has not moved
    again = store.issue("ci", Role.ADMIN)
    assert store.verify(again) is not None and store.verify(token) is None


def test_a_revoke_within_the_same_clock_tick_is_still_seen(tmp_path: Path, clock: Clock) -> None:
    # A file's modification time moves in clock ticks (milliseconds): a revoke written in
    # the tick of the file's last change must not look like the file already read.
    token = TokenStore(tmp_path).issue("ci", Role.READER)
    TokenStore(tmp_path).issue("other", Role.READER)
    path = tmp_path / "auth" / "tokens.json"
    before = path.stat()
    running = TokenStore(tmp_path)
    assert running.verify(token) is not None
    TokenStore(tmp_path).revoke("ci")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    clock.now += 1.0
    assert running.verify(token) is None


def test_an_operator_can_read_the_token_file(tmp_path: Path) -> None:
    # An operator reads (and may edit) the file by hand: it is laid out for a person, one
    # field a line.
    TokenStore(tmp_path).issue("ci", Role.READER)
    text = (tmp_path / "auth" / "tokens.json").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert '"name": "ci",' in lines and '"role": "reader",' in lines
    assert orjson.loads(text)["tokens"][0]["name"] == "ci"


@pytest.fixture
def taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A token file holding id 0badc0de, and ids drawn: 0badc0de first, then random ones."""
    (tmp_path / "auth").mkdir()
    record = {"id": "0badc0de", "name": "old", "role": "reader", "sha256": "0" * 64}
    (tmp_path / "auth" / "tokens.json").write_bytes(
        orjson.dumps({"tokens": [{**record, "created_at": 1.0}]})
    )
    drawn: list[str] = []
    token_hex = auth.secrets.token_hex

    def draw(n: int) -> str:
        assert len(drawn) < 10, "ids drawn without end"
        drawn.append("0badc0de" if not drawn else token_hex(n))
        return drawn[-1]

    monkeypatch.setattr(auth.secrets, "token_hex", draw)
    return drawn


def test_a_new_token_never_takes_the_id_of_one_the_file_holds(
    tmp_path: Path, taken: list[str]
) -> None:
    token = TokenStore(tmp_path).issue("new", Role.READER)
    assert len(taken) == 2
    token_id = token.split("_")[1]
    assert token_id == taken[1] and re.fullmatch("[0-9a-f]{8}", token_id)
    store = TokenStore(tmp_path)
    assert [(t.id, t.name) for t in store.tokens()] == [("0badc0de", "old"), (token_id, "new")]
    assert store.verify(token) == Principal("new", Role.READER, "token", "default")


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path, policy: dict[str, Role] | None = None
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A real server of ours (grpc.aio, reflection) admitting callers by an Authorizer with
    `policy`, its address, and the metadata of each call its handler ran."""
    seen: list[dict[str, Any]] = []

    def recording(method: ServedMethod) -> ServedMethod:
        async def handler(requests: Any, context: Any) -> AsyncIterator[Any]:
            seen.append(dict(context.invocation_metadata()))
            async for reply in method.handler(requests, context):
                yield reply

        return dataclasses.replace(method, handler=handler)

    authorizer = Authorizer(TokenStore(tmp_path), policy=policy or auth.POLICY)
    methods = {route: recording(m) for route, m in reflection_methods([]).items()}
    server = AioServer(methods, name="reflection", security=Security(authorizer))
    address = await server.start("127.0.0.1:0")
    try:
        yield address, seen
    finally:
        await server.close()


async def reflect(
    address: str,
    metadata: dict[str, str] | None = None,
    credentials: Credentials = NO_CREDENTIALS,
) -> Any:
    """One reflection call on a channel of spear's presenting `credentials`."""
    channel = AioChannel(address, credentials)
    try:
        # (a client deadline: a call the server never answers fails the test, not hangs it)
        async with channel.request(
            REFLECTION,
            Cardinality.STREAM_STREAM,
            reflection_pb2.ServerReflectionRequest,
            reflection_pb2.ServerReflectionResponse,
            timeout=10,
            metadata=metadata,
        ) as stream:
            await stream.send_message(reflection_pb2.ServerReflectionRequest(list_services=""))
            await stream.end()
            return [reply async for reply in stream]
    finally:
        await channel.aclose()


async def test_a_refused_call_ends_with_its_status(tmp_path: Path) -> None:
    # Whatever the client: no credential is UNAUTHENTICATED, a role too low is
    # PERMISSION_DENIED, a namespace that cannot be one is INVALID_ARGUMENT.
    reader = TokenStore(tmp_path).issue("ann", Role.READER)
    bearer = {"authorization": f"Bearer {reader}"}
    for policy, metadata, status, message in (
        (None, None, Status.UNAUTHENTICATED, "this node requires a credential: "),
        ({REFLECTION: Role.ADMIN}, bearer, Status.PERMISSION_DENIED, "ann (reader) may not"),
        (None, {**bearer, "spear-namespace": "Team A"}, Status.INVALID_ARGUMENT, "invalid "),
    ):
        async with served(tmp_path, policy) as (address, _):
            with pytest.raises(RpcError) as info:
                await reflect(address, metadata)
            assert info.value.status is status, info.value
            assert (info.value.message or "").startswith(message), info.value
    async with served(tmp_path) as (address, _):
        assert len(await reflect(address, bearer)) == 1  # and the reader is let in


async def test_a_channel_sends_its_token_and_namespace_with_every_call(tmp_path: Path) -> None:
    admin = TokenStore(tmp_path).issue("root", Role.ADMIN)
    async with served(tmp_path) as (address, seen):
        credentials = Credentials(token=admin, namespace="team-a")
        await reflect(address, credentials=credentials)
        await reflect(address, credentials=credentials)
    assert [(m["authorization"], m["spear-namespace"]) for m in seen] == [
        (f"Bearer {admin}", "team-a")
    ] * 2
    async with served(tmp_path) as (address, seen):
        with pytest.raises(RpcError) as refused:  # (it sent no token: none to accept)
            await reflect(address, credentials=Credentials(token=None))
    assert refused.value.status is Status.UNAUTHENTICATED and seen == []
    async with served(tmp_path) as (address, seen):
        await reflect(address, credentials=Credentials(token=admin, namespace=None))
    assert seen[0]["authorization"] == f"Bearer {admin}" and "spear-namespace" not in seen[0]


def test_the_token_commands_a_user_types(cli: Cli, data_dir: Path) -> None:
    # `spear token create|ls|rm` in processes of their own, each importing auth.py (and
    # building its policy table) from scratch, on the same token file.
    made = cli("token", "create", "ci", "--role", "reader")
    assert made.returncode == 0, made.stderr.decode()
    token = made.stdout.decode().strip()
    assert TokenStore(data_dir).verify(token) == Principal("ci", Role.READER, "token", "default")
    listed = cli("token", "ls")
    assert listed.returncode == 0, listed.stderr.decode()
    assert listed.stdout.decode().split()[-1] == "ci"
    gone = cli("token", "rm", "ci")
    assert gone.stdout.decode() == f"revoked {token.split('_')[1]} (ci)\n"
    assert TokenStore(data_dir).verify(token) is None


def test_the_namespace_a_call_acts_in() -> None:
    authorizer = Authorizer(None)
    bound = Principal("ann", Role.READER, "token", "team-a")
    admin = Principal("root", Role.ADMIN, "token")
    member = Principal("node-1", Role.NODE, "certificate")

    def asks(namespace: str | bytes | None) -> dict[str, str | bytes]:
        return {} if namespace is None else {"spear-namespace": namespace}

    # A bound token acts in its namespace, named or not; never in another.
    for asked in (None, "", "team-a", b"team-a"):
        assert authorizer.namespace(bound, asks(asked)) == "team-a"
    with pytest.raises(PermissionDenied) as info:
        authorizer.namespace(bound, asks(b"team-b"))
    assert str(info.value) == "ann may act only in namespace 'team-a', not 'team-b'"
    # An admin's acts in the one it names, else `default`.
    assert authorizer.namespace(admin, asks("team-b")) == "team-b"
    assert authorizer.namespace(admin, asks(b"team-b")) == "team-b"
    assert authorizer.namespace(admin, asks(None)) == "default"
    # A cluster member (or no authentication at all): the one it names, else the node.
    for principal in (member, None):
        assert authorizer.namespace(principal, asks("team-b")) == "team-b"
        assert authorizer.namespace(principal, asks(b"team-b")) == "team-b"
        assert authorizer.namespace(principal, asks(None)) is None
        assert authorizer.namespace(principal, asks("")) is None
    # A name that cannot be a namespace is refused whoever asks.
    for principal in (bound, admin, member, None):
        with pytest.raises(InvalidArgument, match="^invalid namespace 'Team A'"):
            authorizer.namespace(principal, asks(b"Team A"))


async def admitted(
    authorizer: Authorizer, method: str, token: str | None, namespace: str | None = None
) -> tuple[Principal | None, Principal | None, str | None]:
    """What `admit` returns and what it makes current, in a task of its own (as a call)."""
    metadata = {"authorization": f"Bearer {token}"} if token else {}
    if namespace is not None:
        metadata["spear-namespace"] = namespace

    async def call() -> tuple[Principal | None, Principal | None, str | None]:
        principal = await admit(authorizer, method, metadata, NO_TLS)
        return principal, current_principal.get(), current_namespace.get()

    return await asyncio.create_task(call())


LIST = "/spear.v1.Spearlet/ListTasks"
SUBMIT = "/spear.v1.Spearlet/SubmitTask"
UNLISTED = "/spear.v1.Spearlet/Unlisted"  # a method no table names


async def test_a_token_made_at_the_sms_is_accepted_by_its_members(tmp_path: Path) -> None:
    sms = TokenStore(tmp_path / "sms")  # the SMS's tokens, asked as VerifyToken does

    async def ask(token: str) -> Any:
        return verify_at_sms(sms, token)

    node = TokenStore(tmp_path / "node")
    own = node.issue("local", Role.SUBMITTER, "team-b")
    member = Authorizer(node, cluster=ClusterTokens(ask))
    ann = sms.issue("ann", Role.READER, "team-a")
    cluster_ann = Principal("ann", Role.READER, "cluster token", "team-a")
    assert await admitted(member, LIST, ann) == (cluster_ann, cluster_ann, "team-a")
    assert await admitted(member, LIST, ann, "team-a") == (cluster_ann, cluster_ann, "team-a")
    with pytest.raises(PermissionDenied) as info:
        await admitted(member, LIST, ann, "team-b")
    assert str(info.value) == "ann may act only in namespace 'team-a', not 'team-b'"
    # Its role is checked as a node's own token's is.
    with pytest.raises(PermissionDenied) as info:
        await admitted(member, SUBMIT, ann)
    assert not isinstance(info.value, Unauthenticated)
    assert str(info.value) == f"ann (reader) may not call {SUBMIT}: it needs submitter"
    with pytest.raises(PermissionDenied) as info:
        await admitted(member, "/spear.v1.Spearlet/Unlisted", sms.issue("bo", Role.SUBMITTER))
    assert (
        str(info.value) == "bo (submitter) may not call /spear.v1.Spearlet/Unlisted: it needs admin"
    )
    # The node's own tokens first; a token neither knows, or none, is refused as unknown.
    local = Principal("local", Role.SUBMITTER, "token", "team-b")
    assert await admitted(member, SUBMIT, own) == (local, local, "team-b")
    for token, message in ((own + "x", "the token was not accepted"), (None, "this node requires")):
        with pytest.raises(Unauthenticated, match=f"^{message}"):
            await admitted(member, LIST, token)
    # A node that is no cluster member knows only its own.
    with pytest.raises(Unauthenticated, match="^the token was not accepted"):
        await admitted(Authorizer(node), LIST, ann)


def test_a_connection_certificate_is_read_once() -> None:
    class Transport:
        """One connection (a peer that has one keeps it as `_transport`)."""

    class Peer:
        def __init__(self, transport: Transport | None) -> None:
            self._transport = transport
            self.reads = 0

        def cert(self) -> Any:
            self.reads += 1
            return {"subject": ((("commonName", "node-1"),),)}

    connection = Transport()
    first, second = Peer(connection), Peer(connection)  # two calls on one connection
    assert certificate_name(first) == "node-1" and certificate_name(second) == "node-1"
    assert (first.reads, second.reads) == (1, 0)
    unknown = Peer(None)  # nothing to remember it by: read each time
    assert certificate_name(unknown) == "node-1" and certificate_name(unknown) == "node-1"
    assert unknown.reads == 2
