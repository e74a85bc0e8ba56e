"""The SMS's object index (core/object_index.py) on LevelDB and a real etcd: versions by
compare-and-swap, holders per version, lifecycle changes, announce and collect."""
# ruff: noqa: F811  (the kv fixture imported from test_sms.py is used as an argument)

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import orjson
import pytest
from test_sms import Clock, kv  # noqa: F401 - the KV fixture (LevelDB and etcd), the clock

from spear.core.object_index import TOMBSTONE_KEEP_S, ObjectIndex
from spear.errors import Conflict, InvalidArgument, NotFound

if TYPE_CHECKING:
    from spear.store.kv import KV


async def test_a_commit_is_a_compare_and_swap_and_names_its_writer(kv: KV) -> None:
    index = ObjectIndex(kv)
    first = await index.commit("k", "node-1", "a1", 5, 0)
    assert first.version > 0 and first.holder_names() == ("node-1",)
    with pytest.raises(Conflict, match="is at version"):
        await index.commit("k", "node-2", "a2", 5, 0)  # create-only, but it exists
    with pytest.raises(Conflict):
        await index.commit("k", "node-2", "a2", 5, first.version + 1)
    with pytest.raises(Conflict, match="does not exist"):
        await index.commit("absent", "node-2", "a2", 5, 7)
    second = await index.commit("k", "node-2", "a2", 9, first.version)
    assert second.version > first.version and second.holder_names() == ("node-2",)
    assert (await index.lookup("k")).size == 9
    with pytest.raises(NotFound):
        await index.lookup("absent")


async def test_of_many_same_version_writers_exactly_one_wins(kv: KV) -> None:
    index = ObjectIndex(kv)
    base = await index.commit("k", "node-0", "a0", 1, None)
    outcomes: list[object] = []

    async def write(i: int) -> None:
        try:
            outcomes.append(await index.commit("k", f"node-{i}", f"a{i}", 1, base.version))
        except Conflict as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(1, 9):
            tg.start_soon(write, i)
    assert sum(not isinstance(o, Conflict) for o in outcomes) == 1


async def test_holders_are_kept_per_version_and_live_ones_first(kv: KV) -> None:
    live = {"node-2"}

    async def live_nodes() -> set[str]:
        return live

    index = ObjectIndex(kv, live_nodes)
    rec = await index.commit("k", "node-1", "a1", 1, None)
    assert await index.hold("k", "node-2", "a2", rec.version + 1) is None  # not current
    held = await index.hold("k", "node-2", "a2", rec.version)
    assert held is not None and held.version == rec.version  # (a hold keeps the version)
    assert [(h.node, h.live) for h in held.holders] == [("node-2", True), ("node-1", False)]
    newer = await index.commit("k", "node-3", "a3", 1, rec.version)
    assert newer.holder_names() == ("node-3",)  # an overwrite drops the old copies


async def test_lifecycle_changes(kv: KV) -> None:
    index = ObjectIndex(kv)
    rec = await index.commit("k", "n", "a", 1, None)
    info, deleted = await index.change("k", "ref")
    assert (info.refs, deleted, info.version) == (1, False, rec.version)
    await index.change("k", "pin")
    with pytest.raises(Conflict, match="pinned"):
        await index.change("k", "delete")
    info, deleted = await index.change("k", "unref")
    assert (info.refs, deleted) == (0, False)  # pinned: kept
    with pytest.raises(InvalidArgument):
        await index.change("k", "unref")
    await index.change("k", "unpin")
    await index.change("k", "ref")
    info, deleted = await index.change("k", "release", 5)
    assert (info.refs, deleted) == (0, False)  # released, not collected at once
    _, deleted = await index.change("k", "delete")
    assert deleted
    with pytest.raises(NotFound):
        await index.lookup("k")
    with pytest.raises(InvalidArgument):
        await index.change("k", "explode")


async def test_announce_and_collect(kv: KV) -> None:
    clock = Clock()
    index = ObjectIndex(kv, clock=clock)
    a = await index.commit("a", "node-1", "x", 1, None)
    b = await index.commit("b", "node-1", "x", 1, None)
    await index.commit("b", "node-2", "y", 1, b.version)
    # node-1 comes back holding a (current), b (overwritten meanwhile) and c (unknown).
    held = [("a", a.version, 1), ("b", b.version, 1), ("c", 77, 3)]
    stale, adopted = await index.announce("node-1", "x2", held)
    assert stale == ["b"]
    assert (await index.lookup("a")).holders[0].address == "x2"
    # c is adopted under a version of the index's own (versions only grow from there).
    kept = await index.lookup("c")
    assert adopted == [("c", kept.version)] and kept.version > b.version
    assert (kept.size, kept.holder_names()) == (3, ("node-1",))
    await index.change("a", "pin")
    clock.now += 100
    collected = await index.collect(50)
    assert sorted(r.key for r in collected) == ["b", "c"]
    assert [r.key for r in await index.list()] == ["a"]


async def test_a_small_value_lives_in_the_entry_with_its_version_only(kv: KV) -> None:
    index = ObjectIndex(kv)
    small = bytes(range(256)) * 16  # 4 KiB: the most the index keeps
    first = await index.commit("k", "node-1", "a1", len(small), None, small)
    assert first.value is None  # (only a lookup carries it)
    found = await index.lookup("k")
    assert found.value == small and found.version == first.version
    await index.change("k", "ref")  # a rewrite of the entry keeps it
    await index.hold("k", "node-2", "a2", first.version)
    assert (await index.lookup("k")).value == small
    assert [r.value for r in await index.list("")] == [None]  # not in listings
    # An overwrite without (or with too big, or a mis-sized) value drops the old one.
    for value, size in ((None, 3), (b"x" * 4097, 4097), (b"abc", 4)):
        await index.commit("k", "node-1", "a1", size, None, value)
        assert (await index.lookup("k")).value is None
    await index.commit("k", "node-1", "a1", 0, None, b"")  # an empty value is one too
    assert (await index.lookup("k")).value == b""


async def test_a_deleted_object_is_not_adopted_back_from_a_node_that_was_away(kv: KV) -> None:
    """rm while a holder is down, then the holder comes back: its copy is stale, the
    object stays deleted (before: the copy was adopted under a new version)."""
    index = ObjectIndex(kv)
    old = await index.commit("k", "node-2", "a2", 5, None)
    await index.hold("k", "node-3", "a3", old.version)
    new = await index.commit("k", "node-2", "a2", 6, old.version)  # node-3's copy now old
    await index.hold("k", "node-3", "a3", new.version)
    _, deleted = await index.change("k", "delete", asker="node-1")
    assert deleted
    # node-2 holds the last version, node-3 an old one (its sweep had not run): both stale.
    assert await index.announce("node-2", "b2", [("k", new.version, 6)]) == (["k"], [])
    assert await index.announce("node-3", "b3", [("k", old.version, 5)]) == (["k"], [])
    with pytest.raises(NotFound):
        await index.lookup("k")
    assert await kv.scan("objgone/") == []  # every holder told: the tombstone is gone
    # A key nobody deleted is still adopted (an SMS that lost its store).
    assert (await index.announce("node-2", "b2", [("other", 3, 1)]))[0] == []
    assert (await index.lookup("other")).holder_names() == ("node-2",)


async def test_a_tombstone_names_the_holders_but_the_asker_and_lasts_until_each_is_told(
    kv: KV,
) -> None:
    index = ObjectIndex(kv)
    rec = await index.commit("k", "node-1", "a1", 5, None)
    await index.change("k", "delete", asker="node-1")  # its only holder asked: no tombstone
    assert await kv.scan("objgone/") == []
    rec = await index.commit("k", "node-1", "a1", 5, None)
    await index.hold("k", "node-2", "a2", rec.version)
    await index.hold("k", "node-3", "a3", rec.version)
    await index.change("k", "force-delete", asker="node-1")
    assert await index.announce("node-2", "a2", [("k", rec.version, 5)]) == (["k"], [])
    [stone] = await kv.scan("objgone/")
    assert orjson.loads(stone.value)["holders"] == ["node-3"]
    # A later copy (the key created again after the delete) is not buried by it.
    again = await index.commit("k", "node-4", "a4", 5, None)
    await index.change("k", "delete", asker="node-4")
    stale, adopted = await index.announce("node-5", "a5", [("k", again.version + 1, 5)])
    assert stale == [] and [k for k, _ in adopted] == ["k"]


async def test_collection_leaves_tombstones_for_every_holder_struck_off_as_each_drops_its_copy(
    kv: KV,
) -> None:
    clock, live = Clock(), {"node-1", "node-2"}

    async def live_nodes() -> set[str]:
        return live

    index = ObjectIndex(kv, live_nodes, clock=clock)
    rec = await index.commit("k", "node-1", "a1", 5, None)
    await index.hold("k", "node-2", "a2", rec.version)
    await index.hold("k", "node-3", "a3", rec.version)
    gone = await index.commit("j", "node-1", "a1", 5, None)  # held by live members only
    clock.now += 100
    collected = await index.collect(50, asker="node-1")
    assert sorted(r.key for r in collected) == ["j", "k"]
    stones = {e.key: orjson.loads(e.value)["holders"] for e in await kv.scan("objgone/")}
    assert stones == {"objgone/j": ["node-1"], "objgone/k": ["node-1", "node-2", "node-3"]}
    assert await index.announce("node-1", "a1", [("j", gone.version, 5)]) != ([], [])
    # node-2's sweep drops its copy and says so with its next collection; node-1's too.
    await index.collect(50, asker="node-2")
    await index.collect(50, asker="node-2", dropped=[("k", rec.version)])
    await index.collect(50, asker="node-1", dropped=[("k", rec.version)])
    [(_, holders)] = [(e.key, orjson.loads(e.value)["holders"]) for e in await kv.scan("objgone/")]
    assert holders == ["node-3"]  # (away: it is told when it comes back)
    live.add("node-3")
    assert await index.announce("node-3", "a3", [("k", rec.version, 5)]) == (["k"], [])
    assert await kv.scan("objgone/") == []


async def test_a_tombstone_is_kept_at_most_tombstone_keep_s(kv: KV) -> None:
    clock = Clock()
    index = ObjectIndex(kv, clock=clock)
    rec = await index.commit("k", "node-1", "a1", 5, None)
    await index.change("k", "delete", asker="node-9")
    clock.now += TOMBSTONE_KEEP_S
    await index.collect(50)
    assert len(await kv.scan("objgone/")) == 1
    clock.now += 1
    await index.collect(50)
    assert await kv.scan("objgone/") == []
    stale, adopted = await index.announce("node-1", "a1", [("k", rec.version, 5)])
    assert stale == [] and [k for k, _ in adopted] == ["k"]  # too late: adopted again
