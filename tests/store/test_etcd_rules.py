"""etcd behind the KV seam (store/etcd.py), rule by rule against a real etcd: the
endpoint list a user writes, what a compare-and-swap and a commit answer, listing in
either order with a limit, the revision, the namespace nobody sees.
tests/store/test_kv_contract.py runs the whole contract on LevelDB and etcd alike."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest

from spear.errors import StorageError
from spear.store.etcd import EtcdKV, parse_endpoints
from spear.store.kv import Write

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.mark.parametrize(
    ("url", "endpoints"),
    [
        ("etcd://h:1", ["h:1"]),
        ("etcd://h:1/", ["h:1"]),
        ("etcd:// h:1 , h2:22 ,", ["h:1", "h2:22"]),
        ("  etcd://h:1 ", ["h:1"]),  # (spaces before the scheme: the host is h, not etcd://h)
        ("10.0.0.1:2379,10.0.0.2:2379", ["10.0.0.1:2379", "10.0.0.2:2379"]),
        ("[::1]:2379", ["[::1]:2379"]),
    ],
)
def test_the_endpoints_a_user_writes(url: str, endpoints: list[str]) -> None:
    assert parse_endpoints(url) == endpoints


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd://", "no etcd endpoint in 'etcd://' (expected etcd://HOST:PORT[,...])"),
        (" , ", "no etcd endpoint in ' , ' (expected etcd://HOST:PORT[,...])"),
        ("etcd://:2379", "not an etcd endpoint: ':2379' (expected HOST:PORT)"),
        ("etcd://h:", "not an etcd endpoint: 'h:' (expected HOST:PORT)"),
        ("etcd://h:1,h2", "not an etcd endpoint: 'h2' (expected HOST:PORT)"),
        ("h:-1", "not an etcd endpoint: 'h:-1' (expected HOST:PORT)"),
    ],
)
def test_a_bad_endpoint_is_one_clear_error(url: str, message: str) -> None:
    with pytest.raises(StorageError) as caught:
        parse_endpoints(url)
    assert str(caught.value) == message


@pytest.fixture
async def kv(etcd_endpoint: str) -> AsyncIterator[EtcdKV]:
    store = await EtcdKV.connect(f"etcd://{etcd_endpoint}", namespace=f"r-{secrets.token_hex(4)}/")
    try:
        yield store
    finally:
        await store.aclose()


async def test_versions_are_the_clusters_revisions(kv: EtcdKV) -> None:
    before = await kv.revision()
    version = await kv.put("a", b"1")
    assert version == before + 1 == await kv.revision()
    entry = await kv.get("a")
    assert entry is not None and (entry.key, entry.value, entry.version) == ("a", b"1", version)
    swapped = await kv.compare_and_swap("a", b"2", version)
    assert swapped == version + 1 and (await kv.get("a")).version == swapped  # type: ignore[union-attr]
    assert await kv.compare_and_swap("a", b"3", version) == -1  # stale
    assert await kv.compare_and_swap("a", None, swapped) == 0  # a delete answers 0
    assert await kv.get("a") is None
    assert await kv.compare_and_swap("a", None, swapped) == -1  # gone already
    assert await kv.compare_and_swap("a", b"new", 0) > swapped  # 0: only if absent


async def test_a_commit_writes_all_or_nothing_and_answers_its_revision(kv: EtcdKV) -> None:
    first = await kv.put("x", b"1")
    rev = await kv.commit([Write("x", b"2", first), Write("y", b"y"), Write("z", b"z", 0)])
    assert rev == await kv.revision()
    assert [(e.key, e.version) for e in await kv.scan("")] == [("x", rev), ("y", rev), ("z", rev)]
    assert await kv.commit([Write("x", b"3", first), Write("w", b"w")]) == -1
    assert await kv.get("w") is None and (await kv.get("x")).value == b"2"  # type: ignore[union-attr]
    gone = await kv.commit([Write("y", None, rev), Write("z", None)])
    assert gone > rev and [e.key for e in await kv.scan("")] == ["x"]


async def test_listing_either_way_with_a_limit_and_the_namespace_unseen(kv: EtcdKV) -> None:
    for key in ("p/a", "p/b", "p/c", "q"):
        await kv.put(key, key.encode())
    assert kv.namespace.startswith("r-") and kv.client is not None
    assert [e.key for e in await kv.scan("p/")] == ["p/a", "p/b", "p/c"]
    assert [e.key for e in await kv.scan("p/", reverse=True)] == ["p/c", "p/b", "p/a"]
    assert [e.key for e in await kv.scan("p/", limit=2)] == ["p/a", "p/b"]
    assert [e.key for e in await kv.scan("p/", reverse=True, limit=1)] == ["p/c"]
    assert [e.value for e in await kv.scan("q")] == [b"q"]
    assert await kv.delete("q") is True and await kv.delete("q") is False


async def test_connecting_without_the_check_defers_errors_to_the_first_call() -> None:
    kv = await EtcdKV.connect("127.0.0.1:1", check=False, timeout_s=0.5)
    try:
        with pytest.raises(Exception, match="etcd"):
            await kv.get("k")
    finally:
        await kv.aclose()
