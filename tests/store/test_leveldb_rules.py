"""LevelDB's KV rules stated one by one, in both ways of owning the database (held by a
daemon, shared by short CLI processes): what a caller relies on to not lose or mix up
data. The contract common to etcd is in test_kv_contract.py (held only); these add the
shared mode, closing, reopening, and the edges mutation testing found unchecked
(issue 22).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from spear.errors import StorageError
from spear.store.kv import EventKind, WatchEvent, Write
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture(params=["held", "shared"])
async def kv(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LevelDBKV]:
    store = LevelDBKV.open(str(tmp_path / "db"), hold=request.param == "held")
    try:
        yield store
    finally:
        await store.aclose()


async def test_every_operation_works_and_versions_only_grow(kv: LevelDBKV) -> None:
    assert await kv.get("a") is None
    v1 = await kv.put("a", b"one")
    assert v1 == 1  # a new database starts its revisions at 1
    assert (await kv.get("a")).value == b"one"  # type: ignore[union-attr]
    v2 = await kv.compare_and_swap("a", b"two", v1)
    assert v2 == v1 + 1
    assert await kv.compare_and_swap("a", b"stale", v1) == -1
    assert (await kv.get("a")).value == b"two"  # type: ignore[union-attr]
    v3 = await kv.commit([Write("b", b"bee"), Write("a", b"three", v2)])
    assert v3 == v2 + 1
    assert [(e.key, e.value, e.version) for e in await kv.scan("")] == [
        ("a", b"three", v3),
        ("b", b"bee", v3),
    ]
    assert await kv.delete("b") is True
    assert await kv.delete("b") is False
    assert await kv.get("b") is None
    # Deleted and made again: a version never seen before.
    assert await kv.put("b", b"again") == v3 + 2


async def test_compare_and_swap_deletes_only_at_the_version(kv: LevelDBKV) -> None:
    version = await kv.put("k", b"v")
    assert await kv.compare_and_swap("k", None, version + 1) == -1
    assert await kv.get("k") is not None
    assert await kv.compare_and_swap("k", None, version) == 0
    assert await kv.get("k") is None
    # Deleting what is absent, expecting it absent: nothing to do, no new revision.
    assert await kv.compare_and_swap("k", None, 0) == 0
    assert await kv.put("other", b"x") == version + 2
    # Creating only if absent.
    assert await kv.compare_and_swap("other", b"y", 0) == -1
    assert await kv.compare_and_swap("new", b"n", 0) == version + 3


async def test_a_commit_that_fails_changes_nothing(kv: LevelDBKV) -> None:
    version = await kv.put("a", b"1")
    assert await kv.commit([Write("b", b"2"), Write("a", b"x", version + 5)]) == -1
    assert await kv.get("b") is None
    assert (await kv.get("a")).value == b"1"  # type: ignore[union-attr]
    assert await kv.commit([Write("a", None, version), Write("c", b"3", 0)]) == version + 1
    assert await kv.get("a") is None
    assert (await kv.get("c")).version == version + 1  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="more than once"):
        await kv.commit([Write("d", b"1"), Write("d", b"2")])
    assert await kv.get("d") is None


async def test_commit_many_commits_each_batch_on_its_own(kv: LevelDBKV) -> None:
    base = await kv.put("a", b"1")
    revs = await kv.commit_many(
        [[Write("x", b"1")], [Write("a", b"2", base + 9)], [Write("y", b"2", 0)]]
    )
    assert revs == [base + 1, -1, base + 2]
    assert [e.key for e in await kv.scan("")] == ["a", "x", "y"]


async def test_scans_keep_order_direction_limit_and_prefix(kv: LevelDBKV) -> None:
    for key in ["p/b", "p/a", "p/c", "q/a", "p"]:
        await kv.put(key, key.encode())
    assert [e.key for e in await kv.scan("p/")] == ["p/a", "p/b", "p/c"]
    assert [e.key for e in await kv.scan("p/", reverse=True)] == ["p/c", "p/b", "p/a"]
    assert [e.key for e in await kv.scan("p/", limit=2)] == ["p/a", "p/b"]
    assert [e.key for e in await kv.scan("p/", reverse=True, limit=1)] == ["p/c"]
    assert [e.value for e in await kv.scan("q")] == [b"q/a"]
    assert [e.key for e in await kv.scan("")] == ["p", "p/a", "p/b", "p/c", "q/a"]


async def test_a_watch_sees_its_prefix_in_order(kv: LevelDBKV) -> None:
    events = kv.watch("w/")
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)
    v1 = await kv.put("w/a", b"1")
    await kv.put("other", b"x")
    v2 = await kv.commit([Write("w/b", b"2"), Write("w/a", None)])
    got = [await asyncio.wait_for(first, 10)]
    got += [await asyncio.wait_for(anext(events), 10) for _ in range(2)]
    assert got == [
        WatchEvent(EventKind.PUT, "w/a", b"1", v1),
        WatchEvent(EventKind.PUT, "w/b", b"2", v2),
        WatchEvent(EventKind.DELETE, "w/a", b"", v2),
    ]
    await events.aclose()  # type: ignore[attr-defined]
    await kv.put("w/c", b"3")  # nobody listens: nothing is kept for it


async def test_a_closed_database_refuses_every_operation(kv: LevelDBKV) -> None:
    await kv.put("a", b"1")
    await kv.aclose()
    await kv.aclose()  # twice is fine
    for op in (
        kv.get("a"),
        kv.put("a", b"2"),
        kv.delete("a"),
        kv.compare_and_swap("a", b"2", 1),
        kv.commit([Write("a", b"2")]),
        kv.scan(""),
    ):
        with pytest.raises(StorageError) as info:
            await op
        assert str(info.value) == "the database is closed"


async def test_a_closed_database_may_be_opened_again_with_its_data(tmp_path: Path) -> None:
    for hold in (True, False, True):
        kv = LevelDBKV.open(str(tmp_path / "db"), hold=hold)
        version = await kv.put(f"k{hold}", b"v")
        await kv.aclose()
    kv = LevelDBKV.open(str(tmp_path / "db"), hold=False)
    try:
        assert [(e.key, e.version) for e in await kv.scan("")] == [
            ("kFalse", 2),
            ("kTrue", version),
        ]
        assert version == 3
    finally:
        await kv.aclose()


async def test_a_path_that_cannot_hold_a_database_is_refused_clearly(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("not a directory")
    for hold in (True, False):
        with pytest.raises(StorageError) as info:
            LevelDBKV.open(str(file / "db"), hold=hold)
        assert type(info.value) is StorageError
        assert str(info.value).startswith(f"cannot open the database at {file / 'db'}: ")
    with pytest.raises(StorageError, match=f"^cannot open the database at {file}"):
        LevelDBKV.open(str(file), hold=True)
    # The failed opens left nothing behind: the path can be used once it is fixed.
    file.unlink()
    kv = LevelDBKV.open(str(file), hold=True)
    await kv.aclose()


async def test_writes_of_the_held_database_are_read_back_by_a_shared_one(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    held = LevelDBKV.open(path)
    await asyncio.gather(*(held.put(f"k{i}", str(i).encode()) for i in range(20)))
    await held.delete("k3")
    await held.aclose()
    shared = LevelDBKV.open(path, hold=False)
    try:
        entries = await shared.scan("k")
        assert len(entries) == 19 and await shared.get("k3") is None
        assert (await shared.get("k7")).value == b"7"  # type: ignore[union-attr]
        assert await shared.put("z", b"") == 22
    finally:
        await shared.aclose()


# -- what the first mutation run of leveldb.py showed unchecked ---------------------------


class _Spy:
    """A plyvel DB with some methods replaced."""

    def __init__(self, real: Any, **methods: Any) -> None:
        self._real = real
        self.__dict__.update(methods)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("sync", [True, False, None], ids=["sync", "no-sync", "default"])
async def test_sync_writes_ask_leveldb_to_sync_each_batch(
    tmp_path: Path, sync: bool | None
) -> None:
    # A write survives power loss only if LevelDB syncs it: `sync=True` must reach it;
    # by default it does not (a write still survives the process being killed).
    for hold in (True, False):
        path = str(tmp_path / f"db{hold}")
        kv = (
            LevelDBKV.open(path, hold=hold)
            if sync is None
            else LevelDBKV.open(path, hold=hold, sync=sync)
        )
        asked: list[object] = []
        try:
            await kv.put("warm", b"")  # (shared: opens the handle the spy goes on)
            real = kv._db

            def write_batch(
                *args: Any, real: Any = real, asked: list[object] = asked, **kwargs: Any
            ) -> Any:
                asked.append(kwargs.get("sync"))
                return real.write_batch(*args, **kwargs)

            kv._db = _Spy(real, write_batch=write_batch)
            await kv.put("k", b"v")
            await kv.delete("k")
            kv._db = real
        finally:
            await kv.aclose()
        assert asked == [bool(sync), bool(sync)]


async def test_a_failed_write_says_what_the_database_said(tmp_path: Path) -> None:
    import plyvel

    kv = LevelDBKV.open(str(tmp_path / "db"))
    real = kv._db

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise plyvel.IOError("disk on fire")

    kv._db = _Spy(real, write_batch=broken)
    with pytest.raises(StorageError) as info:
        await kv.put("a", b"1")
    assert str(info.value) == "database error: disk on fire"
    kv._db = real
    await kv.aclose()


async def test_a_commit_naming_a_key_twice_is_refused_by_name(kv: LevelDBKV) -> None:
    with pytest.raises(ValueError) as info:
        await kv.commit([Write("d", b"1"), Write("e", b"1"), Write("d", None)])
    assert str(info.value) == "a commit names a key more than once"


async def test_a_watcher_that_stops_reading_keeps_the_first_10000_events(
    tmp_path: Path,
) -> None:
    # It loses later events rather than growing memory without bound, and the writers
    # neither fail nor wait for it; nothing is reported as an error. (Held: the events of
    # one commit_many reach the watcher at once; shared, they come from a thread.)
    kv = LevelDBKV.open(str(tmp_path / "db"))
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    events = kv.watch("k")
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)
    await kv.commit_many([[Write(f"k{i:05}", b"")] for i in range(10_002)])
    got = [await asyncio.wait_for(first, 10)]
    while len(got) < 10_000:
        got.append(await asyncio.wait_for(anext(events), 10))
    assert [e.key for e in got] == [f"k{i:05}" for i in range(10_000)]
    await kv.put("k-after", b"")  # room again: the next event comes through
    assert (await asyncio.wait_for(anext(events), 10)).key == "k-after"
    await events.aclose()  # type: ignore[attr-defined]
    loop.set_exception_handler(None)
    await kv.aclose()
    assert errors == []


async def test_a_database_another_process_holds_is_busy_by_name(tmp_path: Path) -> None:
    import subprocess
    import sys

    from spear.errors import StorageBusy

    path = str(tmp_path / "db")
    await LevelDBKV.open(path).aclose()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import plyvel, sys; db = plyvel.DB({path!r}); print('held', flush=True);"
            " sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        with pytest.raises(StorageBusy) as info:
            LevelDBKV.open(path)
        assert str(info.value) == f"the database at {path} is in use by another process"
    finally:
        proc.communicate(b"")
    # Let go: it opens.
    await LevelDBKV.open(path).aclose()


async def test_a_corrupt_database_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await LevelDBKV.open(str(path)).aclose()
    (path / "CURRENT").write_text("MANIFEST-999999\n")
    with pytest.raises(StorageError) as info:
        LevelDBKV.open(str(path))
    assert str(info.value).startswith(f"cannot open the database at {path}: ")
