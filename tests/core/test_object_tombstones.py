"""Tombstones of deleted objects (core/object_index.py's docstring), on LevelDB and a real
etcd with a clock we move: what a tombstone says and whom it names, across two deletes of
one key; that every copy it buries is told so, whoever announces it and among other keys;
when a holder is struck off at its collections; and that a tombstone is written with its
delete or not at all when another change races it."""
# ruff: noqa: F811  (the kv fixture imported from test_sms.py is used as an argument)

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from test_object_index_rules import RacingKV
from test_sms import Clock, kv  # noqa: F401 - the KV fixture (LevelDB and etcd), the clock

from spear.core.object_index import GONE, INDEX, ObjectIndex

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from spear.store.kv import KV


async def _stone(kv: KV, key: str = "k") -> dict[str, Any] | None:
    entry = await kv.get(GONE + key)
    return None if entry is None else dict(orjson.loads(entry.value))


def _live(*nodes: str) -> tuple[set[str], Callable[[], Awaitable[set[str]]]]:
    live = set(nodes)

    async def live_nodes() -> set[str]:
        return set(live)

    return live, live_nodes


async def test_a_second_delete_of_a_key_adds_its_holders_to_the_first_ones_tombstone(
    kv: KV,
) -> None:
    clock = Clock()
    index = ObjectIndex(kv, clock=clock)
    first = await index.commit("k", "node-1", "a1", 5, None)
    await index.hold("k", "node-2", "a2", first.version)
    await index.change("k", "delete", asker="node-1")
    assert await _stone(kv) == {"version": first.version, "at": clock.now, "holders": ["node-2"]}
    # Created again, held elsewhere, deleted again before node-2 came back.
    clock.now += 10
    second = await index.commit("k", "node-3", "a3", 5, None)
    await index.hold("k", "node-4", "a4", second.version)
    await index.change("k", "force-delete", asker="node-3")
    assert await _stone(kv) == {
        "version": second.version,
        "at": clock.now,
        "holders": ["node-2", "node-4"],
    }
    # Each copy, of either version, is stale; each holder is struck off as it says so.
    assert await index.announce("node-4", "a4", [("k", second.version, 5)]) == (["k"], [])
    assert (await _stone(kv) or {})["holders"] == ["node-2"]
    assert await index.announce("node-2", "a2", [("k", first.version, 5)]) == (["k"], [])
    assert await _stone(kv) is None


async def test_a_collected_objects_tombstone_buries_the_version_collected(kv: KV) -> None:
    clock = Clock()
    _, live_nodes = _live("node-1")
    index = ObjectIndex(kv, live_nodes, clock=clock)
    rec = await index.commit("k", "node-1", "a1", 5, None)
    await index.hold("k", "node-3", "a3", rec.version)
    clock.now += 100
    [collected] = await index.collect(50, asker="node-1")
    assert collected.version == rec.version
    holders = ["node-1", "node-3"]  # (live or not: a live one may restart before its sweep)
    assert await _stone(kv) == {"version": rec.version, "at": clock.now, "holders": holders}
    # node-3, away at the collection, comes back with its copy: stale, and struck off.
    assert await index.announce("node-3", "a3", [("k", rec.version, 5)]) == (["k"], [])
    assert (await _stone(kv) or {})["holders"] == ["node-1"]
    # node-1's sweep dropped its copy, and says so with its next collection.
    await index.collect(50, asker="node-1", dropped=[("k", rec.version)])
    assert await _stone(kv) is None
    assert await kv.get(INDEX + "k") is None


async def test_a_buried_copy_is_stale_whoever_announces_it_and_the_other_keys_go_on(
    kv: KV,
) -> None:
    index = ObjectIndex(kv)
    rec = await index.commit("k", "node-1", "a1", 5, None)
    await index.hold("k", "node-2", "a2", rec.version)
    await index.change("k", "delete", asker="node-1")
    before = await kv.get(GONE + "k")
    kept = await index.commit("j", "node-1", "a1", 3, None)
    # node-5, never named in the tombstone, held a copy too (fetched, its hold not entered).
    held = [("k", rec.version, 5), ("j", kept.version, 3), ("new", 1, 2)]
    stale, adopted = await index.announce("node-5", "a5", held)
    assert stale == ["k"] and [key for key, _ in adopted] == ["new"]
    assert (await index.lookup("j")).holder_names() == ("node-1", "node-5")
    assert await kv.get(GONE + "k") == before  # (not named: the tombstone is not rewritten)


async def test_a_collection_racing_a_change_deletes_nothing_and_buries_nothing(kv: KV) -> None:
    clock = Clock()
    _, live_nodes = _live("node-1")
    index = ObjectIndex(kv, live_nodes, clock=clock)
    rec = await index.commit("k", "node-1", "a1", 5, None)
    await index.hold("k", "node-3", "a3", rec.version)  # (away: the delete would bury it)
    clock.now += 100
    # A reference is taken just after the collection read the entry as free.
    racing = ObjectIndex(
        RacingKV(kv, "get", GONE + "k", 1, lambda: index.change("k", "ref")),  # type: ignore[arg-type]
        live_nodes,
        clock=clock,
    )
    assert await racing.collect(50) == []
    found = await index.lookup("k")
    assert (found.refs, found.version) == (1, rec.version)
    assert await _stone(kv) is None


async def test_a_delete_racing_a_hold_buries_the_new_holders_copy_too(kv: KV) -> None:
    index = ObjectIndex(kv)
    rec = await index.commit("k", "node-1", "a1", 5, None)
    await index.hold("k", "node-2", "a2", rec.version)
    # node-3's fetched copy is entered just after the delete read the entry.
    racing = ObjectIndex(
        RacingKV(kv, "get", GONE + "k", 1, lambda: index.hold("k", "node-3", "a3", rec.version)),  # type: ignore[arg-type]
    )
    _, deleted = await racing.change("k", "delete", asker="node-1")
    assert deleted
    assert (await _stone(kv) or {})["holders"] == ["node-2", "node-3"]
    assert await index.announce("node-3", "a3", [("k", rec.version, 5)]) == (["k"], [])


async def test_a_holder_is_struck_off_once_it_says_it_dropped_that_version_or_a_later_one(
    kv: KV,
) -> None:
    clock = Clock()
    _, live_nodes = _live("node-1", "node-3", "node-4", "node-5")
    index = ObjectIndex(kv, live_nodes, clock=clock)
    older = await index.commit("k", "node-1", "a1", 5, None)
    rec = await index.commit("k", "node-1", "a1", 5, older.version)
    for node in ("node-3", "node-4"):
        await index.hold("k", node, f"a{node[-1]}", rec.version)
    await index.change("k", "delete", asker="node-1")
    stone = await kv.get(GONE + "k")
    for asker, dropped in [
        ("node-3", []),  # a sweep (however many) that says nothing of the copy
        ("node-3", []),
        ("node-3", [("k", older.version)]),  # an earlier version: it may hold the later
        ("node-3", [("other", rec.version)]),
        ("node-5", [("k", rec.version)]),  # not named in it
        (None, [("k", rec.version)]),  # a collection nobody asked for
    ]:
        await index.collect(50, asker=asker, dropped=dropped)
    assert await kv.get(GONE + "k") == stone  # nobody struck, the tombstone not rewritten
    await index.collect(50, asker="node-3", dropped=[("k", rec.version)])
    assert (await _stone(kv) or {})["holders"] == ["node-4"]
    await index.collect(50, asker="node-4", dropped=[("k", rec.version + 7)])  # (a later one)
    assert await _stone(kv) is None


async def test_a_holder_live_at_a_collection_that_restarts_before_its_sweep_finds_it_stale(
    kv: KV,
) -> None:
    clock = Clock()
    _, live_nodes = _live("node-1", "node-2")
    index = ObjectIndex(kv, live_nodes, clock=clock)
    rec = await index.commit("k", "node-1", "a1", 5, None)
    await index.hold("k", "node-2", "a2", rec.version)
    clock.now += 100
    assert [r.key for r in await index.collect(50, asker="node-1")] == ["k"]
    # node-2 restarts before its next sweep, and announces the copy it still has.
    assert await index.announce("node-2", "a2", [("k", rec.version, 5)]) == (["k"], [])
    assert await kv.get(INDEX + "k") is None  # not adopted again


async def test_an_entry_with_only_its_size_is_deleted_and_collected_with_no_tombstone(
    kv: KV,
) -> None:
    """An entry with no holders (written by hand, or by an older SMS): nobody may hold a
    copy, so its delete or collection leaves no tombstone."""
    clock = Clock()
    _, live_nodes = _live("node-1")
    index = ObjectIndex(kv, live_nodes, clock=clock)
    for key in ("deleted", "collected"):
        await kv.put(INDEX + key, b'{"size": 3}')
    _, deleted = await index.change("deleted", "delete", asker="node-1")
    assert deleted
    assert [r.key for r in await index.collect(50, asker="node-1")] == ["collected"]
    assert await kv.scan(INDEX) == [] and await kv.scan(GONE) == []
