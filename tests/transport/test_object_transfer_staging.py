"""The object transfer service leaves nothing half-received: a put cut short is removed
at once, and values a crashed run left in staging are removed when the service starts
again (and by collection, once untouched for STAGING_GRACE_S). Real LevelDB, real
sockets on loopback."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from spear.errors import NotFound
from spear.store.leveldb import LevelDBKV
from spear.store.objects import STAGING_GRACE_S, ObjectStore
from spear.transport.channels import Credentials
from spear.transport.object_transfer import ObjectTransferClient, ObjectTransferServer
from spear.transport.serving import Security, parse_listen

if TYPE_CHECKING:
    from pathlib import Path


async def _until(check: object, timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.02)


def test_half_received_values_never_stay(tmp_path: Path) -> None:
    staging = tmp_path / "objects" / "staging"
    staging.mkdir(parents=True)
    (staging / "from-a-crash").write_bytes(b"x" * 1000)  # a previous run died receiving

    async def main() -> None:
        kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
        store = ObjectStore(kv, tmp_path / "objects")
        server = ObjectTransferServer(store, Security.open())
        try:
            address = await server.start("127.0.0.1:0")
            assert list(staging.iterdir()) == []  # cleared on start
            # A client that dies half-way through a put: nothing stays, nothing is stored.
            host, port = parse_listen(address)
            with socket.create_connection((host, port)) as sock:
                head = {"op": "put", "key": "cut", "size": 4 * 1024 * 1024}
                sock.sendall(json.dumps(head).encode() + b"\n" + b"y" * 100_000)
                await _until(lambda: len(list(staging.iterdir())) == 1)  # being received
            await _until(lambda: list(staging.iterdir()) == [])
            with pytest.raises(NotFound):
                await store.get("cut")
            # A whole put through the same service is kept, and staging is empty again.
            client = ObjectTransferClient(Credentials())
            try:
                version = await client.put(address, "whole", b"z" * 100_000)
            finally:
                await client.aclose()
            assert (await store.get("whole"))[1] == version
            assert list(staging.iterdir()) == []
            # Collection removes a staged value untouched for STAGING_GRACE_S, not a fresh one.
            (staging / "stale").write_bytes(b"s")
            (staging / "fresh").write_bytes(b"f")
            old = time.time() - STAGING_GRACE_S - 1
            os.utime(staging / "stale", (old, old))
            await store.collect()
            assert [p.name for p in staging.iterdir()] == ["fresh"]
        finally:
            await server.close()
            await kv.aclose()

    anyio.run(main)
