"""The KV contract (store/kv.py), the same tests against LevelDB and a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from typing import TYPE_CHECKING, Any

import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spear.store.etcd import EtcdKV, parse_endpoints
from spear.store.kv import KV, EventKind, WatchEvent, Write
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

BACKENDS = ["leveldb", "etcd"]


@contextlib.asynccontextmanager
async def open_kv(backend: str, etcd_endpoint: str) -> AsyncIterator[KV]:
    if backend == "leveldb":
        with tempfile.TemporaryDirectory() as tmp:
            kv: KV = LevelDBKV.open(f"{tmp}/db")
            try:
                yield kv
            finally:
                await kv.aclose()
    else:
        kv = await EtcdKV.connect([etcd_endpoint], namespace=f"t-{secrets.token_hex(6)}/")
        try:
            yield kv
        finally:
            await kv.aclose()


def _endpoint(backend: str, request: pytest.FixtureRequest) -> str:
    # etcd is started only for the etcd cases: the LevelDB ones run without it (mutation
    # testing runs them once per mutant, tools/mutation.py).
    return str(request.getfixturevalue("etcd_endpoint")) if backend == "etcd" else ""


@pytest.fixture(params=BACKENDS)
async def kv(request: pytest.FixtureRequest) -> AsyncIterator[KV]:
    async with open_kv(request.param, _endpoint(request.param, request)) as store:
        yield store


async def test_get_put_delete(kv: KV) -> None:
    assert await kv.get("a") is None
    v1 = await kv.put("a", b"one")
    assert v1 > 0
    entry = await kv.get("a")
    assert entry is not None and (entry.key, entry.value, entry.version) == ("a", b"one", v1)
    v2 = await kv.put("a", b"two")
    assert v2 > v1
    assert (await kv.get("a")).version == v2  # type: ignore[union-attr]
    assert await kv.delete("a") is True
    assert await kv.delete("a") is False
    assert await kv.get("a") is None
    v3 = await kv.put("a", b"three")
    assert v3 > v2  # a re-created key never repeats an old version


async def test_binary_values_and_empty_value(kv: KV) -> None:
    blob = bytes(range(256)) * 10
    await kv.put("bin", blob)
    await kv.put("empty", b"")
    assert (await kv.get("bin")).value == blob  # type: ignore[union-attr]
    empty = await kv.get("empty")
    assert empty is not None and empty.value == b""


async def test_compare_and_swap(kv: KV) -> None:
    assert await kv.compare_and_swap("k", b"x", 5) == -1  # absent is version 0
    assert await kv.get("k") is None
    v1 = await kv.compare_and_swap("k", b"x", 0)  # create only if absent
    assert v1 > 0
    assert await kv.compare_and_swap("k", b"y", 0) == -1
    v2 = await kv.compare_and_swap("k", b"y", v1)
    assert v2 > v1
    assert await kv.compare_and_swap("k", b"z", v1) == -1  # stale: nothing changes
    assert (await kv.get("k")).value == b"y"  # type: ignore[union-attr]
    assert await kv.compare_and_swap("k", None, v1) == -1
    assert await kv.compare_and_swap("k", None, v2) == 0  # delete at the right version
    assert await kv.get("k") is None


async def test_concurrent_cas_has_one_winner(kv: KV) -> None:
    base = await kv.put("counter", b"0")
    results = await asyncio.gather(
        *(kv.compare_and_swap("counter", str(i).encode(), base) for i in range(8))
    )
    winners = [r for r in results if r > 0]
    assert len(winners) == 1 and results.count(-1) == 7


async def test_commit_is_all_or_nothing(kv: KV) -> None:
    va = await kv.put("a", b"1")
    rev = await kv.commit([Write("a", b"2", va), Write("b", b"new", 0), Write("c", b"any")])
    assert rev > va
    got = {k: await kv.get(k) for k in "abc"}
    assert {k: (e.value, e.version) for k, e in got.items() if e} == {
        "a": (b"2", rev),
        "b": (b"new", rev),
        "c": (b"any", rev),
    }
    # One stale expectation and nothing changes, not even the unconditional write.
    assert await kv.commit([Write("a", b"3", rev), Write("b", b"x", va), Write("d", b"d")]) == -1
    assert (await kv.get("a")).value == b"2"  # type: ignore[union-attr]
    assert (await kv.get("b")).value == b"new"  # type: ignore[union-attr]
    assert await kv.get("d") is None
    # Deletes, conditional and not.
    rev2 = await kv.commit([Write("a", None, rev), Write("c", None), Write("d", b"d", 0)])
    assert rev2 > rev
    assert await kv.get("a") is None and await kv.get("c") is None
    assert (await kv.get("d")).version == rev2  # type: ignore[union-attr]


async def test_commit_many_commits_each_on_its_own(kv: KV) -> None:
    va = await kv.put("a", b"1")
    revs = await kv.commit_many(
        [
            [Write("a", b"2", va), Write("m/1", b"x")],
            [Write("a", b"3", va), Write("m/2", b"y")],  # stale once the first is made
            [Write("m/3", b"z", 0)],
            [],
        ]
    )
    assert revs[0] > va and revs[1] == -1 and revs[2] > revs[0]
    assert [e.key for e in await kv.scan("m/")] == ["m/1", "m/3"]
    assert (await kv.get("a")).value == b"2"  # type: ignore[union-attr]
    assert await kv.commit_many([]) == []


async def test_commit_later_is_readable_at_once_and_written_by_written(kv: KV) -> None:
    # LevelDB stages it for the next write; etcd commits it at once. Either way it reads
    # back at once, `written` makes it durable, and nothing was lost.
    version, staged = await kv.commit_later([Write("a", b"1"), Write("b", b"2")])
    assert version > 0
    assert [e.value if e else None for e in await kv.get_many(["a", "b"])] == [b"1", b"2"]
    await staged.written()
    assert not staged.lost()
    refused, unstaged = await kv.commit_later([Write("a", b"x", expected_version=0)])
    assert refused == -1 and not unstaged.lost()  # (a version that did not match)
    await unstaged.written()
    assert (await kv.get("a")).value == b"1"  # type: ignore[union-attr]


async def test_get_many_reads_each_key_in_order(kv: KV) -> None:
    va = await kv.put("a", b"1")
    vc = await kv.put("c", b"3")
    keys = [f"many/{i:03}" for i in range(300)]  # (more than one etcd transaction holds)
    await kv.commit([Write(k, k.encode()) for k in keys[::7]])
    found = await kv.get_many(["c", "b", "a", "c", *keys])
    assert [(e.key, e.value, e.version) if e else None for e in found[:4]] == [
        ("c", b"3", vc),
        None,
        ("a", b"1", va),
        ("c", b"3", vc),
    ]
    assert [e.key if e else None for e in found[4:]] == [
        k if i % 7 == 0 else None for i, k in enumerate(keys)
    ]
    assert await kv.get_many([]) == []


async def test_concurrent_commits_have_one_winner(kv: KV) -> None:
    base = await kv.put("x", b"0")
    results = await asyncio.gather(
        *(kv.commit([Write("x", b"%d" % i, base), Write(f"w{i}", b"")]) for i in range(8))
    )
    winner = [i for i, r in enumerate(results) if r > 0]
    assert len(winner) == 1 and results.count(-1) == 7
    assert [e.key for e in await kv.scan("w")] == [f"w{winner[0]}"]


async def test_scan_prefix_order_reverse_limit(kv: KV) -> None:
    for key in ["b/2", "a/1", "b/1", "b/10", "c", "b"]:
        await kv.put(key, key.encode())
    assert [e.key for e in await kv.scan("b/")] == ["b/1", "b/10", "b/2"]
    assert [e.key for e in await kv.scan("b/", reverse=True)] == ["b/2", "b/10", "b/1"]
    assert [e.key for e in await kv.scan("b/", limit=2)] == ["b/1", "b/10"]
    assert [e.key for e in await kv.scan("b/", reverse=True, limit=1)] == ["b/2"]
    assert [e.value for e in await kv.scan("b")] == [b"b", b"b/1", b"b/10", b"b/2"]
    assert await kv.scan("zzz") == []
    assert len(await kv.scan("")) == 6


@contextlib.asynccontextmanager
async def _synced_watch(kv: KV, prefix: str) -> AsyncIterator[asyncio.Queue[WatchEvent]]:
    """A live watch on `prefix` feeding a queue: a marker is written until it shows up."""
    queue: asyncio.Queue[WatchEvent] = asyncio.Queue()

    async def pump() -> None:
        async for event in kv.watch(prefix):
            await queue.put(event)

    reader = asyncio.ensure_future(pump())
    try:
        marker = prefix + "~sync"
        for _ in range(500):
            if reader.done():  # the watch ended or failed: say so now, not after 25 s
                reader.result()
                raise AssertionError("the watch ended")
            await kv.put(marker, b"")
            try:
                first = await asyncio.wait_for(queue.get(), timeout=0.05)
            except TimeoutError:
                continue
            assert first.key == marker
            break
        else:
            raise AssertionError("the watch never became live")
        final = await kv.put(marker, b"last")
        while (event := await asyncio.wait_for(queue.get(), 5)).version != final:
            assert event.key == marker
        yield queue
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_watch_sees_changes_in_order(kv: KV) -> None:
    async with _synced_watch(kv, "w/") as queue:
        v1 = await kv.put("w/a", b"1")
        await kv.put("other", b"not watched")
        v2 = await kv.compare_and_swap("w/b", b"2", 0)
        assert await kv.delete("w/a")
        events = [await asyncio.wait_for(queue.get(), 5) for _ in range(3)]
    assert [(e.kind, e.key) for e in events] == [
        (EventKind.PUT, "w/a"),
        (EventKind.PUT, "w/b"),
        (EventKind.DELETE, "w/a"),
    ]
    assert (events[0].value, events[0].version) == (b"1", v1)
    assert (events[1].value, events[1].version) == (b"2", v2)
    assert events[2].version > 0
    assert queue.empty()


# -- the version rules against a model --------------------------------------------------

_KEYS = st.sampled_from(["a", "b", "a/x"])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _KEYS, st.binary(max_size=8)),
        st.tuples(st.just("delete"), _KEYS),
        st.tuples(st.just("cas"), _KEYS, st.none() | st.binary(max_size=8), st.integers(0, 3)),
        st.tuples(st.just("cas_current"), _KEYS, st.none() | st.binary(max_size=8)),
    ),
    max_size=25,
)


async def _check_against_model(kv: KV, ops: list[tuple[Any, ...]]) -> None:
    model: dict[str, tuple[bytes, int]] = {}
    last = 0

    def fresh(version: int) -> None:
        nonlocal last
        assert version > last, "versions only grow"
        last = version

    for op in ops:
        if op[0] == "put":
            version = await kv.put(op[1], op[2])
            fresh(version)
            model[op[1]] = (op[2], version)
        elif op[0] == "delete":
            assert await kv.delete(op[1]) == (op[1] in model)
            model.pop(op[1], None)
        else:
            key, value = op[1], op[2]
            current = model.get(key, (b"", 0))[1]
            # a small integer is almost never the current version: the stale-write path
            expected = current if op[0] == "cas_current" else op[3]
            result = await kv.compare_and_swap(key, value, expected)
            if expected != current:
                assert result == -1
            elif value is None:
                assert result == 0
                model.pop(key, None)
            else:
                fresh(result)
                model[key] = (value, result)
        for key in ("a", "b", "a/x"):
            entry = await kv.get(key)
            got = None if entry is None else (entry.value, entry.version)
            assert got == model.get(key)
    scanned = {e.key: (e.value, e.version) for e in await kv.scan("a")}
    assert scanned == {k: v for k, v in model.items() if k.startswith("a")}


@pytest.mark.parametrize("backend", BACKENDS)
@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=_OPS)
def test_cas_and_versions_follow_the_model(
    backend: str, request: pytest.FixtureRequest, ops: list[tuple[Any, ...]]
) -> None:
    endpoint = _endpoint(backend, request)

    async def body() -> None:
        async with open_kv(backend, endpoint) as store:
            await _check_against_model(store, ops)

    asyncio.run(body())


# -- etcd specifics -----------------------------------------------------------------------


def test_parse_endpoints() -> None:
    assert parse_endpoints("etcd://h:1,h2:2") == ["h:1", "h2:2"]
    assert parse_endpoints("127.0.0.1:2379") == ["127.0.0.1:2379"]
    from spear.errors import StorageError

    for bad in ("etcd://", "etcd://host", "etcd://h:port"):
        with pytest.raises(StorageError):
            parse_endpoints(bad)


async def test_namespaces_keep_clusters_apart(etcd_endpoint: str) -> None:
    one = await EtcdKV.connect([etcd_endpoint], namespace="ns-one/")
    two = await EtcdKV.connect([etcd_endpoint], namespace="ns-two/")
    try:
        await one.put("k", b"1")
        assert await two.get("k") is None
        assert [e.key for e in await one.scan("")] == ["k"]
    finally:
        await one.delete("k")
        await one.aclose()
        await two.aclose()


async def test_unreachable_etcd_is_unavailable() -> None:
    import socket

    from spear.errors import Unavailable

    with socket.socket() as s:  # a port with nothing listening: bound, never listened on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(Unavailable):
            await EtcdKV.connect([f"127.0.0.1:{port}"], timeout_s=2)
