"""Authentication and roles on real gRPC servers: tokens for callers, mutual TLS between
cluster members, and nothing changed by a caller who is refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from typing import TYPE_CHECKING, Any

import grpc.aio
import pytest
from conftest import assert_eventually
from grpc_health.v1 import health_pb2, health_pb2_grpc
from wat_tasks import hello

import spear
from spear.core.cluster import ClusterTimings, NodeRecord
from spear.core.models import FunctionSpec, Resources, Runtime, TaskState
from spear.core.sms import MetadataServer
from spear.errors import InvalidArgument, PermissionDenied, Unauthenticated, Unavailable
from spear.node.client import Client
from spear.node.server import serve_spearlet
from spear.store.leveldb import LevelDBKV
from spear.transport import tls
from spear.transport.auth import Role, TokenStore, read_owner_token
from spear.transport.channels import Credentials
from spear.transport.serving import Security
from spear.transport.sms_client import SmsClient
from spear.transport.sms_server import SmsServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable
    from pathlib import Path


@contextlib.asynccontextmanager
async def node_served(home: Path, **kwargs: Any) -> AsyncIterator[str]:
    async with spear.LocalNode(home) as node:
        server = await serve_spearlet(node, "127.0.0.1:0", **kwargs)
        try:
            assert server.address is not None
            yield server.address
        finally:
            await server.close()


async def refused(call: Awaitable[object]) -> None:
    """Await a call that must be refused, within a bound: a refusal that never reaches the
    client (a call left waiting) fails the test instead of hanging it."""
    await asyncio.wait_for(call, 10)


def test_tokens_are_stored_as_digests_in_owner_only_files(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.issue("alice", Role.READER)
    assert token.startswith("spear_")
    secret = token.rsplit("_", 1)[1]
    assert secret not in store.path.read_text()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    principal = store.verify(token)
    assert principal is not None and principal.name == "alice" and principal.role is Role.READER
    assert store.verify(token[:-1] + ("x" if token[-1] != "x" else "y")) is None
    assert store.verify("not a token") is None
    with pytest.raises(InvalidArgument):
        store.issue("member", Role.NODE)  # members use certificates


def test_a_revoked_token_stops_working(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.issue("bob", Role.SUBMITTER)
    running = TokenStore(tmp_path)  # the daemon's view of the same file
    assert running.verify(token) is not None
    [gone] = store.revoke("bob")
    assert gone.name == "bob"
    assert_eventually(lambda: running.verify(token) is None, timeout=5)


async def test_a_call_without_a_valid_token_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    module = hello(tmp_path)
    async with node_served(tmp_path / "home") as address:
        owner = read_owner_token(tmp_path / "home")
        assert owner is not None
        for token in (None, "spear_00000000_forged", owner + "x"):
            async with Client(address, token=token) as stranger:
                with pytest.raises(Unauthenticated):
                    await refused(stranger.submit(FunctionSpec(str(module))))
                with pytest.raises(Unauthenticated):
                    await refused(stranger.put_object("k", b"v"))
                with pytest.raises(Unauthenticated):
                    await refused(stranger.tasks())
        async with Client(address, token=owner) as client:
            assert await client.tasks() == []
            assert await client.list_objects() == []
            result = await (await client.submit(FunctionSpec(str(module))))
            assert result.task.state is TaskState.COMPLETED and result.output == b"hello\n"


async def test_roles_decide_what_a_token_may_do(tmp_path: Path) -> None:
    home = tmp_path / "home"
    module = hello(tmp_path)
    async with node_served(home) as address:
        store = TokenStore(home)
        reader = store.issue("reader", Role.READER)
        submitter = store.issue("submitter", Role.SUBMITTER)
        async with Client(address, token=reader) as client:
            assert (await client.node_info()).name
            with pytest.raises(PermissionDenied, match="needs submitter"):
                await refused(client.submit(FunctionSpec(str(module))))
            with pytest.raises(PermissionDenied):
                await refused(client.put_object("k", b"v"))
        async with Client(address, token=submitter) as client:
            result = await client.call(FunctionSpec(str(module)))
            assert result.output == b"hello\n"
            # A program on the node's host needs admin: submitters run WASM only.
            with pytest.raises(PermissionDenied, match="process runtime needs admin"):
                await refused(client.submit(FunctionSpec(sys.executable, runtime=Runtime.PROCESS)))
        async with Client(address, token=read_owner_token(home)) as owner:
            tasks = await owner.tasks()
            assert [t.spec.runtime for t in tasks] == [Runtime.WASM]  # nothing else ran
            ran = await owner.call(
                FunctionSpec(sys.executable, runtime=Runtime.PROCESS, args=("-c", "print(7)"))
            )
            assert ran.output == b"7\n"


async def test_health_checks_need_no_credential(tmp_path: Path) -> None:
    async with node_served(tmp_path / "home") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_serving_beyond_loopback_without_tls_is_refused_unless_forced(
    tmp_path: Path,
) -> None:
    async with spear.LocalNode(tmp_path / "home") as node:
        with pytest.raises(InvalidArgument, match="without TLS"):
            await serve_spearlet(node, "0.0.0.0:0")
        forced = Security(Security.for_data_dir(tmp_path / "home").authorizer, allow_insecure=True)
        server = await serve_spearlet(node, "0.0.0.0:0", security=forced)
        await server.close()


def _member(ca_dir: Path, root: Path, name: str) -> Credentials:
    directory = root / name
    tls.issue(ca_dir, name, directory)
    return Credentials(tls=tls.TlsFiles(directory))


def _record(name: str) -> NodeRecord:
    return NodeRecord(
        name=name,
        address="127.0.0.1:1",
        incarnation="i1",
        capacity=Resources(1000, 1 << 30),
        free=Resources(1000, 1 << 30),
    )


async def test_members_authenticate_with_certificates_and_speak_only_for_themselves(
    tmp_path: Path,
) -> None:
    ca_dir = tmp_path / "ca"
    tls.create_ca(ca_dir)
    assert stat.S_IMODE((ca_dir / tls.CA_KEY).stat().st_mode) == 0o600
    node1 = _member(ca_dir, tmp_path, "node-1")
    _member(ca_dir, tmp_path, "sms")
    rogue_ca = tmp_path / "rogue"
    tls.create_ca(rogue_ca)
    rogue = _member(rogue_ca, tmp_path, "node-2")
    security = Security.for_data_dir(tmp_path / "sms-home", tls_dir=tmp_path / "sms")
    assert security.tls is not None
    kv = LevelDBKV.open(str(tmp_path / "sms.ldb"))
    async with kv:
        server = SmsServer(MetadataServer(kv, ClusterTimings()), security=security)
        address = await server.start("127.0.0.1:0")
        try:
            async with SmsClient(address, credentials=node1) as member:
                registered = await member.register(_record("node-1"))
                assert registered.name == "node-1"
                with pytest.raises(PermissionDenied, match="may not speak for node 'node-2'"):
                    await member.register(_record("node-2"))
                with pytest.raises(PermissionDenied):
                    await member.deregister("node-2", "i1")
            # A certificate from another CA, or none at all, gets nowhere.
            async with SmsClient(address, credentials=rogue) as impostor:
                with pytest.raises(Unavailable):
                    await impostor.register(_record("node-2"))
            users_view = Credentials(
                token=read_owner_token(tmp_path / "sms-home"),
                tls=tls.TlsFiles(tmp_path / "sms-user"),
            )
            (tmp_path / "sms-user").mkdir()
            (tmp_path / "sms-user" / tls.CA_CERT).write_bytes((ca_dir / tls.CA_CERT).read_bytes())
            async with SmsClient(address, credentials=users_view) as admin:
                assert [n.name for n in await admin.nodes()] == ["node-1"]
                with pytest.raises(PermissionDenied, match="needs node"):
                    await admin.deregister("node-1", registered.incarnation)
            async with SmsClient(address) as plaintext:
                with pytest.raises(Unavailable):
                    await plaintext.nodes()
            async with SmsClient(address, credentials=node1) as member:
                assert [n.name for n in await member.nodes()] == ["node-1"]
        finally:
            await server.close()


def test_the_ca_key_is_never_world_readable(tmp_path: Path) -> None:
    tls.create_ca(tmp_path / "ca")
    tls.issue(tmp_path / "ca", "n", tmp_path / "n")
    for path in (tmp_path / "ca" / tls.CA_KEY, tmp_path / "n" / tls.NODE_KEY):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
