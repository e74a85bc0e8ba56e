"""A standalone daemon (`spear serve`, no SMS) serves its objects' bytes on a port of its
own, as cluster members do (node/local_objects.py): `spear.Client` and `spear obj get/put
--node` take that path, under the daemon's rules (tokens, roles, namespaces, quotas).
Real daemons on loopback, real LevelDB files."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import pytest

from spear.config import Settings
from spear.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from spear.node.assembly import serving_node
from spear.node.client import Client
from spear.node.quotas import Quota, QuotaFile
from spear.transport.auth import AUTH_DIR, Role, TokenStore, read_owner_token
from spear.transport.channels import Credentials
from spear.transport.object_transfer import ObjectTransferClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def _daemon(home: Path) -> AsyncIterator[str]:
    async with serving_node(Settings(data_dir=home, listen="127.0.0.1:0")) as served:
        yield served.address


def test_a_standalone_daemon_serves_objects_on_a_transfer_port(tmp_path: Path) -> None:
    home = tmp_path / "home"
    big = bytes(range(256)) * (MiB // 256)

    async def main() -> None:
        async with _daemon(home) as address:
            owner = Credentials(token=read_owner_token(home))
            async with Client(address, credentials=owner) as client:
                transfer = (await client.node_info()).object_transfer_address
                assert transfer.startswith("127.0.0.1:") and transfer != address
                put = await client.put_object("notes", big)
                data, info = await client.get_object("notes")
                assert (data, info.version) == (big, put.version)
            raw = ObjectTransferClient(owner)  # (the port itself: what the Client used)
            try:
                value, version = await raw.get(transfer, "notes")
                assert (bytes(value), version) == (big, put.version)
                assert await raw.put(transfer, "notes", b"short") > version
            finally:
                await raw.aclose()
            stranger = ObjectTransferClient(Credentials())
            try:
                with pytest.raises(Unauthenticated, match="requires a token"):
                    await stranger.get(transfer, "notes")
            finally:
                await stranger.aclose()

    anyio.run(main)


def test_the_transfer_port_keeps_the_daemons_roles_namespaces_and_quotas(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"

    async def main() -> None:
        async with _daemon(home) as address:
            tokens = TokenStore(home)
            alice = Credentials(token=tokens.issue("alice", Role.SUBMITTER, "team-a"))
            viewer = Credentials(token=tokens.issue("vic", Role.READER, "team-a"))
            owner = Credentials(token=read_owner_token(home))
            async with Client(address, credentials=owner) as client:
                transfer = (await client.node_info()).object_transfer_address
            as_alice = ObjectTransferClient(alice)
            as_viewer = ObjectTransferClient(viewer)
            as_owner = ObjectTransferClient(owner)
            try:
                await as_alice.put(transfer, "plan", b"team-a's")
                value, _ = await as_viewer.get(transfer, "plan")  # (its namespace's key)
                assert bytes(value) == b"team-a's"
                with pytest.raises(PermissionDenied, match="needs submitter"):
                    await as_viewer.put(transfer, "plan", b"mine now")
                with pytest.raises(PermissionDenied):  # (results/ are the node's to write)
                    await as_alice.put(transfer, "results/forged", b"x")
                await as_owner.put(transfer, "plan", b"the default namespace's")
                value, _ = await as_alice.get(transfer, "plan")
                assert bytes(value) == b"team-a's"  # (another namespace's key, unchanged)
                QuotaFile(home / AUTH_DIR).set(Quota("team-a", object_bytes=100))
                with pytest.raises(ResourceExhausted, match="quota of 100 object bytes"):
                    await as_alice.put(transfer, "big", b"x" * 200)
            finally:
                for c in (as_alice, as_viewer, as_owner):
                    await c.aclose()

    anyio.run(main)
