"""Members' caches of current object versions (node/object_cache.py, core/object_leases.py)
against a real SMS serving gRPC over TLS on LevelDB: a cached version is served without
asking the SMS; an overwrite acknowledged elsewhere is never followed by the old version;
a member cut off from the SMS (a partition: its connection silent, not closed) stops
serving its cache before a write elsewhere is acknowledged; and the same across real
SPEARlet processes, with an SMS restart."""

# ruff: noqa: F401, F811  (make_cluster, a fixture imported from helpers.py, is an argument)
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from helpers import assert_eventually, make_cluster
from test_embedding import _certify
from test_scheduling import on

import spear
from spear.config import Settings
from spear.errors import Unavailable
from spear.node.object_cache import watch_index
from spear.node.object_space import ClusterObjects
from spear.transport.channels import Credentials
from spear.transport.object_transfer import ObjectTransferClient
from spear.transport.sms_client import SmsClient
from spear.transport.tls import TlsFiles

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


async def _eventually(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.02)


class _Proxy:
    """A TCP relay to `target` that can be cut (a partition: bytes stop both ways, the
    connections stay open; once healed, what was held back goes through, as TCP would)."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.healed = asyncio.Event()
        self.healed.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    await self.healed.wait()
                    writer.write(data)
                    await writer.drain()
        finally:  # (cancelled too: a relay left open is a ResourceWarning at collection)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers.append(up_writer)
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.get_running_loop().create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            # (every relayed connection closed here: a pipe cancelled before it ran never
            # closes its own, and grpc.aio's callers close theirs in the background)
            for writer in self._writers:
                writer.close()
            await asyncio.sleep(0)  # (one turn: the loop closes their sockets)


@contextlib.asynccontextmanager
async def _member(tmp_path: Path, name: str, sms: str) -> AsyncIterator[ClusterObjects]:
    credentials = Credentials(tls=TlsFiles(tmp_path / name / "tls"))
    client = SmsClient(sms, timeout_s=20, credentials=credentials)
    transfer = ObjectTransferClient(credentials)
    objects = ClusterObjects(client, name, f"127.0.0.1:{len(name)}", transfer)
    watching = asyncio.get_running_loop().create_task(watch_index(client, name, objects.cache))
    try:
        yield objects
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await transfer.aclose()
        await client.aclose()


def _leased(*members: ClusterObjects) -> bool:
    return all(m.cache.ticket(m._sms) is not None for m in members)


def test_cached_versions_are_served_and_invalidated(tmp_path: Path) -> None:
    _certify(tmp_path, "sms", "node-1", "node-2", "node-3")

    async def main() -> None:
        proxy_of_node_2: _Proxy
        async with spear.serve_sms(tmp_path / "sms") as sms:
            proxy_of_node_2 = _Proxy(sms.address)
            async with (
                proxy_of_node_2.serving() as via_proxy,
                _member(tmp_path, "node-1", sms.address) as n1,
                _member(tmp_path, "node-2", via_proxy) as n2,
                _member(tmp_path, "node-3", sms.address) as n3,
            ):
                await _eventually(lambda: _leased(n1, n2, n3))
                first = await n1.commit("doc", 5, None, b"first")
                assert (await n2.current("doc")).version == first
                hits = n2.cache.hits
                # The second get of the same version asks no one.
                assert (await n2.current("doc")).version == first
                assert n2.cache.hits == hits + 1
                assert n2.small_value("doc", first) == b"first"
                # An overwrite on node-3: once acknowledged, node-2 reads the new version.
                for round_ in range(5):
                    value = b"v%d" % round_
                    version = await n3.commit("doc", len(value), None, value)
                    info = await n2.current("doc")
                    assert info.version == version
                    assert n2.small_value("doc", version) == value
                    assert (await n2.current("doc")).version == version  # (cached again)
                # The writer caches what it wrote; a change of references is pushed too.
                hits = n3.cache.hits
                assert (await n3.current("doc")).version == version
                assert n3.cache.hits == hits + 1
                await n1.change("doc", "ref")
                assert (await n2.current("doc")).refs == 1
                # Cut node-2 off (a partition: nothing closes). A write elsewhere is
                # acknowledged only once node-2's lease ran out: node-2 serves nothing
                # cached after that, so it cannot return the old version.
                assert n2.cache.fresh("doc") is not None
                proxy_of_node_2.healed.clear()
                newer = await n3.commit("doc", 5, version, b"newer")
                assert n2.cache.fresh("doc") is None
                proxy_of_node_2.healed.set()
                assert (await n2.current("doc")).version == newer

    anyio.run(main)


def test_the_lease_is_the_sms_setting_object_lease_s(tmp_path: Path) -> None:
    _certify(tmp_path, "sms", "node-1")
    extra = {"object_lease_s": 6.0}
    settings = Settings(data_dir=tmp_path / "sms", listen="127.0.0.1:0", extra=extra)

    async def main() -> None:
        async with spear.serve_sms(settings) as sms:
            async with _member(tmp_path, "node-1", sms.address) as n1:
                await _eventually(lambda: _leased(n1))
                # (the default, 2 s, would end a lease granted a moment ago within 2 s)
                assert n1.cache._expiry - n1.cache.clock() > 4.0

    anyio.run(main)


@pytest.mark.slow
@pytest.mark.parametrize("etcd", [False, True], ids=["leveldb", "etcd"])
def test_read_after_write_from_a_third_real_node(make_cluster: Any, etcd: bool) -> None:
    """Real SPEARlets: node-2 reads (and caches) each version; an overwrite on node-3 is
    followed by the new version on node-2 and node-1, large values and small ones."""
    cluster = make_cluster(nodes=3, etcd=etcd)
    n1, n2, n3 = (m.address for m in cluster.members)
    expected = b"first" * 2000
    on(n1, lambda c: c.put_object("doc", expected))
    for round_ in range(4):
        for _ in range(2):  # (the second read of a version is served from node-2's cache)
            assert on(n2, lambda c: c.get_object("doc"))[0] == expected
        value = (b"again" * 2000) if round_ % 2 else b"small %d" % round_
        written = on(n3, lambda c, value=value: c.put_object("doc", value))
        data, info = on(n2, lambda c: c.get_object("doc"))
        assert (data, info.version) == (value, written.version)
        assert on(n1, lambda c: c.get_object("doc"))[0] == value
        expected = value[:5] * 2000  # written on node-2 (its cache holds what it wrote)
        on(n2, lambda c, value=expected: c.put_object("doc", value))


@pytest.mark.slow
def test_a_real_sms_restart_is_followed_by_the_new_version(make_cluster: Any) -> None:
    """Node-2 caches a version; the SMS restarts (its watch breaks, its lease ends); an
    overwrite on node-3 after the restart is what node-2 then reads."""
    cluster = make_cluster(nodes=3)
    n1, n2, n3 = (m.address for m in cluster.members)
    on(n1, lambda c: c.put_object("doc", b"first" * 2000))
    for _ in range(2):
        assert on(n2, lambda c: c.get_object("doc"))[0] == b"first" * 2000
    sms = cluster.sms.address
    cluster.stop_member(cluster.sms)
    cluster.start_sms(listen=sms)

    def overwrite() -> Any:
        try:
            return on(n3, lambda c: c.put_object("doc", b"second" * 2000))
        except Unavailable:
            return None

    written = assert_eventually(overwrite, timeout=60, interval=0.2)

    def read() -> Any:  # (node-2's own channel to the SMS may still be reconnecting)
        try:
            return on(n2, lambda c: c.get_object("doc"))
        except Unavailable:
            return None

    data, info = assert_eventually(read, timeout=60, interval=0.2)
    assert (data, info.version) == (b"second" * 2000, written.version)  # never the old one
