"""The object store's rules the full mutation run of store/objects.py showed unchecked
(docs/mutation/REPORT.md, "store/objects.py, the full run"): idle times on a clock the
test moves, exact to the second; races made exact by a real KV that runs another writer
at a chosen moment (a value replaced while it is read, an object changed while it is
collected); value files old enough to pass for orphans; a fetch cut short, refused for
room, racing another, or overtaken by a new version; a put's copy still landing; corrupt
metadata and damaged files; task references counted per task; the operator's log lines.
All on real LevelDB files and value files, in process (milliseconds a test)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from log_capture import SpearLog

from spear.core.object_index import ObjectIndex
from spear.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StorageError,
    Unavailable,
)
from spear.store import objects
from spear.store.leveldb import LevelDBKV
from spear.store.objects import META, ObjectStore, result_key
from tests.store.test_objects_rules import LARGE, IndexAuthority, held, value_files

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from spear.store.kv import KV
    from spear.store.object_info import ObjectInfo

HOUR = 3600.0


class Clock:
    """The store's `time` module: `time()` answers `now`, which only the test moves
    (whole seconds, so differences of times are exact)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(objects, "time", clock)
    return clock


class RacingKV:
    """A real KV that runs `hook` once, right after (or, `before`, right before) the
    `nth` call of `method` on `key`: another writer acting at that exact moment."""

    def __init__(
        self,
        kv: KV,
        method: str,
        key: str,
        hook: Callable[[], Awaitable[Any]],
        nth: int = 1,
        *,
        before: bool = False,
    ) -> None:
        self._kv, self._method, self._key, self._hook = kv, method, key, hook
        self._left, self._before = nth, before

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._kv, name)
        if name != self._method:
            return real

        async def call(key: str, *args: Any) -> Any:
            hook = None
            if key == self._key and self._left > 0:
                self._left -= 1
                hook = self._hook if self._left == 0 else None
            if hook is not None and self._before:
                await hook()
            result = await real(key, *args)
            if hook is not None and not self._before:
                await hook()
            return result

        return call


@pytest.fixture
async def kv(tmp_path: Path) -> AsyncIterator[KV]:
    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    try:
        yield kv
    finally:
        await kv.aclose()


@pytest.fixture
def store(kv: KV, tmp_path: Path) -> ObjectStore:
    return ObjectStore(kv, tmp_path / "objects", max_bytes=100_000, capacity_bytes=200_000)


def make_old(path: Path, now: float) -> None:
    """Give a value file the age of an orphan (written an hour before `now`)."""
    os.utime(path, (now - HOUR, now - HOUR))


# -- idle times, on the clock ------------------------------------------------------------


async def test_every_change_restarts_an_objects_idle_time(
    clock: Clock, kv: KV, tmp_path: Path
) -> None:
    store = ObjectStore(kv, tmp_path / "objects", gc_grace_s=60)
    t0 = clock.now
    for key in ("untouched", "overwritten", "unpinned", "released"):
        await store.put(key, b"v")
    await store.pin("unpinned")
    clock.now = t0 + 100
    await store.put("overwritten", b"w")
    await store.unpin("unpinned")
    await store.add_ref("released", holder="task-1")
    await store.release_holder("task-1")
    info = await store.info("overwritten")
    assert (info.created_at, info.updated_at) == (t0, t0 + 100)
    clock.now = t0 + 159  # the others idle 59 s: not yet
    assert await store.collect() == ["untouched"]
    clock.now = t0 + 160  # idle exactly the grace: collected
    assert await store.collect() == ["overwritten", "released", "unpinned"]


async def test_a_task_that_holds_nothing_of_an_object_leaves_it_untouched(
    clock: Clock, store: ObjectStore
) -> None:
    t0 = clock.now
    await store.put("returned", b"r")
    await store.pin("returned")  # (kept at no references)
    await store.put("kept", b"k")
    await store.add_ref("returned", holder="task-1")
    await store.remove_ref("returned", holder="task-1")  # given back before the task ends
    await store.add_ref("kept", holder="task-1")
    clock.now = t0 + 100
    await store.release_holder("task-1")
    returned, kept = await store.info("returned"), await store.info("kept")
    assert (returned.refs, returned.updated_at) == (0, t0)  # not touched by the release
    assert (kept.refs, kept.updated_at) == (0, t0 + 100)  # released after the one skipped


# -- references a task holds, counted per task -------------------------------------------


async def test_a_task_releases_exactly_the_references_it_still_holds(store: ObjectStore) -> None:
    keys = ("twice", "half", "given-back", "not-its-own")
    for key in keys:
        await store.put(key, b"v")
        await store.pin(key)  # (kept at no references: the counts stay readable)
        await store.add_ref(key)  # somebody else's reference
    await store.add_ref("twice", holder="task-1")
    await store.add_ref("twice", holder="task-1")
    await store.add_ref("half", holder="task-1")
    await store.add_ref("half", holder="task-1")
    await store.remove_ref("half", holder="task-1")
    await store.add_ref("given-back", holder="task-1")
    await store.remove_ref("given-back", holder="task-1")
    # task-1 drops a reference it never took (the other holder's), then takes one.
    await store.remove_ref("not-its-own", holder="task-1")
    await store.add_ref("not-its-own", holder="task-1")
    assert [(await store.info(k)).refs for k in keys] == [3, 2, 1, 1]
    await store.release_holders(["task-0", "task-1"])
    assert [(await store.info(k)).refs for k in keys] == [1, 1, 1, 0]
    await store.release_holder("task-1")  # (ended already: nothing more)
    await store.release_holder("never-held-anything")
    assert (await store.info("twice")).refs == 1


# -- versions and conflicts ---------------------------------------------------------------


async def test_an_overwrite_reads_back_under_its_own_version_keeping_refs_and_pin(
    store: ObjectStore,
) -> None:
    first = await store.put("k", b"one")
    await store.add_ref("k")
    await store.pin("k")  # (both store the version explicitly in the metadata)
    second = await store.put("k", b"two")
    assert second > first
    value, version = await store.get("k")
    assert (bytes(value), version) == (b"two", second)
    info = await store.info("k")
    assert (info.key, info.version, info.refs, info.pinned) == ("k", second, 1, True)
    assert [i.version for i in await store.list("k")] == [second]
    assert await store.put("k", b"three", expected_version=second) > second


async def test_a_conflict_says_what_the_object_is_at(store: ObjectStore) -> None:
    await store.put("large", LARGE)  # (the value directories exist)
    with pytest.raises(Conflict) as caught:
        await store.put("k", b"v", expected_version=1)  # absent, version 1 expected
    assert str(caught.value) == "object 'k' does not exist (expected version 1)"
    with pytest.raises(NotFound):
        await store.get("k")  # (nothing was created)
    version = await store.put("k", b"v", expected_version=0)
    with pytest.raises(Conflict) as caught:
        await store.put("k", b"w", expected_version=version + 1)
    assert str(caught.value) == f"object 'k' is at version {version}, not {version + 1}"
    with pytest.raises(Conflict) as caught:
        await store.put("k", b"w", expected_version=0)
    assert str(caught.value) == f"object 'k' is at version {version}, not 0"
    assert bytes((await store.get("k"))[0]) == b"v"


# -- reads racing writers, damage --------------------------------------------------------


async def test_a_read_racing_an_overwrite_reads_the_new_value(kv: KV, tmp_path: Path) -> None:
    root = tmp_path / "objects"
    writer = ObjectStore(kv, root)  # another writer on the same data dir
    await writer.put("k", LARGE)
    values = iter([b"A" * 10_000, b"B" * 10_000, b"C" * 10_000])

    async def overwrite() -> None:
        await writer.put("k", next(values))  # (unlinks the file just read of)

    def racing() -> ObjectStore:
        # Overwritten just after the reader read the metadata, before it opens the file.
        return ObjectStore(RacingKV(kv, "get", META + "k", overwrite), root)  # type: ignore[arg-type]

    value, version = await racing().get("k")
    assert bytes(value) == b"A" * 10_000 and version == (await writer.info("k")).version
    value, info = await racing().get_with_info("k")
    assert bytes(value) == b"B" * 10_000 and info == await writer.info("k")
    source, size, version = await racing().open_local("k")
    assert not isinstance(source, bytes)
    with source:
        assert (source.read(), size) == (b"C" * 10_000, 10_000)
    assert version == (await writer.info("k")).version


async def test_a_value_file_gone_for_good_is_an_error_not_a_wrong_value(
    store: ObjectStore,
) -> None:
    await store.put("k", LARGE)
    (file,) = value_files(store)
    file.unlink()  # (lost by hand: the metadata still names it)
    for read in (store.get, store.get_with_info, store.open_local):
        with pytest.raises(StorageError) as caught:
            await read("k")
        assert str(caught.value) == "object 'k' kept changing while being read"


async def test_a_damaged_value_file_is_refused(store: ObjectStore) -> None:
    await store.put("k", LARGE)
    (file,) = value_files(store)
    file.write_bytes(b"short")
    with pytest.raises(StorageError) as caught:
        await store.get("k")
    assert str(caught.value) == f"the value file of {file.name} is damaged (wrong size)"


async def test_corrupt_metadata_is_a_storage_error_naming_it(kv: KV, store: ObjectStore) -> None:
    await kv.put(META + "bad", b"{not json\0")
    reads: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get("bad"),
        lambda: store.info("bad"),
        lambda: store.list(),
    ]
    for read in reads:
        with pytest.raises(StorageError) as caught:
            await read()
        assert str(caught.value) == "corrupt object metadata for 'obj/bad'"


# -- files --------------------------------------------------------------------------------


async def test_a_store_that_syncs_keeps_values_written_and_copied(kv: KV, tmp_path: Path) -> None:
    store = ObjectStore(kv, tmp_path / "objects", sync=True)
    source = tmp_path / "source.bin"
    source.write_bytes(b"F" * 9000)
    await store.put("written", LARGE)
    await store.put_file("copied", source)
    assert bytes((await store.get("written"))[0]) == LARGE
    assert bytes((await store.get("copied"))[0]) == b"F" * 9000
    assert source.exists() and len(value_files(store)) == 2


# -- collection: value files as old as orphans -------------------------------------------


async def test_collection_keeps_the_files_of_objects_it_keeps_however_old(
    clock: Clock, kv: KV, store: ObjectStore
) -> None:
    await store.put("pinned", LARGE)
    await store.pin("pinned")
    await store.put("busy", b"b" * 9000)
    for file in value_files(store):
        make_old(file, clock.now)  # written long ago, as an orphan would have been
    clock.now += 2 * HOUR

    async def take_a_reference() -> None:
        await ObjectStore(kv, store.root).add_ref("busy")

    # "busy" is idle and free when collection reads it, referenced when it deletes it.
    racing_kv = RacingKV(kv, "compare_and_swap", META + "busy", take_a_reference, before=True)
    racing = ObjectStore(racing_kv, store.root)  # type: ignore[arg-type]
    assert await racing.collect(60) == []
    assert bytes((await store.get("pinned"))[0]) == LARGE
    assert bytes((await store.get("busy"))[0]) == b"b" * 9000
    assert (await store.info("busy")).refs == 1 and len(value_files(store)) == 2


# -- the cluster path ---------------------------------------------------------------------


class HookedAuthority(IndexAuthority):
    """IndexAuthority with moments a test can act at: a put held between its commit with
    the index and keeping its copy (`gate`), something run as a fetch starts
    (`before_fetch`), a fetch cut short after writing part of the value (`cut_fetch`),
    no holder left (`holders_gone`), an index that cannot be told of a new copy
    (`hold_fails`)."""

    def __init__(self, index: ObjectIndex, node: str, stores: dict[str, ObjectStore]) -> None:
        super().__init__(index, node, stores)
        self.gate: anyio.Event | None = None
        self.gate_once = False  # only the first commit waits at the gate
        self.committed = anyio.Event()
        self.before_fetch: Callable[[], Awaitable[Any]] | None = None
        self.cut_fetch = False
        self.holders_gone = False
        self.hold_fails = False
        self.releases: list[tuple[str, int]] = []

    async def commit(
        self, key: str, size: int, expected_version: int | None, value: bytes | None = None
    ) -> int:
        version = await super().commit(key, size, expected_version, value)
        if self.gate is not None and not (self.gate_once and self.committed.is_set()):
            self.committed.set()
            await self.gate.wait()
        return version

    async def current(self, key: str) -> ObjectInfo:
        info = await super().current(key)
        if self.gate is not None:
            self.gate.set()  # (the put goes on once this reader waits for something)
        return info

    async def fetch(self, key: str, info: ObjectInfo, dest: Path) -> None:
        if self.before_fetch is not None:
            hook, self.before_fetch = self.before_fetch, None
            await hook()
        if self.holders_gone:
            raise Unavailable(f"object {key!r} (version {info.version}) has no holder")
        if self.cut_fetch:
            dest.write_bytes(b"part of it")
            raise Unavailable(f"the holder of {key!r} went away during the transfer")
        await super().fetch(key, info, dest)

    async def hold(self, key: str, version: int) -> None:
        if self.hold_fails:
            raise Unavailable("the SMS is not reachable")
        await super().hold(key, version)


class Nodes:
    def __init__(self, sms: KV, kvs: list[KV], root: Path, **kw: Any) -> None:
        self.index = ObjectIndex(sms)
        self.stores: dict[str, ObjectStore] = {}
        self.authorities: dict[str, HookedAuthority] = {}
        for i, kv in enumerate(kvs, 1):
            name = f"node-{i}"
            authority = HookedAuthority(self.index, name, self.stores)
            self.authorities[name] = authority
            options: dict[str, Any] = {"capacity_bytes": 10**6, **kw.get(name, {})}
            self.stores[name] = ObjectStore(kv, root / name, authority=authority, **options)
        self.kvs = kvs
        self.root = root


async def nodes_on(tmp_path: Path, **kw: Any) -> AsyncIterator[Nodes]:
    kvs = [LevelDBKV.open(str(tmp_path / f"{n}.ldb")) for n in ("sms", "n1", "n2")]
    try:
        yield Nodes(kvs[0], kvs[1:], tmp_path, **kw)
    finally:
        for kv in kvs:
            await kv.aclose()


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async for made in nodes_on(tmp_path):
        yield made


async def test_a_get_on_the_writers_node_waits_for_its_copy_landing(nodes: Nodes) -> None:
    one, authority = nodes.stores["node-1"], nodes.authorities["node-1"]
    await one.landed("k")  # (nothing landing: at once)
    authority.gate = anyio.Event()
    versions: list[int] = []

    async def put() -> None:
        versions.append(await one.put("k", LARGE))

    async with anyio.create_task_group() as tg:
        tg.start_soon(put)
        await authority.committed.wait()  # committed with the index, not kept here yet
        value, version = await one.get("k")
    assert (bytes(value), [version]) == (LARGE, versions)
    assert authority.fetches == []  # its own copy, not fetched from anyone


async def test_a_first_read_of_a_fetched_copy_says_its_size(nodes: Nodes) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    version = await one.put("k", LARGE)
    value, info = await two.get_with_info("k")
    assert (bytes(value), info.version, info.size) == (LARGE, version, len(LARGE))


async def test_a_newer_copy_is_described_as_the_bytes_served(nodes: Nodes) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    first = await one.put("k", LARGE)
    await two.get("k")
    second = await one.put("k", b"N" * 20_000)
    # node-2's copy was adopted under a version after the cluster's (an SMS that lost
    # its store): it is served as itself, 10,000 bytes, not as the cluster's 20,000.
    await two.relabel("k", first, second + 5)
    value, info = await two.get_with_info("k")
    assert (bytes(value), info.version, info.size) == (LARGE, second + 5, len(LARGE))


async def test_a_fetch_overtaken_by_a_new_version_reads_the_new_one(nodes: Nodes) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    await one.put("k", LARGE)

    async def overwrite() -> None:
        await one.put("k", b"N" * 20_000)  # the holder moves on while node-2 asks for it

    nodes.authorities["node-2"].before_fetch = overwrite
    value, version = await two.get("k")
    assert (bytes(value), version) == (b"N" * 20_000, (await one.info("k")).version)
    assert await held(two) == {"k": version}


async def test_a_fetch_with_no_holder_left_fails_and_keeps_nothing(nodes: Nodes) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    await one.put("k", LARGE)
    nodes.authorities["node-2"].holders_gone = True  # the only holder left the cluster
    with pytest.raises(Unavailable, match="has no holder"):
        await two.get("k")
    assert await held(two) == {} and value_files(two) == []
    await two.put("fill", b"f" * 10**6)  # no room left reserved by the failed fetch


async def test_a_transfer_cut_short_leaves_no_part_and_no_reservation(nodes: Nodes) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    await one.put("k", LARGE)
    nodes.authorities["node-2"].cut_fetch = True
    with pytest.raises(Unavailable, match="went away during the transfer"):
        await two.get("k")
    assert await held(two) == {} and value_files(two) == []
    await two.put("fill", b"f" * 10**6)  # the capacity exactly: nothing still reserved
    nodes.authorities["node-2"].cut_fetch = False
    await two.delete("fill")
    assert bytes((await two.get("k"))[0]) == LARGE


@pytest.mark.parametrize("inline_max", [objects.INLINE_MAX, 20_000], ids=["file", "inline"])
async def test_two_reads_fetching_at_once_keep_one_copy(tmp_path: Path, inline_max: int) -> None:
    async for nodes in nodes_on(tmp_path, **{"node-2": {"inline_max": inline_max}}):
        await two_reads_fetching_at_once(nodes, in_files=len(LARGE) > inline_max)


async def two_reads_fetching_at_once(nodes: Nodes, in_files: bool) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    version = await one.put("k", LARGE)
    both_fetching = anyio.Event()
    arrived = 0

    async def meet() -> None:  # each read waits here until the other has started its fetch
        nonlocal arrived
        arrived += 1
        if arrived == 1:
            nodes.authorities["node-2"].before_fetch = meet
            await both_fetching.wait()
        else:
            both_fetching.set()

    nodes.authorities["node-2"].before_fetch = meet
    got: list[tuple[bytes, int]] = []

    async def read() -> None:
        value, v = await two.get("k")
        got.append((bytes(value), v))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        tg.start_soon(read)
    assert got == [(LARGE, version), (LARGE, version)]
    assert len(nodes.authorities["node-2"].fetches) == 2
    assert await held(two) == {"k": version} and len(value_files(two)) == int(in_files)
    assert await two.usage() == len(LARGE)
    await two.put("fill", b"f" * (10**6 - len(LARGE)))  # nothing left reserved


async def test_a_fetch_that_does_not_fit_is_refused_naming_the_object(tmp_path: Path) -> None:
    async for nodes in nodes_on(tmp_path, **{"node-2": {"capacity_bytes": 5000}}):
        await nodes.stores["node-1"].put("k", LARGE)
        with pytest.raises(ResourceExhausted) as caught:
            await nodes.stores["node-2"].get("k")
        assert str(caught.value) == (
            "object store full: 'k' needs 10000 bytes, 0 of 5000 are in use"
            " (setting object_store_capacity_bytes)"
        )


async def test_a_fetched_copy_up_to_the_inline_size_is_kept_inline(tmp_path: Path) -> None:
    # node-2 inlines up to 20,000 bytes; the index keeps values only up to 4 KiB, so
    # these are fetched from node-1.
    async for nodes in nodes_on(tmp_path, **{"node-2": {"inline_max": 20_000}}):
        one, two = nodes.stores["node-1"], nodes.stores["node-2"]
        await one.put("at", b"a" * 20_000)
        await one.put("over", b"o" * 20_001)
        for sub in (f"{i:02x}" for i in range(256)):  # every value directory made already
            (two.root / sub).mkdir(parents=True, exist_ok=True)
        assert bytes((await two.get("at"))[0]) == b"a" * 20_000
        assert value_files(two) == []
        assert bytes((await two.get("over"))[0]) == b"o" * 20_001
        assert len(value_files(two)) == 1
        assert await two.usage() == 40_001


async def test_a_copy_is_served_though_the_index_cannot_be_told_of_it(nodes: Nodes) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    version = await one.put("k", LARGE)
    nodes.authorities["node-2"].hold_fails = True
    value, got = await two.get("k")
    assert (bytes(value), got) == (LARGE, version)
    assert await held(two) == {"k": version}  # kept: a cache nobody hears of


async def test_a_task_ending_releases_each_reference_it_took_in_the_cluster(
    nodes: Nodes,
) -> None:
    one = nodes.stores["node-1"]
    await one.put("k", b"v")
    await one.add_ref("k")  # somebody else's
    await one.add_ref("k", holder="task-1")
    await one.add_ref("k", holder="task-1")
    assert (await one.info("k")).refs == 3
    await one.release_holder("task-1")
    assert (await one.info("k")).refs == 1


async def test_cluster_collection_keeps_current_copies_files_however_old(nodes: Nodes) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    kept = await one.put("k", LARGE)
    await one.pin("k")
    await two.get("k")
    stale = await one.put("old", b"o" * 9000)
    await one.pin("old")
    await two.get("old")
    current = await one.put("old", b"n" * 9000)  # node-2's copy of "old" is stale now
    now = time.time()
    for file in value_files(one) + value_files(two):
        make_old(file, now)

    async def relabel() -> None:
        await two.relabel("old", stale, current)

    # Just as node-2's collection drops its stale copy, the copy changes (relabelled).
    racing_kv = RacingKV(nodes.kvs[1], "compare_and_swap", META + "old", relabel, before=True)
    racing = ObjectStore(racing_kv, two.root, authority=nodes.authorities["node-2"])  # type: ignore[arg-type]
    assert await racing.collect(0) == []
    assert await held(two) == {"k": kept, "old": current}
    assert bytes((await two.get_local("k"))[0]) == LARGE
    assert bytes((await two.get_local("old"))[0]) == b"o" * 9000  # changed: it stays whole
    assert await one.collect(0) == []
    assert bytes((await one.get("k"))[0]) == LARGE
    assert len(value_files(one)) == 2


# -- results and what an operator reads ---------------------------------------------------


async def test_a_result_set_by_the_task_is_kept_over_its_stdout(
    store: ObjectStore, tmp_path: Path
) -> None:
    stdout = tmp_path / "out.txt"
    stdout.write_bytes(b"printed")
    await store.put(result_key("t"), b"set by the task")
    await store.store_results([("t", stdout)])
    await store.store_result("t", stdout)
    assert bytes((await store.get(result_key("t")))[0]) == b"set by the task"


async def test_empty_results_written_together_read_as_empty_new_objects(
    clock: Clock, store: ObjectStore
) -> None:
    await store.store_results([("a", None), ("b", None)])
    for task in ("a", "b"):
        info = await store.info(result_key(task))
        assert (info.size, info.refs, info.pinned, info.created_at) == (0, 0, False, clock.now)
    assert await store.usage() == 0


async def test_results_are_not_stored_in_a_store_over_its_capacity(kv: KV, tmp_path: Path) -> None:
    await ObjectStore(kv, tmp_path / "objects").put("big", b"x" * 100)
    smaller = ObjectStore(kv, tmp_path / "objects", capacity_bytes=50)  # lowered since
    with SpearLog("WARNING", "{message}") as logged:
        await smaller.store_results([("a", None), ("b", None)])
    for task in ("a", "b"):
        with pytest.raises(NotFound):
            await smaller.info(result_key(task))
    assert [line.rstrip("\n") for line in logged] == [
        f"task {task}: result not stored: object store full: 'results/{task}' needs 0 bytes,"
        " 100 of 50 are in use (setting object_store_capacity_bytes)"
        for task in ("a", "b")
    ]


async def test_what_an_operator_reads_of_collections(kv: KV, nodes: Nodes) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    local = ObjectStore(kv, nodes.root / "local")
    await local.put("a", b"a")
    await local.put("b", b"b")
    await one.put("k", b"c")
    with SpearLog("DEBUG", "{name} {level}: {message}") as logged:
        assert await local.collect(0) == ["a", "b"]
        assert await one.collect(0) == ["k"]
        await two.collect(0)  # (nothing: no line)
        await local.put("r", b"r")
        await local.add_ref("r")
        await local.remove_ref("r")
    mine = [line.rstrip("\n") for line in logged if line.startswith("spear.store.objects ")]
    assert [line.removeprefix("spear.store.objects ") for line in mine] == [
        "INFO: collected 2 unreferenced object(s)",
        "INFO: collected 1 unreferenced object(s) in the cluster",
        "DEBUG: object r collected: its last reference went away",
    ]


# -- more of the local store: usage, races on a last reference, orphans, the sweeper -------


async def test_usage_follows_puts_overwrites_and_deletes_exactly(
    kv: KV, store: ObjectStore
) -> None:
    await store.put("a", b"a" * 10_000)
    await store.put("b", b"b" * 300)
    await store.put("c", b"c" * 7000)
    await store.put("b", b"B" * 500)  # replaced: its old size no longer counts
    assert await store.usage() == 17_500
    await store.delete("c")
    assert await store.usage() == 10_500
    await store.add_ref("a")
    await store.remove_ref("a")  # its last reference: collected at once
    assert await store.usage() == 500
    await store.put("d", b"d" * 250)
    assert await store.usage() == 750
    assert await ObjectStore(kv, store.root).usage() == 750  # as read back from disk


async def test_a_last_reference_dropped_as_another_is_taken_keeps_the_object(
    kv: KV, store: ObjectStore
) -> None:
    await store.put("k", b"v" * 9000)
    await store.add_ref("k")

    async def take_one() -> None:
        await ObjectStore(kv, store.root).add_ref("k")

    racing_kv = RacingKV(kv, "compare_and_swap", META + "k", take_one, before=True)
    racing = ObjectStore(racing_kv, store.root)  # type: ignore[arg-type]
    assert await racing.remove_ref("k") == 1  # counted again: one reference left
    assert (await store.info("k")).refs == 1
    assert bytes((await store.get("k"))[0]) == b"v" * 9000


async def test_collection_removes_only_old_files_no_object_names(
    clock: Clock, kv: KV, store: ObjectStore
) -> None:
    await store.put("lost", LARGE)
    await kv.delete(META + "lost")  # its metadata gone (as after a crash): an orphan
    (lost,) = value_files(store)
    make_old(lost, clock.now)
    at_grace = store.root / "cd" / ("cd" + "1" * 30)  # unnamed exactly ORPHAN_GRACE_S
    young = store.root / "ef" / ("ef" + "2" * 30)  # a put still writing its value
    foreign = [store.root / "keep-me" / "notes.txt", store.root / "xyz" / "old.bin"]
    for path in (at_grace, young, *foreign):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    os.utime(at_grace, (clock.now - objects.ORPHAN_GRACE_S,) * 2)
    for path in foreign:
        make_old(path, clock.now)
    (store.root / "gh").write_bytes(b"a file where a value directory would be")
    vanished = store.root / "ij" / ("ij" + "3" * 30)
    vanished.parent.mkdir()
    vanished.symlink_to(store.root / "nothing")  # gone by the time it is looked at
    orphans = []
    for i in range(5):  # in several directories, whatever order they are listed in
        orphan = store.root / f"0{i}" / (f"0{i}" + "4" * 30)
        orphan.parent.mkdir(exist_ok=True)  # the lost value may share it
        orphan.write_bytes(b"o")
        make_old(orphan, clock.now)
        orphans.append(orphan)
    assert await store.collect(HOUR) == []
    assert not lost.exists() and not any(o.exists() for o in orphans)
    assert at_grace.exists() and young.exists() and all(p.exists() for p in foreign)


async def test_an_object_whose_value_file_was_lost_can_still_be_deleted(
    store: ObjectStore,
) -> None:
    await store.put("k", LARGE)
    (file,) = value_files(store)
    file.unlink()
    await store.delete("k")
    assert await store.list() == [] and await store.usage() == 0


async def test_a_failed_sweep_is_logged_and_the_next_one_runs(kv: KV, tmp_path: Path) -> None:
    store = ObjectStore(kv, tmp_path / "objects", gc_grace_s=0.0, gc_interval_s=0.01)
    await store.put("idle", b"x")
    await kv.put(META + "bad", b"{not json\0")
    with SpearLog("ERROR", "{message}") as logged:
        async with anyio.create_task_group() as tg, store.sweeping(tg):
            with anyio.fail_after(30):
                while not logged:
                    await anyio.sleep(0.01)
                await kv.delete(META + "bad")
                while await kv.get(META + "idle") is not None:
                    await anyio.sleep(0.01)
    assert logged[0].startswith("object collection failed\n")
    assert "corrupt object metadata for 'obj/bad'" in logged[0]


async def test_limits_and_absence_are_said_in_full(store: ObjectStore) -> None:
    with pytest.raises(ResourceExhausted) as caught:
        await store.put("big", b"b" * 100_001)
    assert str(caught.value) == (
        "object 'big' is 100001 bytes; the maximum is 100000 (setting object_max_bytes)"
    )
    await store.put("a", b"a" * 100_000)
    await store.put("b", b"b" * 99_000)
    with pytest.raises(ResourceExhausted) as caught:
        await store.put("c", b"c" * 1001)
    assert str(caught.value) == (
        "object store full: 'c' needs 1001 bytes, 199000 of 200000 are in use"
        " (setting object_store_capacity_bytes)"
    )
    for read in (store.get, store.info, store.delete, store.open_local):
        with pytest.raises(NotFound) as missing:
            await read("c")
        assert str(missing.value) == "no such object: c"


async def test_a_value_up_to_the_inline_size_lives_in_the_metadata(store: ObjectStore) -> None:
    await store.put("at", b"a" * objects.INLINE_MAX)
    assert value_files(store) == []
    await store.put("over", b"o" * (objects.INLINE_MAX + 1))
    assert len(value_files(store)) == 1
    assert bytes((await store.get("at"))[0]) == b"a" * objects.INLINE_MAX


async def test_a_file_that_changes_while_it_is_stored_is_refused(kv: KV, tmp_path: Path) -> None:
    source = tmp_path / "stdout"
    source.write_bytes(b"first line\n")

    async def write_more() -> None:
        with source.open("ab") as f:
            f.write(b"second line\n")  # the task is still writing it

    # (the store's first look at its usage comes between the file's size and its read)
    racing_kv = RacingKV(kv, "scan", META, write_more, before=True)
    racing = ObjectStore(racing_kv, tmp_path / "o", capacity_bytes=1000)  # type: ignore[arg-type]
    with pytest.raises(StorageError) as caught:
        await racing.put_file("r", source)
    assert str(caught.value) == f"{source} changed size while being stored"
    with pytest.raises(NotFound):
        await racing.get("r")
    assert await racing.usage() == 0
    await racing.put("fill", b"f" * 1000)  # the capacity exactly: nothing still reserved


async def test_a_put_overtaken_by_a_later_one_keeps_the_later(nodes: Nodes) -> None:
    one, authority = nodes.stores["node-1"], nodes.authorities["node-1"]
    authority.gate = anyio.Event()
    authority.gate_once = True
    versions: list[int] = []

    async def first_put() -> None:
        versions.append(await one.put("k", LARGE))

    async with anyio.create_task_group() as tg:
        tg.start_soon(first_put)
        await authority.committed.wait()  # committed, its copy not kept yet
        later = await one.put("k", b"N" * 20_000)  # committed and kept meanwhile
        authority.gate.set()
    assert versions[0] < later
    assert await held(one) == {"k": later} and len(value_files(one)) == 1
    assert bytes((await one.get("k"))[0]) == b"N" * 20_000
    assert await one.usage() == 20_000
    await one.put("fill", b"f" * (10**6 - 20_000))  # nothing left reserved


async def test_half_received_values_are_cleared_and_counted_to_the_second(
    clock: Clock, store: ObjectStore
) -> None:
    stale = [store.staging_path() for _ in range(2)]
    at_limit, fresh = store.staging_path(), store.staging_path()
    for path, age in ((stale[0], 80), (stale[1], 90), (at_limit, 50), (fresh, 49)):
        path.write_bytes(b"part")
        os.utime(path, (clock.now - age,) * 2)
    (store.root / "staging" / "gone").symlink_to(store.root / "nothing")  # (removed meanwhile)
    with SpearLog("INFO", "{message}") as logged:
        assert await store.clear_staging(older_than_s=50) == 3
    assert [p.exists() for p in (*stale, at_limit, fresh)] == [False, False, False, True]
    assert [line.rstrip("\n") for line in logged] == ["removed 3 half-received object value(s)"]


@pytest.mark.parametrize("move", [False, True], ids=["copied", "moved"])
@pytest.mark.parametrize("value", [LARGE, b"tiny"], ids=["large", "small"])
async def test_a_file_removed_before_it_is_stored_is_not_found(
    kv: KV, tmp_path: Path, value: bytes, move: bool
) -> None:
    source = tmp_path / "stdout"
    source.write_bytes(value)

    async def remove() -> None:
        source.unlink()

    racing_kv = RacingKV(kv, "scan", META, remove, before=True)
    racing = ObjectStore(racing_kv, tmp_path / "o", capacity_bytes=len(value))  # type: ignore[arg-type]
    with pytest.raises(NotFound) as caught:
        await racing.put_file("r", source, move=move)
    assert str(caught.value) == f"no such file: {source}"
    assert value_files(racing) == [] and await racing.usage() == 0
    await racing.put("fill", value)  # the capacity exactly: nothing still reserved


async def test_a_nodes_copies_read_as_objects_when_it_runs_alone_again(
    clock: Clock, nodes: Nodes
) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    version = await one.put("k", LARGE)
    await two.get("k")
    alone = ObjectStore(nodes.kvs[1], two.root)  # node-2 restarted out of the cluster
    info = await alone.info("k")
    assert (info.version, info.size, info.refs, info.pinned) == (version, len(LARGE), 0, False)
    assert info.created_at == info.updated_at == clock.now
    assert await alone.collect(HOUR) == []
    clock.now += HOUR
    assert await alone.collect(HOUR) == ["k"]


async def test_metadata_with_only_a_size_reads_as_a_new_free_object(
    kv: KV, store: ObjectStore
) -> None:
    # Written by hand (or by a tool that knows only the size): every other field is the
    # value a new object has, and every operation works on it.
    await store.put("released", b"v")
    await store.add_ref("released", holder="task-1")
    for key in ("info", "ref", "unref", "delete", "collect", "released"):
        await kv.put(META + key, b'{"size":1}\0v')
    info = await store.info("info")
    assert (info.size, info.refs, info.pinned, info.created_at, info.updated_at) == (
        1,
        0,
        False,
        0.0,
        0.0,
    )
    assert info.version == (await kv.get(META + "info")).version  # type: ignore[union-attr]
    assert bytes((await store.get("info"))[0]) == b"v"
    assert await store.add_ref("ref") == 1
    with pytest.raises(InvalidArgument, match="has no references to remove"):
        await store.remove_ref("unref")
    await store.delete("delete")  # neither pinned nor referenced: no force needed
    await store.release_holder("task-1")  # (its reference is not there to release)
    assert (await store.info("released")).refs == 0
    # idle since ever: all collected but the one referenced and the one just released
    assert await store.collect(HOUR) == ["collect", "info", "unref"]
    assert [i.key for i in await store.list()] == ["ref", "released"]
    assert await ObjectStore(kv, store.root).usage() == 2  # (counted afresh: written by hand)


async def test_a_bad_key_or_expected_version_is_said_in_full(store: ObjectStore) -> None:
    cases = [
        ("", None, "an object key must be a non-empty string"),
        ("a\0b", None, "an object key must not contain NUL"),
        ("\udcff", None, "an object key must be valid UTF-8 text"),  # argv's byte 0xff
        ("k", -1, "an expected version must be 0 (absent) or a version"),
    ]
    for key, expected, said in cases:
        with pytest.raises(InvalidArgument) as caught:
            await store.put(key, b"v", expected_version=expected)
        assert str(caught.value) == said


async def test_a_store_that_syncs_flushes_each_value_file_before_naming_it(
    monkeypatch: pytest.MonkeyPatch, kv: KV, tmp_path: Path
) -> None:
    flushed: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        flushed.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    source = tmp_path / "source.bin"
    source.write_bytes(b"F" * 9000)
    plain = ObjectStore(kv, tmp_path / "plain")  # (the default: no fsync)
    await plain.put("k", LARGE)
    await plain.put_file("f", source)
    assert flushed == []
    synced = ObjectStore(kv, tmp_path / "synced", sync=True)
    await synced.put("k", LARGE)
    await synced.put_file("f", source)
    assert sorted(flushed) == sorted(p.name for p in value_files(synced))
    assert len(flushed) == 2


async def test_a_buffer_of_wide_items_is_stored_as_its_bytes(store: ObjectStore) -> None:
    import array

    wide = array.array("i", range(3000))  # 12,000 bytes in 3,000 items: a value file
    narrow = array.array("i", [1, 2, 3])  # 12 bytes: inline
    for key, value in (("wide", wide), ("narrow", narrow)):
        await store.put(key, memoryview(value))
        assert bytes((await store.get(key))[0]) == value.tobytes()
        assert (await store.info(key)).size == len(value.tobytes())
    await store.put("bytearray", bytearray(b"ba"))
    assert bytes((await store.get("bytearray"))[0]) == b"ba"


async def test_puts_in_flight_count_against_the_capacity(store: ObjectStore) -> None:
    # Three puts at once that fit two at a time: the third is refused while the first
    # two are still writing their files (their room reserved, not yet used).
    outcomes: dict[str, str] = {}

    async def put(key: str) -> None:
        try:
            await store.put(key, b"p" * 80_000)
            outcomes[key] = "stored"
        except ResourceExhausted as exc:
            outcomes[key] = str(exc)

    async with anyio.create_task_group() as tg:
        for key in ("a", "b", "c"):
            tg.start_soon(put, key)
    assert outcomes == {
        "a": "stored",
        "b": "stored",
        "c": "object store full: 'c' needs 80000 bytes, 160000 of 200000 are in use"
        " (setting object_store_capacity_bytes)",
    }
    assert await store.usage() == 160_000
    await store.put("rest", b"r" * 40_000)  # exactly the room left


async def test_a_value_of_exactly_the_inline_size_is_read_from_the_index(nodes: Nodes) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    version = await one.put("k", b"i" * objects.INLINE_MAX)
    value, got = await two.get("k")
    assert (bytes(value), got) == (b"i" * objects.INLINE_MAX, version)
    assert nodes.authorities["node-2"].fetches == [] and await held(two) == {}


async def test_a_read_overtaken_at_every_fetch_gives_up_saying_so(nodes: Nodes) -> None:
    one, two = nodes.stores["node-1"], nodes.stores["node-2"]
    await one.put("k", LARGE)
    overwrites = 0

    async def overwrite() -> None:  # the holder moves on during every fetch
        nonlocal overwrites
        overwrites += 1
        await one.put("k", bytes([overwrites]) * 10_000)
        nodes.authorities["node-2"].before_fetch = overwrite

    nodes.authorities["node-2"].before_fetch = overwrite
    with pytest.raises(StorageError) as caught:
        await two.get("k")
    assert str(caught.value) == "object 'k' kept changing while being read"
    assert overwrites == 16 and await held(two) == {} and value_files(two) == []


async def test_a_store_made_without_settings_has_the_nodes_defaults(
    clock: Clock, kv: KV, tmp_path: Path
) -> None:
    import dataclasses

    from spear.config import Settings

    default = {f.name: f.default for f in dataclasses.fields(Settings)}
    store = ObjectStore(kv, tmp_path / "objects")
    assert (store.max_bytes, store.capacity_bytes, store.gc_grace_s, store.gc_interval_s) == (
        default["object_max_bytes"],
        default["object_store_capacity_bytes"],
        default["object_gc_grace_s"],
        default["object_gc_interval_s"],
    )
    await store.put("k", b"v")  # a plain put lives a day unless referenced or pinned
    clock.now += 86_399
    assert await store.collect() == []
    clock.now += 1
    assert await store.collect() == ["k"]
