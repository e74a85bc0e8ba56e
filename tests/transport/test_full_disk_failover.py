"""A client fails over from a node whose disk is full (issue 16's disk-full fault): the
node's refusal (NoSpace: RESOURCE_EXHAUSTED with the code "no_space") wrote nothing, so an
unconditional put goes to the next address, as it would from an unavailable node. Real
gRPC on loopback, a real 16 MiB tmpfs under the full node's data dir."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest
from small_disk import fill, small_disk
from test_spearlet_service import served

from spear.errors import NoSpace, ResourceExhausted, StorageError, Unavailable
from spear.node.client import Client
from spear.node.failover import Failover
from spear.transport.auth import AUTH_DIR, read_owner_token

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", 16) as mount:
        yield mount


def test_a_full_disk_is_a_reason_to_try_another_node_and_nothing_else_is() -> None:
    failover = Failover("a:1,b:2", retries=2)
    full = NoSpace("no space left on device (the database): free space in the data dir")
    assert failover.should_retry(full, 0) and failover.should_retry(full, 1)
    assert not failover.should_retry(full, 2)  # its retries used up
    busy = ResourceExhausted("the cluster is overloaded: 10 tasks wait for room")
    assert not failover.should_retry(busy, 0)
    # Told by its class (its own code on the wire), not by what the message says.
    assert not failover.should_retry(ResourceExhausted("no space left on device"), 0)
    assert failover.should_retry(Unavailable("gone"), 0)
    assert failover.should_retry(StorageError("database error"), 0)


async def test_a_put_to_a_node_whose_disk_is_full_goes_to_the_next_address(
    disk: Path, tmp_path: Path
) -> None:
    full_home, other_home = disk / "home", tmp_path / "other"
    async with served(full_home) as (_, full_server, _):
        shutil.copytree(full_home / AUTH_DIR, other_home / AUTH_DIR)  # one owner for both
        async with served(other_home) as (_, other_server, _):
            fill(disk)
            token = read_owner_token(full_home)
            addresses = f"{full_server.address},{other_server.address}"
            async with Client(addresses, token=token) as client:
                info = await client.put_object("notes/1", b"x" * 256 * 1024)
                assert info.version == 1 and client.address == other_server.address
                data, _ = await client.get_object("notes/1")  # (from the other node)
                assert data == b"x" * 256 * 1024
            async with Client(str(full_server.address), token=token, retries=1) as alone:
                with pytest.raises(NoSpace, match="^no space left on device"):
                    await alone.put_object("notes/2", b"x" * 256 * 1024)
