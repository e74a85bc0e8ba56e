"""A connection's certificate name is read once and remembered for that connection
(transport/auth.py): members calling at once over their own connections are each named
by their own certificate, call after call, and a token caller over TLS is never taken
for a member."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from spear.core.cluster import ClusterTimings, NodeRecord
from spear.core.models import Resources
from spear.core.sms import MetadataServer
from spear.errors import PermissionDenied
from spear.store.leveldb import LevelDBKV
from spear.transport import tls
from spear.transport.auth import read_owner_token
from spear.transport.channels import Credentials
from spear.transport.serving import Security
from spear.transport.sms_client import SmsClient
from spear.transport.sms_server import SmsServer

if TYPE_CHECKING:
    from pathlib import Path


def _record(name: str) -> NodeRecord:
    free = Resources(1000, 1 << 30)
    return NodeRecord(name=name, address="127.0.0.1:1", incarnation="i1", capacity=free, free=free)


async def test_each_connection_keeps_its_own_certificate_name(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    tls.create_ca(ca)
    for name in ("sms", "node-1", "node-2"):
        tls.issue(ca, name, tmp_path / name)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / tls.CA_CERT).write_bytes((ca / tls.CA_CERT).read_bytes())
    security = Security.for_data_dir(tmp_path / "home", tls_dir=tmp_path / "sms")
    async with LevelDBKV.open(str(tmp_path / "sms.ldb")) as kv:
        server = SmsServer(MetadataServer(kv, ClusterTimings()), security=security)
        address = await server.start("127.0.0.1:0")
        try:
            members = {
                name: SmsClient(address, credentials=Credentials(tls=tls.TlsFiles(tmp_path / name)))
                for name in ("node-1", "node-2")
            }
            user = SmsClient(
                address,
                credentials=Credentials(
                    token=read_owner_token(tmp_path / "home"), tls=tls.TlsFiles(tmp_path / "user")
                ),
            )

            async def member(me: str, other: str) -> None:
                for _ in range(5):  # every call on the one connection, interleaved
                    assert (await members[me].register(_record(me))).name == me
                    with pytest.raises(PermissionDenied, match=f"may not speak for node '{other}'"):
                        await members[me].register(_record(other))

            async def admin() -> None:
                for _ in range(5):
                    with pytest.raises(PermissionDenied, match="needs node"):
                        await user.register(_record("node-1"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(member, "node-1", "node-2")
                tg.start_soon(member, "node-2", "node-1")
                tg.start_soon(admin)
            for client in (*members.values(), user):
                await client.aclose()
        finally:
            await server.close()
