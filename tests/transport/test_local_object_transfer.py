"""A standalone daemon (`spear serve`, no SMS) serves its objects' bytes on a port of its
own, as cluster members do, and every daemon on its object socket for clients on its
host (node/object_ports.py): `spear.Client` and `spear obj get/put --node` take those
paths, under the daemon's rules (tokens, roles, namespaces, quotas). Real daemons on
loopback, real Unix sockets, real LevelDB files."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from typing import TYPE_CHECKING

import anyio
import pytest

from spear.config import Settings
from spear.errors import (
    Conflict,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from spear.node.assembly import serving_node
from spear.node.client import Client
from spear.node.object_route import ObjectRoute
from spear.node.quotas import Quota, QuotaFile
from spear.transport.auth import AUTH_DIR, Role, TokenStore, read_owner_token
from spear.transport.channels import Credentials
from spear.transport.object_socket import ObjectSocketClient
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
                # (the wording of every role refusal: auth.require_role)
                with pytest.raises(
                    PermissionDenied,
                    match=r"^vic \(reader\) may not put objects: it needs submitter$",
                ):
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


def test_a_client_on_the_daemons_host_goes_through_the_object_socket(tmp_path: Path) -> None:
    home = tmp_path / "home"
    big = bytes(range(256)) * (MiB // 256)

    async def main() -> None:
        async with _daemon(home) as address:
            owner = Credentials(token=read_owner_token(home))
            async with Client(address, credentials=owner) as client:
                info = await client.node_info()
                assert info.object_socket == str(home / "objects.sock")
                put = await client.put_object("notes", big)
                small = await client.put_object("tiny", b"hi")
                # What the Client did went through the socket: its answers are the node's.
                raw = ObjectSocketClient(info.object_socket, owner)
                try:
                    hello = await raw.hello()
                    assert (hello["node"], hello["pid"]) == (info.name, info.pid)
                    value, answer = await raw.get("notes")
                    assert (value, answer["version"]) == (big, put.version)
                    value, answer = await raw.get("tiny")  # (inside the answer)
                    assert (value, answer["version"]) == (b"hi", small.version)
                    newer = await raw.put("notes", b"v2", expected_version=put.version)
                    with pytest.raises(Conflict):  # (that version is gone)
                        await raw.put("notes", b"v3", expected_version=put.version)
                finally:
                    await raw.aclose()
                data, now = await client.get_object("notes")
                assert (data, now.version) == (b"v2", newer["version"])
                # A file is handed over whole (not read in here), and without the socket
                # sent to the transfer service: the same object either way.
                source = tmp_path / "big.bin"
                source.write_bytes(big[::-1])
                by_file = await client.put_object_file("file", source)
                assert (await client.get_object("file")) == (big[::-1], by_file)
                route = ObjectRoute(owner, socket=False)
                try:
                    sent = await route.put_file(client, "file", source, by_file.version)
                    assert sent is not None and sent.version > by_file.version
                finally:
                    await route.aclose()
                with pytest.raises(NotFound):
                    await client.put_object_file("gone", tmp_path / "missing.bin")

    anyio.run(main)


def test_each_put_over_the_socket_stores_exactly_its_own_bytes(tmp_path: Path) -> None:
    """A client reuses its memfd for the next put (up to 4 MiB) and hands over one larger
    than the value: the node stores the value's bytes only, whatever the one before."""
    home = tmp_path / "home"
    values = [
        b"a" * (3 * MiB),  # then shorter ones into the same memfd
        b"b" * 70_000,
        b"c" * 10,
        b"",
        b"d" * (2 * MiB + 1),
        b"e" * (5 * MiB),  # past what is kept: a memfd of its own
        b"f" * 100_000,
    ]

    async def main() -> None:
        async with _daemon(home) as address:
            owner = Credentials(token=read_owner_token(home))
            async with Client(address, credentials=owner) as client:
                raw = ObjectSocketClient((await client.node_info()).object_socket, owner)
                try:
                    for value in values:
                        answer = await raw.put("k", value)
                        assert answer["size"] == len(value)
                        got, read = await raw.get("k")
                        assert (got, read["version"]) == (value, answer["version"])
                        data, info = await client.get_object("k")
                        assert (data, info.size) == (value, len(value))
                    with pytest.raises(Conflict):  # refused: its memfd is not reused broken
                        await raw.put("k", b"x" * 1000, expected_version=1)
                    assert (await raw.put("k", b"y" * 1000))["size"] == 1000
                    assert (await raw.get("k"))[0] == b"y" * 1000
                finally:
                    await raw.aclose()

    anyio.run(main)


def test_the_object_socket_keeps_the_daemons_rules(tmp_path: Path) -> None:
    home = tmp_path / "home"

    async def main() -> None:
        async with _daemon(home) as address:
            tokens = TokenStore(home)
            alice = Credentials(token=tokens.issue("alice", Role.SUBMITTER, "team-a"))
            viewer = Credentials(token=tokens.issue("vic", Role.READER, "team-a"))
            path = str(home / "objects.sock")
            as_alice, as_viewer = ObjectSocketClient(path, alice), ObjectSocketClient(path, viewer)
            stranger = ObjectSocketClient(path, Credentials())
            try:
                await as_alice.put("plan", b"x" * 100_000)
                value, _ = await as_viewer.get("plan")
                assert value == b"x" * 100_000
                with pytest.raises(
                    PermissionDenied,
                    match=r"^vic \(reader\) may not put objects: it needs submitter$",
                ):
                    await as_viewer.put("plan", b"mine now")
                with pytest.raises(Unauthenticated):
                    await stranger.get("plan")
                with pytest.raises(Unauthenticated):
                    await stranger.hello()
                QuotaFile(home / AUTH_DIR).set(Quota("team-a", object_bytes=150_000))
                with pytest.raises(ResourceExhausted, match="quota of 150000 object bytes"):
                    await as_alice.put("more", b"y" * 100_000)
                async with Client(address, credentials=alice) as client:  # (its own view)
                    assert [o.key for o in await client.list_objects()] == ["plan"]
            finally:
                for c in (as_alice, as_viewer, stranger):
                    await c.aclose()

    anyio.run(main)


def test_a_socket_path_that_is_not_this_nodes_is_not_used(tmp_path: Path) -> None:
    # Two daemons of one owner (the same tokens); the first's NodeInfo is doctored to name
    # the second's socket, as a path on this host that is another node's would: the
    # second answers `hello` (the token is good there too), but as another node.
    one, two = tmp_path / "one", tmp_path / "two"

    async def main() -> None:
        async with _daemon(one) as first:
            shutil.copytree(one / AUTH_DIR, two / AUTH_DIR)
            async with _daemon(two):
                owner = Credentials(token=read_owner_token(one))
                async with Client(first, credentials=owner) as client:
                    info = await client.node_info()
                route = ObjectRoute(owner)
                try:
                    own = await route._socket(info)
                    assert own is not None
                    await own.aclose()
                    other = dataclasses.replace(info, object_socket=str(two / "objects.sock"))
                    second = ObjectSocketClient(other.object_socket, owner)
                    assert (await second.hello())["ok"]
                    await second.aclose()
                    assert await route._socket(other) is None
                    gone = dataclasses.replace(info, object_socket=str(tmp_path / "nothing"))
                    assert await route._socket(gone) is None
                finally:
                    await route.aclose()

    anyio.run(main)
