"""A watch on etcd (store/etcd.py) when its stream breaks: it resumes on another member
from the revision after the last one it delivered (or, before any change, from the
revision it started at), so no change is lost or repeated; history compacted meanwhile
ends it with a clear error; no member reachable ends it as Unavailable.

The member is a relay (a real TCP relay on loopback, in this process) in front of the
module's real etcd: the test holds it (etcd's answers stop there, as from a member cut
off) and cuts it (every connection dropped, new ones refused), and the watch's second
endpoint is that etcd itself. A 3-member cluster does the same in test_etcd_cluster.py,
seconds per test; this takes milliseconds, and mutation testing runs it once per mutant.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from typing import TYPE_CHECKING

import pytest

from spear.errors import StorageError, Unavailable
from spear.store._etcd_gen import rpc_pb2 as pb
from spear.store.etcd import EtcdKV
from spear.store.etcd_server import EtcdProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from spear.store.kv import WatchEvent

_WAIT_S = 20.0  # bounded waits: generous for a loaded machine, short of pytest's timeout
_DATA = 0  # HTTP/2 frame type of a DATA frame: one gRPC message (a watch's answer)


class Relay:
    """A TCP relay to `target` that counts the gRPC messages it passes back, and that a
    test can hold (stop passing etcd's answers on) and cut (drop every connection and
    refuse new ones): a member that becomes unreachable."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._passing = asyncio.Event()
        self._passing.set()
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.answers = 0  # DATA frames passed back to the client

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def hold(self) -> None:
        self._passing.clear()

    def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        etcd_reader, etcd_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, etcd_writer]
        for task in (self._pass(reader, etcd_writer, False), self._pass(etcd_reader, writer, True)):
            self._tasks.add(asyncio.ensure_future(task))

    async def _pass(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answers: bool
    ) -> None:
        frames = bytearray()  # (etcd -> client: whole HTTP/2 frames, no preface)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if answers:
                    await self._passing.wait()
                writer.write(data)
                await writer.drain()
                if answers:
                    frames += data
                    while len(frames) >= 9 and len(frames) >= 9 + int.from_bytes(frames[:3]):
                        length = int.from_bytes(frames[:3])
                        self.answers += frames[3] == _DATA and length > 0
                        del frames[: 9 + length]


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)  # polling the relay's counter, with a deadline


class Events:
    """A watch read in the background: its events one by one, or the error that ended it."""

    def __init__(self, kv: EtcdKV, prefix: str) -> None:
        self._queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._pump(kv, prefix))

    async def _pump(self, kv: EtcdKV, prefix: str) -> None:
        async for event in kv.watch(prefix):
            await self._queue.put(event)

    async def next(self) -> WatchEvent:
        getting = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait(
            {getting, self.reader}, timeout=_WAIT_S, return_when="FIRST_COMPLETED"
        )
        if getting in done:
            return getting.result()
        getting.cancel()
        if self.reader in done:
            self.reader.result()  # (raises what ended the watch)
            raise AssertionError("the watch ended")
        raise AssertionError("no event in time")

    def pending(self) -> int:
        return self._queue.qsize()


@contextlib.asynccontextmanager
async def watching(kv: EtcdKV, prefix: str) -> AsyncIterator[Events]:
    events = Events(kv, prefix)
    try:
        yield events
    finally:
        events.reader.cancel()
        await asyncio.gather(events.reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def through_a_relay(etcd_endpoint: str) -> AsyncIterator[tuple[EtcdKV, EtcdKV, Relay]]:
    """(a writer on etcd, a watcher on [relay, etcd], the relay), in a namespace of their own.
    The watcher makes no call before its watch: the relay's first answer is the watch's."""
    namespace = f"watch-{secrets.token_hex(4)}/"
    relay = Relay(etcd_endpoint)
    writer = await EtcdKV.connect([etcd_endpoint], namespace=namespace)
    watcher = await EtcdKV.connect(
        [await relay.start(), etcd_endpoint], namespace=namespace, check=False
    )
    try:
        yield writer, watcher, relay
    finally:
        relay.cut()
        await watcher.aclose()
        await writer.aclose()


async def test_a_watch_broken_before_any_change_resumes_from_where_it_started(
    etcd_endpoint: str,
) -> None:
    async with through_a_relay(etcd_endpoint) as (writer, watcher, relay):
        await writer.put("k/old", b"written before the watch")
        async with watching(watcher, "k/") as events:
            await until(lambda: relay.answers >= 1)  # etcd made the watch: from here on
            relay.hold()
            during = [await writer.put(f"k/{i}", b"%d" % i) for i in range(2)]
            relay.cut()  # the watch moves to etcd itself, from the revision it started at
            got = [await events.next() for _ in during]
            assert [(e.key, e.value, e.version) for e in got] == [
                ("k/0", b"0", during[0]),
                ("k/1", b"1", during[1]),
            ]
            after = await writer.put("k/after", b"")
            latest = await events.next()  # nothing repeated, nothing from before the watch
            assert (latest.key, latest.version) == ("k/after", after)
            assert events.pending() == 0


async def test_a_watch_broken_after_changes_resumes_after_the_last_it_delivered(
    etcd_endpoint: str,
) -> None:
    async with through_a_relay(etcd_endpoint) as (writer, watcher, relay):
        async with watching(watcher, "k/") as events:
            await until(lambda: relay.answers >= 1)
            first = await writer.put("k/first", b"seen")
            seen = await events.next()
            assert (seen.key, seen.version) == ("k/first", first)
            relay.hold()
            during = [await writer.put(f"k/{i}", b"%d" % i) for i in range(2)]
            await writer.delete("k/first")
            relay.cut()
            got = [await events.next() for _ in range(3)]
            assert [(e.kind.name, e.key, e.value) for e in got] == [
                ("PUT", "k/0", b"0"),
                ("PUT", "k/1", b"1"),
                ("DELETE", "k/first", b""),  # (a delete has no value)
            ]
            assert [e.version for e in got[:2]] == during and got[2].version > during[1]
            after = await writer.put("k/after", b"")
            latest = await events.next()
            assert (latest.key, latest.version) == ("k/after", after)
            assert events.pending() == 0


async def test_a_watch_that_cannot_resume_from_compacted_history_says_so(
    etcd_endpoint: str,
) -> None:
    async with through_a_relay(etcd_endpoint) as (writer, watcher, relay):
        async with watching(watcher, "k/") as events:
            await until(lambda: relay.answers >= 1)
            first = await writer.put("k/first", b"seen")
            assert (await events.next()).version == first
            relay.hold()
            await writer.put("k/0", b"missed")
            compacted = await writer.put("k/1", b"missed")
            await writer.client.unary(
                "compact",
                "/etcdserverpb.KV/Compact",
                pb.CompactionRequest(revision=compacted),
                pb.CompactionResponse,
                idempotent=True,
            )
            relay.cut()  # resuming from k/0's revision, which etcd no longer has
            with pytest.raises(StorageError) as caught:
                await events.next()
    assert str(caught.value) == (f"etcd watch canceled: history compacted to revision {compacted}")


async def test_a_watch_with_no_member_to_reach_is_unavailable() -> None:
    with socket.socket() as dead:  # bound, never listening: connections are refused
        dead.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{dead.getsockname()[1]}"
        kv = await EtcdKV.connect([endpoint], check=False, timeout_s=0.5)
        try:
            with pytest.raises(Unavailable) as caught:
                async for _ in kv.watch("k/"):
                    pass
        finally:
            await kv.aclose()
    message = str(caught.value)
    assert message.startswith("etcd watch lost every endpoint: cannot connect ("), message
    assert "\n" not in message


async def test_watching_a_closed_kv_says_so(etcd_endpoint: str) -> None:
    kv = await EtcdKV.connect([etcd_endpoint], namespace="closed-watch/")
    await kv.aclose()
    with pytest.raises(StorageError) as caught:
        async for _ in kv.watch("k/"):
            pass
    assert str(caught.value) == "the etcd connection is closed"


async def _enable_auth(kv: EtcdKV) -> None:
    """Turn on etcd's own authentication (as `etcdctl user add root; auth enable` does)."""
    for route, request, answer in [
        ("RoleAdd", pb.AuthRoleAddRequest(name="root"), pb.AuthRoleAddResponse),
        ("UserAdd", pb.AuthUserAddRequest(name="root", password="pw"), pb.AuthUserAddResponse),
        (
            "UserGrantRole",
            pb.AuthUserGrantRoleRequest(user="root", role="root"),
            pb.AuthUserGrantRoleResponse,
        ),
        ("AuthEnable", pb.AuthEnableRequest(), pb.AuthEnableResponse),
    ]:
        await kv.client.unary(
            route, f"/etcdserverpb.Auth/{route}", request, answer, idempotent=False
        )


async def test_a_watch_etcd_refuses_says_why(tmp_path: Path) -> None:
    # An etcd with its own authentication on, which spear does not speak: etcd makes the
    # watch and cancels it at once with its reason (no compaction involved).
    with EtcdProcess(tmp_path / "etcd") as etcd:
        kv = await EtcdKV.connect([etcd.endpoint or ""])
        try:
            await _enable_auth(kv)
            with pytest.raises(StorageError) as caught:
                async for _ in kv.watch("k/"):
                    pass
        finally:
            await kv.aclose()
    # (etcd's reason, word for word: 3.5 says "rpc error: ... etcdserver: user name is empty")
    message = str(caught.value)
    assert message.startswith("etcd watch canceled: ") and "etcdserver: " in message, message
    assert "compacted" not in message and "\n" not in message
