"""The object index's rules one at a time (core/object_index.py, the cluster's
ObjectAuthority on the SMS), on a real LevelDB KV with a clock we move: what a commit
keeps and refuses, what each lifecycle change does to references, pin and version, when
collection takes an object, and which members are told of a change.
tests/core/test_object_index.py runs the main paths on LevelDB and etcd alike."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from test_sms import Clock

from spear.core import object_index
from spear.core.object_index import INDEX, ObjectIndex
from spear.errors import Conflict, InvalidArgument, NotFound
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from spear.core.object_leases import Watcher
    from spear.store.kv import KV


@pytest.fixture
async def kv(tmp_path: Path) -> AsyncIterator[KV]:
    store = LevelDBKV.open(str(tmp_path / "index.ldb"))
    try:
        yield store
    finally:
        await store.aclose()


async def test_a_commit_needs_a_key_a_node_and_a_sane_expected_version(kv: KV) -> None:
    index = ObjectIndex(kv)
    for key, node in (("", "n"), ("k", "")):
        with pytest.raises(InvalidArgument, match="^an object commit needs a key and a node$"):
            await index.commit(key, node, "a", 1, None)
    with pytest.raises(
        InvalidArgument, match=r"^an expected version must be 0 \(absent\) or a version$"
    ):
        await index.commit("k", "n", "a", 1, -1)
    assert await index.list() == []
    first = await index.commit("k", "n", "a", 1, 0)  # 0: only if absent
    again = await index.commit("k", "n", "a", 1, None)  # None: whatever is there
    assert again.version > first.version


async def test_an_overwrite_keeps_references_pin_and_creation_time(kv: KV) -> None:
    clock = Clock()
    index = ObjectIndex(kv, clock=clock)
    first = await index.commit("k", "node-1", "a1", 3, None)
    assert (first.refs, first.pinned, first.created_at, first.updated_at) == (
        0,
        False,
        clock.now,
        clock.now,
    )
    await index.change("k", "ref")
    await index.change("k", "pin")
    created = clock.now
    clock.now += 5
    after = await index.commit("k", "node-2", "a2", 8, None)
    assert (after.refs, after.pinned, after.size) == (1, True, 8)
    assert (after.created_at, after.updated_at) == (created, clock.now)
    assert after.holders[0].address == "a2"
    looked = await index.lookup("k")
    assert (looked.refs, looked.pinned, looked.version) == (1, True, after.version)


async def test_each_lifecycle_change_keeps_the_version_and_stamps_the_time(kv: KV) -> None:
    clock = Clock()
    index = ObjectIndex(kv, clock=clock)
    rec = await index.commit("k", "n", "a", 1, None)
    clock.now += 1
    info, deleted = await index.change("k", "ref")
    assert (info.refs, info.version, info.updated_at, deleted) == (1, rec.version, clock.now, False)
    info, _ = await index.change("k", "ref")
    assert info.refs == 2
    info, _ = await index.change("k", "pin")
    assert info.pinned and info.refs == 2
    info, _ = await index.change("k", "unpin")
    assert not info.pinned
    info, deleted = await index.change("k", "release", 1)
    assert (info.refs, deleted) == (1, False)
    info, deleted = await index.change("k", "unref")
    assert (info.refs, deleted) == (0, True)  # its last reference, not pinned: gone
    with pytest.raises(NotFound):
        await index.lookup("k")
    with pytest.raises(NotFound):
        await index.change("k", "ref")


async def test_a_delete_names_what_holds_the_object_and_force_overrides_it(kv: KV) -> None:
    index = ObjectIndex(kv)
    rec = await index.commit("k", "n", "a", 1, None)
    await index.change("k", "ref")
    await index.change("k", "ref")
    with pytest.raises(Conflict, match=r"referenced 2 time\(s\)"):
        await index.change("k", "delete")
    with pytest.raises(Conflict, match=f"at version {rec.version}, not {rec.version + 1}"):
        await index.change("k", "force-delete", expected_version=rec.version + 1)
    assert (await index.lookup("k")).refs == 2  # refused: nothing changed
    await index.change("k", "pin")
    info, deleted = await index.change("k", "force-delete", expected_version=rec.version)
    assert deleted and info.key == "k"
    assert await kv.get(INDEX + "k") is None


async def test_a_release_never_goes_below_zero_nor_collects(kv: KV) -> None:
    index = ObjectIndex(kv)
    await index.commit("k", "n", "a", 1, None)
    await index.change("k", "ref")
    info, deleted = await index.change("k", "release", 3)
    assert (info.refs, deleted) == (0, False)
    assert (await index.lookup("k")).refs == 0
    with pytest.raises(InvalidArgument, match="one of ref, unref"):
        await index.change("k", "drop")


async def test_holding_the_same_copy_again_changes_nothing(kv: KV) -> None:
    index = ObjectIndex(kv)
    assert await index.hold("absent", "n", "a", 1) is None
    rec = await index.commit("k", "node-1", "a1", 1, None)
    before = await kv.get(INDEX + "k")
    held = await index.hold("k", "node-1", "a1", rec.version)
    assert held is not None and held.holder_names() == ("node-1",)
    assert await kv.get(INDEX + "k") == before  # not rewritten
    moved = await index.hold("k", "node-1", "a9", rec.version)  # a new address: rewritten
    assert moved is not None and moved.holders[0].address == "a9"
    assert (await index.lookup("k")).version == rec.version


async def test_records_list_by_prefix_with_their_keys(kv: KV) -> None:
    index = ObjectIndex(kv)
    for key in ("in/a", "in/b", "out/c"):
        await index.commit(key, "n", "a", len(key), None)
    listed = await index.list("in/")
    assert [(r.key, r.size) for r in listed] == [("in/a", 4), ("in/b", 4)]
    assert [r.key for r in await index.list()] == ["in/a", "in/b", "out/c"]


async def test_collection_takes_only_the_free_objects_idle_at_least_the_grace(kv: KV) -> None:
    clock = Clock()
    index = ObjectIndex(kv, clock=clock)
    for key in ("free", "young", "referenced", "pinned"):
        await index.commit(key, "n", "a", 1, None)
    await index.change("referenced", "ref")
    await index.change("pinned", "pin")
    clock.now += 10
    await index.change("young", "unpin")  # (a change: its idle time starts again)
    clock.now += 50  # free: idle 60 s exactly; young: 50 s
    collected = await index.collect(60)
    assert [(r.key, r.size) for r in collected] == [("free", 1)]
    assert [r.key for r in await index.list()] == ["pinned", "referenced", "young"]
    assert [r.key for r in await index.collect(50)] == ["young"]
    assert await index.collect(0) == []


async def test_an_announced_copy_of_a_key_created_meanwhile_is_stale(kv: KV) -> None:
    index = ObjectIndex(kv)
    rec = await index.commit("k", "node-2", "b", 1, None)
    stale, adopted = await index.announce("node-1", "a", [("k", rec.version + 5, 1)])
    assert (stale, adopted) == (["k"], [])
    assert (await index.lookup("k")).holder_names() == ("node-2",)
    assert await index.announce("node-1", "a", []) == ([], [])


async def _watching(index: ObjectIndex, kv: KV, node: str, key: str) -> Watcher:
    """`node` holds a lease and has looked `key` up (so it may serve it from its cache)."""
    watcher = index.leases.watch(node)
    await index.leases.renew(kv, watcher, 1)
    await watcher.outbox.get()  # (the pong)
    await index.lookup(key, node=node)
    return watcher


async def _told(watcher: Watcher, write: asyncio.Future[Any]) -> tuple[str, ...]:
    """The keys `watcher` was told of by `write`, acknowledged so the write can finish."""
    _, _, seq, keys, _ = await asyncio.wait_for(watcher.outbox.get(), 5)
    watcher.acked(seq)
    await asyncio.wait_for(write, 5)
    return keys


async def test_every_kind_of_write_tells_the_members_that_may_cache_the_key(kv: KV) -> None:
    clock = Clock()
    index = ObjectIndex(kv, clock=clock)
    index.leases.lease_s = 30.0
    rec = await index.commit("k", "node-1", "a1", 1, None)
    reader = await _watching(index, kv, "node-2", "k")
    write = asyncio.ensure_future(index.commit("k", "node-1", "a1", 2, rec.version))
    assert await _told(reader, write) == ("k",)
    await index.lookup("k", node="node-2")
    assert await _told(reader, asyncio.ensure_future(index.change("k", "pin"))) == ("k",)
    await index.change("k", "unpin")  # (node-2 did not look again: not told)
    assert reader.outbox.empty()
    await index.lookup("k", node="node-2")
    clock.now += 100
    collect = asyncio.ensure_future(index.collect(50))
    assert await _told(reader, collect) == ("k",)
    assert [r.key for r in collect.result()] == ["k"]


async def test_a_commit_pushes_its_new_record_and_the_reader_stays_noted(kv: KV) -> None:
    assert object_index.PUSH_RECORDS  # (on by default; off: the next test)
    index = ObjectIndex(kv)
    index.leases.lease_s = 30.0
    rec = await index.commit("k", "node-1", "a1", 5, None, b"first")
    reader = await _watching(index, kv, "node-2", "k")
    write = asyncio.ensure_future(index.commit("k", "node-3", "a3", 6, rec.version, b"second"))
    _, _, seq, keys, pushed = await asyncio.wait_for(reader.outbox.get(), 5)
    reader.acked(seq)
    new = await asyncio.wait_for(write, 5)
    assert keys == ("k",) and pushed is not None
    assert (pushed.key, pushed.version, pushed.size) == ("k", new.version, 6)
    assert (pushed.value, pushed.holder_names()) == (b"second", ("node-3",))
    # node-2 caches what was pushed: the next change tells it, though it did not look again.
    write = asyncio.ensure_future(index.change("k", "pin"))
    _, _, seq, keys, pushed = await asyncio.wait_for(reader.outbox.get(), 5)
    assert (keys, pushed) == (("k",), None)  # (a change of references pushes no record)
    reader.acked(seq)
    await asyncio.wait_for(write, 5)
    await asyncio.wait_for(index.change("k", "unpin"), 5)  # so node-2 is noted no more
    assert reader.outbox.empty()


async def test_the_writer_is_not_told_of_its_own_commit(kv: KV) -> None:
    index = ObjectIndex(kv)
    index.leases.lease_s = 30.0
    await index.commit("k", "node-2", "a2", 1, None)
    writer = await _watching(index, kv, "node-2", "k")
    await asyncio.wait_for(index.commit("k", "node-2", "a2", 1, None), 5)
    assert writer.outbox.empty()
    # It stays noted (it caches what it wrote): another's write tells it.
    write = asyncio.ensure_future(index.commit("k", "node-3", "a3", 1, None))
    assert await _told(writer, write) == ("k",)


async def test_a_member_that_only_wrote_a_key_is_told_of_the_next_write(kv: KV) -> None:
    index = ObjectIndex(kv)
    index.leases.lease_s = 30.0
    writer = index.leases.watch("node-2")
    await index.leases.renew(kv, writer, 1)
    await writer.outbox.get()
    await index.commit("k", "node-2", "a2", 1, None)  # no lookup: it caches what it wrote
    write = asyncio.ensure_future(index.commit("k", "node-3", "a3", 1, None))
    assert await _told(writer, write) == ("k",)


async def test_every_answer_names_its_key_version_and_which_holders_live(kv: KV) -> None:
    live = {"node-1"}

    async def live_nodes() -> set[str]:
        return live

    index = ObjectIndex(kv, live_nodes)
    rec = await index.commit("k", "node-2", "a2", 1, None)
    assert (rec.key, [h.live for h in rec.holders]) == ("k", [False])
    held = await index.hold("k", "node-1", "a1", rec.version)
    assert held is not None and held.key == "k"
    assert [(h.node, h.live) for h in held.holders] == [("node-1", True), ("node-2", False)]
    looked = await index.lookup("k")
    assert (looked.key, looked.version) == ("k", rec.version)
    assert [h.live for h in looked.holders] == [True, False]
    info, _ = await index.change("k", "ref")
    assert [h.live for h in info.holders] == [True, False]
    (listed,) = await index.list()
    assert (listed.key, listed.version) == ("k", rec.version)
    assert [h.live for h in listed.holders] == [True, False]
    for call in (index.lookup("absent"), index.change("absent", "ref")):
        with pytest.raises(NotFound, match="^no such object: absent$"):
            await call


async def test_the_words_of_each_refusal_and_a_single_reference(kv: KV) -> None:
    index = ObjectIndex(kv)
    await index.commit("k", "n", "a", 1, None)
    with pytest.raises(InvalidArgument, match="^object 'k' has no references to remove$"):
        await index.change("k", "unref")
    await index.change("k", "ref")
    with pytest.raises(Conflict, match=r"^object 'k' is referenced 1 time\(s\); unpin it"):
        await index.change("k", "delete")
    await index.change("k", "ref")
    info, _ = await index.change("k", "release")  # one reference by default
    assert info.refs == 1
    await index.change("k", "pin")
    with pytest.raises(Conflict, match="^object 'k' is pinned; unpin it, or delete with force$"):
        await index.change("k", "delete")


async def test_collected_records_carry_their_version(kv: KV) -> None:
    clock = Clock()
    index = ObjectIndex(kv, clock=clock)
    rec = await index.commit("k", "n", "a", 1, None)
    clock.now += 10
    (collected,) = await index.collect(5)
    assert (collected.key, collected.version) == ("k", rec.version)


class RacingKV:
    """A real KV that runs `hook` once, just before the `nth` call of `method` on `key`."""

    def __init__(self, kv: KV, method: str, key: str, nth: int, hook: Any) -> None:
        self._kv, self._method, self._key, self._left, self._hook = kv, method, key, nth, hook

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._kv, name)
        if name != self._method:
            return real

        async def call(key: str, *args: Any) -> Any:
            if key == self._key and self._left > 0:
                self._left -= 1
                if self._left == 0:
                    await self._hook()
            return await real(key, *args)

        return call


async def test_a_hold_racing_another_change_is_still_entered(kv: KV) -> None:
    index = ObjectIndex(kv)
    rec = await index.commit("k", "node-1", "a1", 1, None)
    racing = ObjectIndex(
        RacingKV(kv, "compare_and_swap", INDEX + "k", 1, lambda: index.change("k", "ref")),  # type: ignore[arg-type]
    )
    held = await racing.hold("k", "node-2", "a2", rec.version)
    assert held is not None and held.holder_names() == ("node-1", "node-2")
    after = await index.lookup("k")
    assert (after.refs, after.holder_names()) == (1, ("node-1", "node-2"))


async def test_an_announced_key_created_meanwhile_is_not_overwritten(kv: KV) -> None:
    index = ObjectIndex(kv)
    # node-2 creates k just as node-1's announce decided to adopt its copy of it.
    racing = ObjectIndex(
        RacingKV(kv, "get", INDEX + "k", 3, lambda: index.commit("k", "node-2", "b", 9, None)),  # type: ignore[arg-type]
    )
    stale, adopted = await racing.announce("node-1", "a", [("k", 4, 1)])
    assert (stale, adopted) == (["k"], [])
    found = await index.lookup("k")
    assert (found.size, found.holder_names()) == (9, ("node-2",))


async def test_every_unknown_key_announced_is_adopted_with_its_holder(kv: KV) -> None:
    index = ObjectIndex(kv)
    stale, adopted = await index.announce("node-1", "addr-1", [("x", 3, 1), ("y", 5, 2)])
    assert stale == [] and [key for key, _ in adopted] == ["x", "y"]
    for key, version in adopted:
        found = await index.lookup(key)
        assert found.version == version
        assert [(h.node, h.address) for h in found.holders] == [("node-1", "addr-1")]


async def test_an_entry_with_only_its_size_reads_as_a_new_free_object(kv: KV) -> None:
    """An entry written with no references, pin, times or holders (by hand, or by an
    older SMS) is read as a new object: unreferenced, unpinned, held by nobody, idle
    since ever; and every change works on it."""
    clock = Clock()
    index = ObjectIndex(kv, clock=clock)
    for key in ("bare", "held", "gone"):
        await kv.put(INDEX + key, b'{"size": 3}')
    bare = await index.lookup("bare")
    assert (bare.refs, bare.pinned, bare.holders, bare.size) == (0, False, (), 3)
    assert (bare.created_at, bare.updated_at) == (0.0, 0.0)
    held = await index.hold("held", "node-1", "a1", bare.version + 1)
    assert held is not None and held.holder_names() == ("node-1",)
    info, deleted = await index.change("bare", "ref")
    assert (info.refs, info.pinned, deleted) == (1, False, False)
    _, deleted = await index.change("gone", "unpin")
    assert not deleted and not (await index.lookup("gone")).pinned
    assert [r.key for r in await index.collect(grace_s=clock.now - 1)] == ["held"]


async def test_a_pushed_record_says_which_holders_are_live_as_a_lookup_does(kv: KV) -> None:
    # (a member fetching from a pushed record skips a holder the SMS knows is not live)
    live = {"node-2"}

    async def live_nodes() -> set[str]:
        return set(live)

    index = ObjectIndex(kv, live_nodes)
    index.leases.lease_s = 30.0
    rec = await index.commit("k", "node-1", "a1", 5, None, b"first")
    reader = await _watching(index, kv, "node-2", "k")
    write = asyncio.ensure_future(index.commit("k", "node-3", "a3", 6, rec.version, b"second"))
    _, _, seq, _, pushed = await asyncio.wait_for(reader.outbox.get(), 5)
    reader.acked(seq)
    await asyncio.wait_for(write, 5)
    assert pushed is not None
    assert [(h.node, h.live) for h in pushed.holders] == [("node-3", False)]
    live.add("node-3")
    looked_up = await index.lookup("k")
    assert [(h.node, h.live) for h in looked_up.holders] == [("node-3", True)]


async def test_with_pushes_off_a_commit_is_a_plain_invalidation(
    kv: KV, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_index, "PUSH_RECORDS", False)
    index = ObjectIndex(kv)
    index.leases.lease_s = 30.0
    rec = await index.commit("k", "node-1", "a1", 5, None, b"first")
    reader = await _watching(index, kv, "node-2", "k")
    write = asyncio.ensure_future(index.commit("k", "node-3", "a3", 6, rec.version, b"second"))
    _, _, seq, keys, pushed = await asyncio.wait_for(reader.outbox.get(), 5)
    reader.acked(seq)
    await asyncio.wait_for(write, 5)
    assert (keys, pushed) == (("k",), None)
