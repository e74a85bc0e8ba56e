"""The object store's cluster rules (store/objects.py with an ObjectAuthority): two nodes'
stores, each on its own real LevelDB and value files, sharing one real object index
(core/object_index.py, the SMS's authority) in process. The authority here is what
node/object_space.py's ClusterObjects is to the SMS, without the wire: a fetch reads the
holder's store directly (tests/cluster/test_object_space.py runs the same over real
SPEARlets, the SMS and the object transfer service, in seconds per test; these in
milliseconds). Also the local store's rules the mutation run found unchecked."""

from __future__ import annotations

import io
import os
import time
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson
import pytest

from spear.core.object_index import GONE, ObjectIndex
from spear.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SpearError,
    StorageError,
    Unavailable,
)
from spear.store.leveldb import LevelDBKV
from spear.store.objects import INLINE_MAX, ObjectStore, result_key
from spear.store.spare_files import SPARE_DIR
from spear.transport._object_convert import record_info

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from spear.core.object_index import ObjectRecord
    from spear.store.kv import KV
    from spear.store.object_info import ObjectInfo

LARGE = b"L" * 10_000  # kept in a value file (over the store's and the index's inline max)


class IndexAuthority:
    """The ObjectAuthority of node `node` over a shared ObjectIndex."""

    def __init__(self, index: ObjectIndex, node: str, stores: dict[str, ObjectStore]) -> None:
        self.index = index
        self.node = node
        self.stores = stores  # every node's store, by name: where a fetch reads from
        self.records: dict[str, ObjectRecord] = {}
        self.fetches: list[tuple[str, int]] = []
        self.told: list[list[tuple[str, int]]] = []  # the dropped copies of each collect

    async def commit(
        self, key: str, size: int, expected_version: int | None, value: bytes | None = None
    ) -> int:
        record = await self.index.commit(key, self.node, self.node, size, expected_version, value)
        return record.version

    async def commit_many(
        self, commits: Sequence[tuple[str, int, int | None, bytes | None]]
    ) -> builtins.list[int | Exception]:
        answers: builtins.list[int | Exception] = []
        for key, size, expected_version, value in commits:
            try:
                answers.append(await self.commit(key, size, expected_version, value))
            except SpearError as exc:
                answers.append(exc)
        return answers

    async def current(self, key: str) -> ObjectInfo:
        record = await self.index.lookup(key, self.node)
        self.records[key] = record
        return record_info(record)

    def small_value(self, key: str, version: int) -> bytes | None:
        record = self.records.get(key)
        return record.value if record is not None and record.version == version else None

    async def fetch(self, key: str, info: ObjectInfo, dest: Path) -> None:
        record = await self.index.lookup(key)
        for holder in record.holders:
            if holder.node == self.node or record.version != info.version:
                continue
            source, _, version = await self.stores[holder.node].open_local(key)
            if version != info.version:
                continue
            if isinstance(source, bytes):
                dest.write_bytes(source)
            else:
                with source:
                    dest.write_bytes(source.read())
            self.fetches.append((key, version))
            return
        raise Unavailable(f"object {key!r} (version {info.version}) has no holder")

    async def hold(self, key: str, version: int) -> None:
        await self.index.hold(key, self.node, self.node, version)

    async def change(
        self, key: str, change: str, count: int = 1, expected_version: int | None = None
    ) -> tuple[ObjectInfo, bool]:
        record, deleted = await self.index.change(key, change, count, expected_version)
        return record_info(record), deleted

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        return [record_info(r) for r in await self.index.list(prefix)]

    async def collect(
        self, grace_s: float, dropped: Sequence[tuple[str, int]] = ()
    ) -> builtins.list[str]:
        self.told.append(list(dropped))
        return [r.key for r in await self.index.collect(grace_s, self.node, dropped)]

    async def announce(
        self, held: Sequence[tuple[str, int, int]]
    ) -> tuple[builtins.list[str], builtins.list[tuple[str, int]]]:
        return await self.index.announce(self.node, self.node, held)


class Cluster:
    def __init__(self, sms: KV, kvs: list[KV], root: Path) -> None:
        self.index = ObjectIndex(sms)
        self.stores: dict[str, ObjectStore] = {}
        self.authorities: dict[str, IndexAuthority] = {}
        for i, kv in enumerate(kvs, 1):
            name = f"node-{i}"
            authority = IndexAuthority(self.index, name, self.stores)
            self.authorities[name] = authority
            self.stores[name] = ObjectStore(
                kv, root / name, capacity_bytes=10**6, authority=authority
            )

    def __getitem__(self, name: str) -> ObjectStore:
        return self.stores[name]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    kvs = [LevelDBKV.open(str(tmp_path / f"{n}.ldb")) for n in ("sms", "n1", "n2")]
    try:
        yield Cluster(kvs[0], kvs[1:], tmp_path)
    finally:
        for kv in kvs:
            await kv.aclose()


def value_files(store: ObjectStore) -> list[Path]:
    root = store.root
    # (not the staging area, nor spares: files no version names, kept to be written over)
    return [
        p for p in root.rglob("*") if p.is_file() and p.parent.name not in ("staging", SPARE_DIR)
    ]


async def held(store: ObjectStore) -> dict[str, int]:
    return {key: version for key, version, _ in await store.held()}


async def test_a_large_value_written_on_one_node_is_fetched_once_by_another(
    cluster: Cluster,
) -> None:
    one, two = cluster["node-1"], cluster["node-2"]
    version = await one.put("k", LARGE)
    assert await held(one) == {"k": version} and len(value_files(one)) == 1
    assert await held(two) == {}
    value, got = await two.get("k")
    assert (bytes(value), got) == (LARGE, version)
    assert cluster.authorities["node-2"].fetches == [("k", version)]
    # The copy is kept under the cluster's version, the index names node-2 as a holder.
    assert await held(two) == {"k": version} and len(value_files(two)) == 1
    assert (await cluster.index.lookup("k")).holder_names() == ("node-1", "node-2")
    await two.get("k")
    assert len(cluster.authorities["node-2"].fetches) == 1  # served from the copy now
    value, info = await two.get_with_info("k")
    assert (bytes(value), info.version, info.size) == (LARGE, version, len(LARGE))
    assert await two.usage() == len(LARGE)


async def test_a_small_value_is_read_from_the_index_and_not_copied(cluster: Cluster) -> None:
    one, two = cluster["node-1"], cluster["node-2"]
    version = await one.put("k", b"small")
    value, got = await two.get("k")
    assert (bytes(value), got) == (b"small", version)
    assert cluster.authorities["node-2"].fetches == [] and await held(two) == {}
    assert value_files(one) == []  # inline on its writer too


async def test_an_overwrite_elsewhere_replaces_the_old_copy(cluster: Cluster) -> None:
    one, two = cluster["node-1"], cluster["node-2"]
    first = await one.put("k", LARGE)
    await two.get("k")
    second = await two.put("k", b"N" * 20_000, expected_version=first)
    assert second > first
    assert await held(two) == {"k": second} and len(value_files(two)) == 1  # old file gone
    assert await two.usage() == 20_000
    value, got = await one.get("k")
    assert (bytes(value), got) == (b"N" * 20_000, second)
    assert await held(one) == {"k": second} and len(value_files(one)) == 1
    assert await one.usage() == 20_000
    # A stale writer is refused by the cluster and keeps nothing of its value.
    with pytest.raises(Conflict):
        await one.put("k", b"S" * 30_000, expected_version=first)
    assert await held(one) == {"k": second} and len(value_files(one)) == 1
    assert await one.usage() == 20_000
    with pytest.raises(Conflict):
        await one.put("new", LARGE, expected_version=7)  # absent, a version expected
    assert "new" not in await held(one)


async def test_a_copy_newer_than_the_answer_is_served_as_what_it_is(cluster: Cluster) -> None:
    one = cluster["node-1"]
    version = await one.put("k", LARGE)
    # The node holds a later copy than the cluster names (it was adopted under a higher
    # version while this read was on its way): the local copy is served, as itself.
    await one.relabel("k", version, version + 10)
    value, info = await one.get_with_info("k")
    assert (bytes(value), info.version, info.size) == (LARGE, version + 10, len(LARGE))
    await one.relabel("k", version, version + 20)  # not at that version now: unchanged
    assert await held(one) == {"k": version + 10}
    await one.relabel("absent", 1, 2)


async def test_an_open_read_is_the_clusters_current_version_as_a_file(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the object socket hands over: the current version's file (fetched first when
    this node has none, or an older copy), a small value's bytes from the index."""
    one, two = cluster["node-1"], cluster["node-2"]
    first = await one.put("k", LARGE)
    opened, info = await two.open_with_info("k")  # none here yet: fetched, then opened
    assert isinstance(opened, io.IOBase)
    with opened:
        assert (opened.read(), info.version, info.size) == (LARGE, first, len(LARGE))
    assert cluster.authorities["node-2"].fetches == [("k", first)]
    second = await one.put("k", b"N" * 20_000, expected_version=first)
    closed: list[bool] = []  # every file of an older copy opened on the way is closed
    real_open_local = two.open_local

    async def open_local(key: str) -> tuple[BinaryIO | bytes, int, int]:
        got = await real_open_local(key)
        if isinstance(got[0], io.IOBase):
            stale = got[0]
            real_close = stale.close
            closed.append(False)

            def close() -> None:
                closed[-1] = True
                real_close()

            monkeypatch.setattr(stale, "close", close)
        return got

    monkeypatch.setattr(two, "open_local", open_local)
    opened, info = await two.open_with_info("k")  # the copy here is `first`: fetched again
    assert isinstance(opened, io.IOBase)
    with opened:
        assert (opened.read(), info.version, info.size) == (b"N" * 20_000, second, 20_000)
    assert closed == [True, True]  # the stale copy's file, then the one handed out
    assert cluster.authorities["node-2"].fetches == [("k", first), ("k", second)]
    small = await one.put("s", b"small")
    assert await two.open_with_info("s") == (memoryview(b"small"), await two.info("s"))
    assert (await two.open_with_info("s"))[1].version == small
    with pytest.raises(NotFound):
        await two.open_with_info("absent")


async def test_info_list_refs_and_pins_are_the_clusters(cluster: Cluster) -> None:
    one, two = cluster["node-1"], cluster["node-2"]
    version = await one.put("p/k", LARGE)
    await one.put("q", b"x")
    assert await two.add_ref("p/k") == 1
    assert await one.add_ref("p/k", holder="task-1") == 2
    await two.pin("p/k")
    info = await one.info("p/k")
    assert (info.version, info.refs, info.pinned, info.locations) == (version, 2, True, ("node-1",))
    assert [i.key for i in await two.list("p/")] == ["p/k"]
    await one.release_holders(["task-0", "task-1"])  # the task ended: its reference goes
    assert (await two.info("p/k")).refs == 1
    await one.unpin("p/k")
    assert await two.remove_ref("p/k") == 0  # the last one, not pinned: deleted everywhere
    with pytest.raises(NotFound):
        await one.info("p/k")
    assert await held(two) == {}
    assert "p/k" in await held(one)  # another node's copy: dropped at its next collection
    await one.collect(3600)
    assert await held(one) == {"q": (await one.info("q")).version}


async def test_a_release_of_a_deleted_object_is_quiet(cluster: Cluster) -> None:
    one = cluster["node-1"]
    await one.put("k", b"x")
    await one.add_ref("k", holder="task-1")
    await one.delete("k", force=True)
    await one.release_holder("task-1")  # (gone meanwhile: nothing to release)
    with pytest.raises(NotFound):
        await one.info("k")


async def test_a_delete_is_the_clusters_and_drops_the_local_copy(cluster: Cluster) -> None:
    one, two = cluster["node-1"], cluster["node-2"]
    version = await one.put("k", LARGE)
    await two.get("k")
    await one.pin("k")
    with pytest.raises(Conflict, match="pinned"):
        await two.delete("k")
    with pytest.raises(Conflict, match="at version"):
        await two.delete("k", expected_version=version + 1, force=True)
    assert await held(two) == {"k": version}  # refused: the copy stays
    await two.delete("k", expected_version=version, force=True)
    assert await held(two) == {} and value_files(two) == []
    assert await two.usage() == 0
    with pytest.raises(NotFound):
        await two.get("k")
    # node-1's copy is no longer current: its next collection drops it.
    assert await held(one) == {"k": version}
    assert await one.collect(3600) == []
    assert await held(one) == {} and value_files(one) == []


async def test_collection_is_the_clusters_and_keeps_current_copies(cluster: Cluster) -> None:
    one, two = cluster["node-1"], cluster["node-2"]
    kept = await one.put("kept", LARGE)
    await one.pin("kept")
    await one.put("idle", LARGE)
    await two.get("idle")
    orphan = one.root / "ab" / ("ab" + "0" * 30)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a crashed put")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    assert await one.collect(0) == ["idle"]
    assert await held(one) == {"kept": kept} and not orphan.exists()
    assert len(value_files(one)) == 1  # the current copy's file stays
    assert "idle" in await held(two)  # until node-2 collects too
    assert await two.collect(0) == []
    assert await held(two) == {}


async def test_each_node_says_which_copies_it_dropped_with_its_next_collection(
    cluster: Cluster,
) -> None:
    """And is struck off their tombstones then: a collected object's tombstone names
    every holder (one may restart before its sweep drops its copy) until each says so."""
    one, two = cluster["node-1"], cluster["node-2"]
    version = await one.put("idle", LARGE)
    await two.get("idle")
    assert await one.collect(0) == ["idle"]  # node-1's copy dropped by this sweep
    stone = await cluster.index.kv.get(GONE + "idle")
    assert stone is not None and orjson.loads(stone.value)["holders"] == ["node-1", "node-2"]
    assert await two.collect(0) == []  # node-2's copy dropped by this one
    assert "idle" not in await held(two)
    await one.collect(0)
    await two.collect(0)
    told = {n: a.told for n, a in cluster.authorities.items()}
    assert told == {
        "node-1": [[], [("idle", version)]],
        "node-2": [[], [("idle", version)]],  # (each once: told, it is not told again)
    }
    assert await cluster.index.kv.get(GONE + "idle") is None  # no holder left


async def test_a_copy_already_there_is_not_kept_twice(cluster: Cluster) -> None:
    one, two = cluster["node-1"], cluster["node-2"]
    version = await one.put("k", LARGE)
    await two.get("k")
    before = value_files(two)
    await two.drop_local("absent")  # nothing to drop
    await cluster["node-2"].relabel("k", version, version)  # (no change)
    value, got = await two.get("k")
    assert (bytes(value), got) == (LARGE, version) and value_files(two) == before


async def test_a_cluster_put_over_capacity_is_refused_before_anything_is_written(
    cluster: Cluster,
) -> None:
    one = cluster["node-1"]
    with pytest.raises(ResourceExhausted, match="object store full"):
        await one.put("big", b"B" * (10**6 + 1))
    assert await cluster.index.list() == [] and value_files(one) == []
    assert await one.usage() == 0


async def test_task_results_in_a_cluster_are_each_a_commit(
    cluster: Cluster, tmp_path: Path
) -> None:
    one = cluster["node-1"]
    stdout = tmp_path / "out.txt"
    stdout.write_bytes(b"hello")
    await one.put(result_key("t-set"), b"set by the task")
    await one.store_results([("t-out", stdout), ("t-none", None), ("t-set", None)])
    assert bytes((await one.get(result_key("t-out")))[0]) == b"hello"
    assert bytes((await one.get(result_key("t-none")))[0]) == b""
    assert bytes((await one.get(result_key("t-set")))[0]) == b"set by the task"
    assert {i.key for i in await cluster.index.list("results/")} == {
        "results/t-out",
        "results/t-none",
        "results/t-set",
    }


async def test_small_results_in_a_cluster_are_one_commit_call_and_one_write(
    cluster: Cluster, tmp_path: Path
) -> None:
    one, authority = cluster["node-1"], cluster.authorities["node-1"]
    calls: list[tuple[str, int]] = []
    commit, commit_many = authority.commit, authority.commit_many
    inside = [False]  # (the fake's commit_many calls commit: not counted)

    async def counted_commit(*args: Any) -> int:
        calls.extend([] if inside[0] else [("commit", 1)])
        return await commit(*args)

    async def counted_many(commits: Any) -> builtins.list[int | Exception]:
        calls.append(("commit_many", len(commits)))
        inside[0] = True
        try:
            return await commit_many(commits)
        finally:
            inside[0] = False

    authority.commit, authority.commit_many = counted_commit, counted_many  # type: ignore[method-assign]
    outputs = {"a": b"a", "b": b"bb", "edge": b"e" * INLINE_MAX, "large": LARGE}
    for name, data in outputs.items():
        (tmp_path / name).write_bytes(data)
    items = [(name, tmp_path / name) for name in outputs]
    items += [("none", None), ("gone", tmp_path / "no-such-file")]
    with pytest.raises(NotFound, match="no-such-file"):  # (raised once all others are kept)
        await one.store_results(items)
    assert sorted(calls) == [("commit", 1), ("commit_many", 4)]  # (at most INLINE_MAX: small)
    for name, data in [*outputs.items(), ("none", b"")]:
        value, version = await one.get_local(result_key(name))
        assert bytes(value) == data
        assert version == (await cluster.index.lookup(result_key(name))).version
        assert bytes((await cluster["node-2"].get(result_key(name)))[0]) == data
    assert {i.key for i in await cluster.index.list("results/")} == {
        result_key(n) for n in ("a", "b", "edge", "large", "none")
    }
    used = 1 + 2 + INLINE_MAX + len(LARGE)
    assert await one.usage() == used
    await one.put("the rest", b"R" * (10**6 - used))  # (the room they reserved is free again)


async def test_a_small_result_the_authority_refuses_is_raised_after_the_others_are_kept(
    cluster: Cluster, tmp_path: Path
) -> None:
    one, authority = cluster["node-1"], cluster.authorities["node-1"]
    commit_many = authority.commit_many

    async def one_unavailable(commits: Any) -> builtins.list[int | Exception]:
        answers = await commit_many(commits[1:])
        return [Unavailable("the SMS went away"), *answers]

    authority.commit_many = one_unavailable  # type: ignore[method-assign]
    large = tmp_path / "large"
    large.write_bytes(LARGE)  # (one large result beside them: its put goes on its own)
    with pytest.raises(Unavailable, match="went away"):
        await one.store_results([("lost", None), ("kept", None), ("large", large)])
    assert bytes((await one.get_local(result_key("large")))[0]) == LARGE
    assert bytes((await one.get_local(result_key("kept")))[0]) == b""
    with pytest.raises(NotFound):
        await one.get_local(result_key("lost"))


async def test_results_of_a_namespace_are_kept_at_its_keys_small_and_large_alike(
    cluster: Cluster, tmp_path: Path
) -> None:
    import functools

    from spear.core.namespaces import result_key as namespaced

    one, key = cluster["node-1"], functools.partial(namespaced, "team-a")
    (tmp_path / "small").write_bytes(b"s")
    (tmp_path / "large").write_bytes(LARGE)
    items = [("s", tmp_path / "small"), ("l", tmp_path / "large"), ("e", None)]
    await one.store_results(items, key=key)
    for task_id, data in (("s", b"s"), ("l", LARGE), ("e", b"")):
        assert bytes((await cluster["node-2"].get(key(task_id)))[0]) == data
    assert await cluster.index.list("results/") == []  # (none at the default's keys)


async def test_a_small_result_this_node_held_an_older_copy_of_replaces_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    one = cluster["node-1"]
    await one.put(result_key("old"), b"an older copy")
    await cluster.index.change(result_key("old"), "force-delete")  # (the SMS forgot it)
    (tmp_path / "out").write_bytes(b"new")
    await one.store_results([("old", tmp_path / "out"), ("fresh", None)])
    assert bytes((await one.get_local(result_key("old")))[0]) == b"new"
    assert bytes((await one.get_local(result_key("fresh")))[0]) == b""
    assert await one.usage() == 3
    held = {key: size for key, _, size in await one.held()}
    assert (held[result_key("old")], held[result_key("fresh")]) == (3, 0)


async def test_small_results_after_one_the_task_set_itself_are_kept_and_held_at_their_size(
    cluster: Cluster, tmp_path: Path
) -> None:
    one = cluster["node-1"]
    await one.put(result_key("set"), b"set by the task")  # (its commit will conflict)
    (tmp_path / "out").write_bytes(b"four")
    await one.store_results([("set", None), ("after", tmp_path / "out"), ("empty", None)])
    assert bytes((await one.get_local(result_key("set")))[0]) == b"set by the task"
    assert bytes((await one.get_local(result_key("after")))[0]) == b"four"
    held = {key: (version, size) for key, version, size in await one.held()}
    for key, size in ((result_key("after"), 4), (result_key("empty"), 0)):
        assert held[key] == ((await cluster.index.lookup(key)).version, size)
    assert await one.usage() == len(b"set by the task") + 4  # (added to what was there)


async def test_a_small_result_whose_file_vanishes_or_grows_is_refused_alone(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spear.store.objects as objects_module

    one = cluster["node-1"]
    for name in ("gone", "grown", "fine"):
        (tmp_path / name).write_bytes(b"abc")
    read_file = objects_module.read_file

    async def racing_read(path: Any, size: int | None = None) -> bytes:
        if str(path).endswith("gone"):  # (removed between its stat and its read)
            raise FileNotFoundError(path)
        data = await read_file(path, size)
        return data + b"more" if str(path).endswith("grown") else data

    monkeypatch.setattr(objects_module, "read_file", racing_read)
    items = [(name, tmp_path / name) for name in ("gone", "grown", "fine")]
    with pytest.raises(NotFound, match="gone"):
        await one.store_results([*items, ("large", None)])
    assert bytes((await one.get_local(result_key("fine")))[0]) == b"abc"
    assert {i.key for i in await cluster.index.list("results/")} == {
        result_key("fine"),
        result_key("large"),
    }
    with pytest.raises(StorageError, match="changed size"):
        await one.store_results([("grown-again", tmp_path / "grown"), ("x", None)])


async def test_small_results_that_find_the_store_full_are_each_refused_alone(
    cluster: Cluster, tmp_path: Path
) -> None:
    one = cluster["node-1"]
    await one.put("filler", b"F" * (10**6 - 4))
    (tmp_path / "out").write_bytes(b"12345")
    await one.store_results([("big", tmp_path / "out"), ("empty", None)])  # logged, not raised
    assert {i.key for i in await cluster.index.list("results/")} == {result_key("empty")}
    with pytest.raises(NotFound):
        await one.get_local(result_key("big"))
    assert await one.usage() == 10**6 - 4


# -- the local store (no authority) --------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    try:
        yield ObjectStore(kv, tmp_path / "objects", max_bytes=100_000, capacity_bytes=200_000)
    finally:
        await kv.aclose()


async def test_an_objects_times_are_when_it_was_made_and_last_changed(store: ObjectStore) -> None:
    before = time.time()
    await store.put("k", b"v")
    made = await store.info("k")
    assert before <= made.created_at == made.updated_at <= time.time()
    assert (made.refs, made.pinned, made.size) == (0, False, 1)
    await store.add_ref("k")
    changed = await store.info("k")
    assert changed.created_at == made.created_at and changed.updated_at >= made.updated_at
    await store.put("k", b"vv")
    rewritten = await store.info("k")
    assert rewritten.created_at == made.created_at and rewritten.refs == 1
    assert rewritten.updated_at >= changed.updated_at


async def test_results_of_many_tasks_are_stored_and_an_explicit_one_kept(
    store: ObjectStore, tmp_path: Path
) -> None:
    stdout = tmp_path / "out.txt"
    stdout.write_bytes(b"printed")
    await store.put(result_key("set"), b"explicit")
    await store.store_results([("a", None), ("b", stdout), ("set", None), ("c", None)])
    for task, want in (("a", b""), ("b", b"printed"), ("set", b"explicit"), ("c", b"")):
        assert bytes((await store.get(result_key(task)))[0]) == want
    await store.store_results([("d", None)])
    assert bytes((await store.get(result_key("d")))[0]) == b""
    assert await store.usage() == len(b"printed") + len(b"explicit")


async def test_a_result_that_does_not_fit_is_not_stored_and_the_task_still_ends(
    tmp_path: Path,
) -> None:
    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    try:
        store = ObjectStore(kv, tmp_path / "objects", capacity_bytes=10)
        await store.put("fill", b"x" * 10)
        stdout = tmp_path / "out.txt"
        stdout.write_bytes(b"too much")
        await store.store_results([("big", stdout)])  # full: logged, not raised
        await store.store_result("also", stdout)
        for task in ("big", "also"):
            with pytest.raises(NotFound):
                await store.get(result_key(task))
        await store.store_results([("empty", None)])  # (no room is needed for nothing)
        assert bytes((await store.get(result_key("empty")))[0]) == b""
    finally:
        await kv.aclose()


async def test_a_file_put_copies_or_moves_its_source(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(LARGE)
    version = await store.put_file("copied", source)
    assert source.exists() and bytes((await store.get("copied"))[0]) == LARGE
    staged = store.staging_path()
    staged.write_bytes(b"M" * 5000)
    await store.put_file("moved", staged, move=True)
    assert not staged.exists() and bytes((await store.get("moved"))[0]) == b"M" * 5000
    small = tmp_path / "small.bin"
    small.write_bytes(b"tiny")
    await store.put_file("small", small)
    assert bytes((await store.get("small"))[0]) == b"tiny"
    with pytest.raises(NotFound, match="no such file"):
        await store.put_file("gone", tmp_path / "absent")
    with pytest.raises(Conflict):
        await store.put_file("copied", source, expected_version=version + 1)
    assert await store.usage() == len(LARGE) + 5000 + 4


async def test_half_received_values_are_cleared_by_age(store: ObjectStore) -> None:
    assert await store.clear_staging() == 0  # (no staging directory yet)
    fresh, stale = store.staging_path(), store.staging_path()
    assert fresh != stale and fresh.parent == stale.parent == store.root / "staging"
    fresh.write_bytes(b"f")
    stale.write_bytes(b"s")
    old = time.time() - 100
    os.utime(stale, (old, old))
    assert await store.clear_staging(older_than_s=50) == 1
    assert fresh.exists() and not stale.exists()
    assert await store.clear_staging() == 1 and not fresh.exists()


async def test_a_staged_file_is_moved_in_a_store_that_syncs_too(tmp_path: Path) -> None:
    # (A syncing store stages on a worker thread, to fsync there: the file is still taken
    # over, not copied and left behind.)
    kv = LevelDBKV.open(str(tmp_path / "db"))
    try:
        store = ObjectStore(kv, tmp_path / "objects", sync=True)
        staged = store.staging_path()
        staged.write_bytes(LARGE)
        version = await store.put_file("k", staged, move=True)
        assert not staged.exists()
        assert await store.get("k") == (memoryview(LARGE), version)
    finally:
        await kv.aclose()


async def test_an_open_read_of_a_value_replaced_meanwhile_reads_again(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record read names a file a later put has since removed: the open read looks at
    the record again (the next is the new value's), or, if it keeps changing, says so."""
    await store.put("k", LARGE)
    stale = await store._load("k")
    newer = await store.put("k", b"N" * 20_000)
    real_load = store._load
    loads = 0

    async def load_stale_once(key: str) -> Any:
        nonlocal loads
        loads += 1
        return stale if loads == 1 else await real_load(key)

    monkeypatch.setattr(store, "_load", load_stale_once)
    opened, info = await store.open_with_info("k")
    assert isinstance(opened, io.IOBase)
    with opened:
        assert (opened.read(), info.version, loads) == (b"N" * 20_000, newer, 2)

    async def load_stale(key: str) -> Any:
        return stale

    monkeypatch.setattr(store, "_load", load_stale)
    with pytest.raises(StorageError, match="'k' kept changing while being read"):
        await store.open_with_info("k")


async def test_a_key_is_checked_on_every_operation(store: ObjectStore) -> None:
    calls = (
        store.get(""),
        store.get_with_info("a\0b"),
        store.info(""),
        store.delete(""),
        store.add_ref(""),
        store.pin(""),
        store.open_local(""),
        store.open_with_info("a\0b"),
    )
    for call in calls:
        with pytest.raises(InvalidArgument):
            await call
    with pytest.raises(InvalidArgument, match="at most 1024 bytes"):
        await store.put("é" * 513, b"v")  # 1026 bytes of UTF-8, 513 characters
    await store.put("é" * 512, b"v")  # exactly 1024 bytes
    with pytest.raises(InvalidArgument, match="expected version"):
        await store.delete("k", expected_version=-1)


async def test_a_value_at_the_maximum_is_taken_and_one_over_it_is_not(store: ObjectStore) -> None:
    await store.put("max", b"m" * 100_000)
    with pytest.raises(ResourceExhausted, match="the maximum is 100000"):
        await store.put("over", b"m" * 100_001)
    await store.put("fill", b"f" * 100_000)  # exactly the capacity
    with pytest.raises(ResourceExhausted, match="object store full"):
        await store.put("one-more", b"x")
    await store.delete("fill")
    assert await store.usage() == 100_000


async def test_the_transfer_service_reads_a_copy_as_a_file_or_bytes(store: ObjectStore) -> None:
    large = await store.put("large", LARGE)
    small = await store.put("small", b"abc")
    source, size, version = await store.open_local("large")
    assert not isinstance(source, bytes)
    with source:
        assert (source.read(), size, version) == (LARGE, len(LARGE), large)
    assert await store.open_local("small") == (b"abc", 3, small)
    with pytest.raises(NotFound):
        await store.open_local("absent")
    assert sorted(await store.held()) == [("large", large, len(LARGE)), ("small", small, 3)]


async def test_an_open_read_gives_the_file_or_bytes_with_what_info_says(
    store: ObjectStore,
) -> None:
    large = await store.put("large", LARGE)
    await store.pin("large")
    opened, info = await store.open_with_info("large")
    assert isinstance(opened, io.IOBase)
    with opened:
        assert opened.read() == LARGE
    assert info == await store.info("large")
    assert (info.version, info.size, info.pinned) == (large, len(LARGE), True)
    small = await store.put("small", b"abc")
    assert await store.open_with_info("small") == (b"abc", await store.info("small"))
    assert (await store.info("small")).version == small
    with pytest.raises(NotFound):
        await store.open_with_info("absent")


async def test_the_sweeper_collects_on_its_interval_until_stopped(tmp_path: Path) -> None:
    import anyio

    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    try:
        store = ObjectStore(kv, tmp_path / "objects", gc_grace_s=0.0, gc_interval_s=0.01)
        await store.put("idle", b"x")
        async with anyio.create_task_group() as tg:
            async with store.sweeping(tg):
                with anyio.fail_after(30):
                    while await store.list():
                        await anyio.sleep(0.01)
        idle = ObjectStore(kv, tmp_path / "objects", gc_grace_s=0.0, gc_interval_s=0)
        await idle.put("stays", b"x")
        async with anyio.create_task_group() as tg, idle.sweeping(tg):
            await anyio.sleep(0.05)
        assert [i.key for i in await idle.list()] == ["stays"]  # interval 0: no sweeper
    finally:
        await kv.aclose()
