"""The SMS's object index (core/object_index.py) on LevelDB and a real etcd: versions by
compare-and-swap, holders per version, lifecycle changes, announce and collect."""
# ruff: noqa: F811  (the kv fixture imported from test_sms.py is used as an argument)

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from test_sms import Clock, kv  # noqa: F401 - the KV fixture (LevelDB and etcd), the clock

from spear.core.object_index import ObjectIndex
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
