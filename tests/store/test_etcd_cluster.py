"""A real 3-member etcd cluster: the KV client fails over when a member dies, and the
member, restarted on the same address with the same data, rejoins."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest

from spear.errors import InvalidArgument, Unavailable
from spear.store.etcd import EtcdKV
from spear.store.etcd_server import EtcdCluster, EtcdMember, local_members

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def random_loopback_hosts(count: int) -> list[str]:
    """`count` addresses in a random 127.x.y.0 block: etcd's own ports stay free of clashes
    with other tests (127.0.0.0/8 is all loopback on Linux)."""
    block = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"
    return [f"{block}.{i + 1}" for i in range(count)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    etcd = EtcdCluster(tmp_path / "etcd", local_members(3, hosts=random_loopback_hosts(3)))
    etcd.start()
    try:
        yield etcd
    finally:
        etcd.stop()


async def put_surely(kv: EtcdKV, key: str, value: bytes, within_s: float = 20) -> int:
    """Put, resolving an unknown outcome as a careful caller does: a write in flight when
    the raft leader died times out (Unavailable; it may or may not have been applied), so
    read the key back and write again only if it is not there (values here are unique)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await kv.put(key, value)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            entry = await kv.get(key)
            if entry is not None and entry.value == value:
                return entry.version


async def _member_sees(endpoint: str, key: str) -> bytes | None:
    """`key` as one member alone serves it (a linearizable read through that member)."""
    kv = await EtcdKV.connect([endpoint], namespace="c/", timeout_s=5)
    try:
        entry = await kv.get(key)
        return entry.value if entry else None
    finally:
        await kv.aclose()


async def test_losing_one_member_changes_nothing_and_it_rejoins(cluster: EtcdCluster) -> None:
    kv = await EtcdKV.connect(cluster.endpoints, namespace="c/", timeout_s=10)
    try:
        await kv.put("before", b"1")
        first = kv.client.current
        index = cluster.endpoints.index(first)
        assert first == cluster.endpoints[0]  # the client talks to one member at a time

        cluster.processes[index].kill()  # the very member the client uses
        # A read is retried anywhere: it fails over at once. (A write already sent on the
        # dead connection would get Unavailable, "outcome unknown", as with etcd's own
        # client: it may have been applied. The next write goes to a live member.)
        started = time.monotonic()
        assert (await kv.get("before")).value == b"1"  # type: ignore[union-attr]
        failover_s = time.monotonic() - started
        assert kv.client.current != first
        started = time.monotonic()
        version = await put_surely(kv, "during", b"2")  # slow only if it was raft's leader
        write_s = time.monotonic() - started
        assert version > 0
        assert await kv.compare_and_swap("during", b"3", version) > version
        assert [e.key for e in await kv.scan("")] == ["before", "during"]
        assert failover_s < 5, f"a read's failover took {failover_s:.2f}s"
        assert write_s < 15, f"the first write after the loss took {write_s:.2f}s"
        started = time.monotonic()
        for i in range(20):
            await kv.put(f"after/{i}", b"x")  # the cluster has a leader again: no retry
        assert time.monotonic() - started < 5

        # Back on the same address and data dir: it rejoins and catches up.
        assert cluster.start_member(index) == first
        assert await _member_sees(first, "during") == b"3"
        assert await _member_sees(first, "before") == b"1"
    finally:
        await kv.aclose()


async def test_a_watch_resumes_on_another_member_without_loss(cluster: EtcdCluster) -> None:
    kv = await EtcdKV.connect(cluster.endpoints, namespace="w/")
    writer = await EtcdKV.connect(cluster.endpoints[1:], namespace="w/")
    seen: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        async for event in kv.watch("k/"):
            await seen.put(event)

    reader = asyncio.ensure_future(pump())
    try:
        for _ in range(200):  # until the watch is live: a marker shows up
            await writer.put("k/sync", b"")
            try:
                await asyncio.wait_for(seen.get(), 0.05)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("the watch never became live")
        while not seen.empty():
            seen.get_nowait()
        cluster.processes[0].kill()  # the member holding the watch
        versions = [await put_surely(writer, f"k/{i}", str(i).encode()) for i in range(5)]
        events: list[Any] = []
        while len(events) < 5:  # (a late marker of an earlier try may still come first)
            event = await asyncio.wait_for(seen.get(), 20)
            if event.key != "k/sync":
                events.append(event)
        assert [e.key for e in events] == [f"k/{i}" for i in range(5)]
        assert [e.version for e in events] == versions
        assert seen.empty()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await writer.aclose()
        await kv.aclose()


async def test_losing_quorum_is_unavailable_then_recovers(cluster: EtcdCluster) -> None:
    kv = await EtcdKV.connect(cluster.endpoints, namespace="q/", timeout_s=2)
    try:
        await kv.put("k", b"1")
        cluster.processes[1].kill()
        cluster.processes[2].kill()
        with pytest.raises(Unavailable):
            await kv.put("k", b"2")
        for index in (1, 2):
            cluster.processes[index].spawn()
        deadline = time.monotonic() + 30
        for index in (1, 2):
            cluster.processes[index].wait_serving(deadline)
        assert (await kv.get("k")).value in (b"1", b"2")  # type: ignore[union-attr]
        assert await kv.put("k", b"3") > 0
    finally:
        await kv.aclose()


def test_member_layouts() -> None:
    assert [m.endpoint for m in local_members()] == [
        "127.0.0.1:2379",
        "127.0.0.1:22379",
        "127.0.0.1:32379",
    ]
    hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert [m.peer_url for m in local_members(3, hosts=hosts)] == [
        f"http://{h}:2380" for h in hosts
    ]
    for bad in (lambda: local_members(2), lambda: local_members(3, hosts=["a"])):
        with pytest.raises(InvalidArgument):
            bad()
    with pytest.raises(InvalidArgument):
        EtcdMember("m", client_port=2379, peer_port=2379)
    with pytest.raises(InvalidArgument):
        EtcdCluster(__import__("pathlib").Path("/nonexistent"), [EtcdMember("m"), EtcdMember("m")])


async def test_an_election_survives_losing_a_member(cluster: EtcdCluster) -> None:
    from spear.store.etcd_election import Candidate, Lease, leader_value

    a = await EtcdKV.connect(cluster.endpoints, namespace="unused/")
    b = await EtcdKV.connect(cluster.endpoints, namespace="unused/")
    try:
        # etcd extends every lease when raft elects a new leader, but the holder must
        # refresh through another member before its own safety margin runs out: a TTL of
        # several raft election timeouts (1 s here), as etcd advises.
        async with Lease.keep(a.client, 5) as lease_a, Lease.keep(b.client, 5) as lease_b:
            leader = Candidate(a.client, "sms", b"A", lease_a)
            follower = Candidate(b.client, "sms", b"B", lease_b)
            async with leader:
                await asyncio.wait_for(leader.elected.wait(), 5)
                async with follower:
                    cluster.processes[0].kill()  # both clients' member; B's campaign waits there
                    # The leader's lease refreshes go to another member: it keeps leading.
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(follower.elected.wait(), 6)
                    assert leader.leading and not leader.deposed.is_set()
                    assert await leader_value(b.client, "sms") == b"A"
                    # B's campaign moved to a live member too: it takes over when A goes.
                    await lease_a.revoke()
                    await asyncio.wait_for(follower.elected.wait(), 5)
                    assert await leader_value(a.client, "sms") == b"B"
    finally:
        await a.aclose()
        await b.aclose()


def test_start_etcd_keeps_addresses_and_data_across_restarts(tmp_path: Path) -> None:
    import asyncio as aio

    from spear.store.etcd_server import start_etcd

    hosts = random_loopback_hosts(3)
    etcd = start_etcd(tmp_path / "etcd", 3, hosts=hosts)
    try:
        assert isinstance(etcd, EtcdCluster) and len(etcd.pids) == 3
        url = etcd.url
        assert url == "etcd://" + ",".join(f"{h}:2379" for h in hosts)

        async def put_then_get(value: bytes | None) -> bytes | None:
            kv = await EtcdKV.connect(url, namespace="r/")
            try:
                if value is not None:
                    await kv.put("k", value)
                entry = await kv.get("k")
                return entry.value if entry else None
            finally:
                await kv.aclose()

        assert aio.run(put_then_get(b"kept")) == b"kept"
        etcd.stop()
        assert etcd.pids == []
        etcd = start_etcd(tmp_path / "etcd", 3, hosts=hosts)  # the whole cluster again
        assert etcd.url == url
        assert aio.run(put_then_get(None)) == b"kept"
    finally:
        etcd.stop()
    with pytest.raises(InvalidArgument):
        start_etcd(tmp_path / "x", 3, ephemeral=True)
