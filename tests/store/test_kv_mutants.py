"""What LevelDBKV's group commit, read cache and watches promise, checked where mutation
testing found nobody looking (issue 22): writers of one loop turn share one LevelDB write
and are answered at the next turn; a lone writer is answered at once; a key read or
written lately is not read from LevelDB again; a watch sees the changes made after it
started, and a broken delivery is reported at once rather than waited for.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import spear
from spear.errors import StorageError
from spear.store.kv import EventKind, WatchEvent, Write
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class _Counting:
    """A plyvel DB whose `write_batch` and `get` calls are counted."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.batches = 0
        self.gets = 0

    def write_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.batches += 1
        return self._real.write_batch(*args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self.gets += 1
        return self._real.get(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[tuple[LevelDBKV, _Counting]]:
    kv = LevelDBKV.open(str(tmp_path / "db"))
    real = kv._db
    db = kv._db = _Counting(real)
    try:
        yield kv, db
    finally:
        kv._db = real
        await kv.aclose()


@pytest.mark.parametrize("writers", [2, 10])
async def test_writers_of_one_turn_share_one_leveldb_write(
    held: tuple[LevelDBKV, _Counting], writers: int
) -> None:
    # Group commit's whole purpose: fewer writes (and fsyncs) than writers, even for two.
    kv, db = held
    versions = await asyncio.gather(*(kv.put(f"k{i}", b"v") for i in range(writers)))
    assert db.batches == 1
    assert sorted(versions) == list(range(versions[0], versions[0] + writers))
    # Acknowledged means written: nothing is left staged for a later write.
    assert (await kv.scan("k")) and db.batches == 1


async def test_a_commit_many_and_the_writers_beside_it_share_one_write(
    held: tuple[LevelDBKV, _Counting],
) -> None:
    kv, db = held
    revs, deleted, swapped = await asyncio.gather(
        kv.commit_many([[Write("a", b"1")], [Write("b", b"2")]]),
        kv.delete("missing"),
        kv.compare_and_swap("c", b"3", 0),
    )
    assert db.batches == 1 and deleted is False and swapped > revs[1] > revs[0]


async def test_a_group_is_acknowledged_at_the_next_turn_of_the_loop(
    held: tuple[LevelDBKV, _Counting],
) -> None:
    # Writers wait for the turn that writes their batch, never for a timer: a task
    # counting the loop's turns meanwhile sees only a few.
    kv, db = held
    turns = 0
    acknowledged = False

    async def count_turns() -> None:
        nonlocal turns
        while not acknowledged and turns < 1000:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.ensure_future(count_turns())
    await asyncio.gather(kv.put("a", b"1"), kv.put("b", b"2"), kv.delete("a"))
    acknowledged = True
    await counter
    assert turns <= 5 and db.batches == 1


def test_a_lone_write_is_acknowledged_without_a_turn_of_the_loop(tmp_path: Path) -> None:
    # With nothing else to run, nobody could join the batch: it is written at once, and
    # `await kv.put(...)` returns without handing the loop to anyone.
    async def main() -> None:
        kv = LevelDBKV.open(str(tmp_path / "db"))
        try:
            for key, expected in (("a", 1), ("b", 2)):
                steps = kv.put(key, b"v").__await__()
                with pytest.raises(StopIteration) as done:
                    steps.send(None)
                assert done.value.value == expected
        finally:
            await kv.aclose()

    asyncio.run(main())


_CANCELLED_WRITER = """
import asyncio, os, sys
from spear.store.leveldb import LevelDBKV

async def main() -> None:
    kv = LevelDBKV.open(sys.argv[1])
    writer = asyncio.ensure_future(kv.put("kept", b"v"))
    other = asyncio.ensure_future(asyncio.sleep(0))  # (ready: the writer yields a turn)
    await asyncio.sleep(0)  # the writer staged its change and yielded
    writer.cancel()
    try:
        await writer
    except asyncio.CancelledError:
        print("cancelled", flush=True)
    await other
    os._exit(0)  # ends at once: no close, nothing flushed on the way out

asyncio.run(main())
"""


def test_a_writer_cancelled_while_its_batch_waits_still_has_it_written(
    tmp_path: Path,
) -> None:
    # Its change was staged, so later reads saw it: it must reach LevelDB with its turn,
    # not whenever the next writer happens to come (a crash meanwhile would lose it).
    path = str(tmp_path / "db")
    env = dict(os.environ, PYTHONPATH=str(Path(spear.__file__).parent.parent))
    run = subprocess.run(
        [sys.executable, "-c", _CANCELLED_WRITER, path],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.stdout == "cancelled\n", run.stderr

    async def read() -> Any:
        kv = LevelDBKV.open(path)
        try:
            return await kv.get("kept")
        finally:
            await kv.aclose()

    entry = asyncio.run(read())
    assert entry is not None and entry.value == b"v"


async def test_keys_read_or_written_lately_are_not_read_from_leveldb_again(
    held: tuple[LevelDBKV, _Counting],
) -> None:
    kv, db = held
    await kv.put("a", b"1")
    assert (await kv.get("a")).value == b"1"  # type: ignore[union-attr]
    assert await kv.compare_and_swap("a", b"2", 99) == -1
    assert db.gets == 1  # the revision, read once when the first change was made
    assert await kv.get("missing") is None
    assert await kv.get("missing") is None
    assert not await kv.delete("missing")
    assert db.gets == 2  # an absent key is remembered as absent


async def _next_event(events: AsyncIterator[WatchEvent], errors: list[Any]) -> WatchEvent:
    """The watch's next event, failing as soon as the loop reports a broken delivery."""
    loop = asyncio.get_running_loop()
    step = asyncio.ensure_future(anext(events))
    deadline = loop.time() + 30
    while not step.done() and not errors and loop.time() < deadline:
        await asyncio.sleep(0.005)
    if not step.done():
        step.cancel()
    assert errors == []
    return step.result()


@pytest.mark.parametrize("hold", [True, False], ids=["held", "shared"])
async def test_a_watch_delivers_without_an_error_and_keeps_going(
    tmp_path: Path, hold: bool
) -> None:
    kv = LevelDBKV.open(str(tmp_path / "db"), hold=hold)
    loop = asyncio.get_running_loop()
    errors: list[Any] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    events = kv.watch("w/")
    try:
        first = asyncio.ensure_future(_next_event(events, errors))
        for _ in range(1000):  # the watch is live once its first read has begun
            if kv._watchers or first.done():
                break
            await asyncio.sleep(0)
        v1 = await kv.put("w/a", b"1")
        v2 = await kv.put("w/b", b"2")
        assert await first == WatchEvent(EventKind.PUT, "w/a", b"1", v1)
        assert await _next_event(events, errors) == WatchEvent(EventKind.PUT, "w/b", b"2", v2)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        loop.set_exception_handler(None)
        await kv.aclose()


async def test_a_watch_sees_only_changes_made_after_it_started(
    held: tuple[LevelDBKV, _Counting],
) -> None:
    kv, _ = held
    events = kv.watch("w/")
    # A write made before the watch starts, but written in the turn after (another
    # task is ready, so it waits one turn for company), is not reported to it.
    early = asyncio.ensure_future(kv.put("w/early", b""))
    company = asyncio.ensure_future(asyncio.sleep(0))
    first = asyncio.ensure_future(anext(events))
    await asyncio.gather(early, company)
    assert kv._watchers  # the watch had started before the early write was written
    late = await kv.put("w/late", b"")
    try:
        assert (await asyncio.wait_for(first, 30)).version == late
    finally:
        await events.aclose()  # type: ignore[attr-defined]


class _Clock:
    """The time the shared mode reads and sleeps on, moved only by the test and by sleeps
    (which return at once and are recorded)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    from spear.store import leveldb

    clock = _Clock()
    monkeypatch.setattr(leveldb, "time", clock)
    monkeypatch.setattr(random, "random", lambda: 0.5)  # the jitter, halfway
    monkeypatch.setattr(leveldb, "_LINGER_S", 3600.0)  # an idle handle is let go only by us
    return clock


def _busy_for(monkeypatch: pytest.MonkeyPatch, attempts: int) -> list[str]:
    """Make the database look locked by another process for its first `attempts` opens."""
    from spear.errors import StorageBusy
    from spear.store import leveldb

    tried: list[str] = []
    real = leveldb._open

    def open_when_free(path: str, create: bool, **kwargs: Any) -> Any:
        tried.append(path)
        if len(tried) <= attempts:
            raise StorageBusy("in use")
        return real(path, create, **kwargs)

    monkeypatch.setattr(leveldb, "_open", open_when_free)
    return tried


async def test_a_waiting_process_retries_soon_then_every_few_ms_with_jitter(
    tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The module's promise: a failed open costs ~0.1 ms, so a process waiting for the
    # lock retries after about 1 ms, backing off to at most 4 ms (plus up to as much
    # jitter again), and gets the database at its first attempt after it is free.
    tried = _busy_for(monkeypatch, attempts=5)
    kv = LevelDBKV.open(str(tmp_path / "db"), hold=False, busy_timeout_s=10)
    try:
        assert len(tried) == 6
        assert clock.sleeps == pytest.approx([0.0015, 0.003, 0.006, 0.006, 0.006])
        assert await kv.put("a", b"1") == 1 and len(tried) == 6  # the handle lingers
    finally:
        await kv.aclose()


async def test_a_waiting_process_gives_up_once_its_busy_timeout_has_passed(
    tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear.errors import StorageBusy

    tried = _busy_for(monkeypatch, attempts=1_000)
    path = str(tmp_path / "db")
    with pytest.raises(StorageBusy) as info:
        LevelDBKV.open(path, hold=False, busy_timeout_s=0.02)
    assert str(info.value) == (
        f"the data dir database {path} stayed locked for 0.02s"
        " (is a spear daemon serving it? use --node)"
    )
    # 1.5 + 3 + 6 + 6 ms waited is under 20 ms: one more wait, then the last attempt.
    assert len(tried) == 6 and clock.sleeps == pytest.approx([0.0015, 0.003, 0.006, 0.006, 0.006])


async def test_a_shared_user_lets_go_after_a_long_hold_and_waits_its_turn(
    tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first open never waits; a handle open for 0.1 s is closed after the operation
    # that finds it so, and not reopened for 10 ms: a waiting process gets its turn.
    tried = _busy_for(monkeypatch, attempts=0)
    kv = LevelDBKV.open(str(tmp_path / "db"), hold=False)
    try:
        await kv.put("a", b"1")
        assert len(tried) == 1 and clock.sleeps == []
        clock.now += 0.1
        await kv.put("a", b"2")  # open 0.1 s by its end: let go
        assert len(tried) == 1 and clock.sleeps == []
        assert (await kv.get("a")).value == b"2"  # type: ignore[union-attr]
        assert len(tried) == 2 and clock.sleeps == pytest.approx([0.01])
    finally:
        await kv.aclose()


async def test_an_idle_shared_handle_is_let_go_once_idle_long_enough(
    tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear.store import leveldb

    closed: list[bool] = []
    real = leveldb._open

    class _Handle:  # the database, its closing seen
        def __init__(self, db: Any) -> None:
            self._db = db

        def close(self) -> None:
            closed.append(True)
            self._db.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._db, name)

    monkeypatch.setattr(leveldb, "_open", lambda *a, **k: _Handle(real(*a, **k)))
    monkeypatch.setattr(leveldb, "_LINGER_S", 0.25)
    looked = 0

    def monotonic() -> float:
        nonlocal looked
        looked += 1
        return clock.now

    monkeypatch.setattr(clock, "monotonic", monotonic)
    loop = asyncio.get_running_loop()
    clock.now = 5.0
    kv = LevelDBKV.open(str(tmp_path / "db"), hold=False)
    try:
        # Used just now (the clock stands still): when the timer looks, it keeps it.
        seen = looked
        deadline = loop.time() + 10
        while looked == seen and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert looked > seen and closed == []
        clock.now = 5.25  # idle exactly the linger time: let go at the next look
        while not closed and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert closed == [True]
    finally:
        await kv.aclose()


async def test_a_lingering_shared_handle_never_keeps_the_process_alive(
    tmp_path: Path, clock: _Clock
) -> None:
    # `spear run` exits as soon as it is done, even with the database handle lingering:
    # the timer that lets it go is a daemon thread.
    import threading

    before = set(threading.enumerate())
    kv = LevelDBKV.open(str(tmp_path / "db"), hold=False)  # lingers an hour (`clock`)
    try:
        timers = [
            t
            for t in threading.enumerate()
            if t not in before and isinstance(t, threading.Timer) and t.is_alive()
        ]
        assert timers and all(t.daemon for t in timers)
    finally:
        await kv.aclose()


async def test_the_read_cache_keeps_at_most_its_bound_then_starts_again(
    held: tuple[LevelDBKV, _Counting], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Memory stays bounded: a held database remembers up to _RECENT_MAX keys (100,000;
    # 3 here), and forgets them all when one more would pass the bound.
    from spear.store import leveldb

    monkeypatch.setattr(leveldb, "_RECENT_MAX", 3)
    kv, db = held
    for key in ("x0", "x1", "x2", "x0"):
        assert await kv.get(key) is None
    assert db.gets == 3  # three remembered
    assert await kv.get("x3") is None  # the fourth: forget the others
    assert await kv.get("x0") is None
    assert await kv.get("x3") is None
    assert db.gets == 5


# -- a full disk (issue 16): one clear error, and the data dir's reserve given back once --

_FULL = "No space left on device"


def _opens_on_a_full_disk(
    monkeypatch: pytest.MonkeyPatch, failures: int, refill: bool = False
) -> list[str]:
    """LevelDB's open fails as on a full disk `failures` times (`refill`: and something
    makes the data dir's reserve again meanwhile, as a node's `Reserve.keep` would)."""
    import plyvel

    real = plyvel.DB
    tried: list[str] = []

    def db(path: str, **kwargs: Any) -> Any:
        tried.append(path)
        if len(tried) <= failures:
            if refill:
                (Path(path).parent / "reserve").write_bytes(b"\0" * 16)
            raise plyvel.IOError(f"IO error: {path}/LOG: {_FULL}")
        return real(path, **kwargs)

    monkeypatch.setattr(plyvel, "DB", db)
    return tried


@pytest.mark.parametrize("hold", [True, False], ids=["held", "shared"])
async def test_an_open_on_a_full_disk_gives_the_reserve_back_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hold: bool
) -> None:
    from log_capture import SpearLog

    (tmp_path / "reserve").write_bytes(b"\0" * 16)
    path = str(tmp_path / "db")  # new: opened only if LevelDB may create it
    tried = _opens_on_a_full_disk(monkeypatch, failures=1)
    with SpearLog("WARNING") as messages:
        kv = LevelDBKV.open(path, hold=hold)
    try:
        assert tried == [path, path] and not (tmp_path / "reserve").exists()
        assert [m.rstrip() for m in messages] == [
            f"WARNING: the disk of {path} is full: its reserve was given back"
        ]
        assert await kv.put("a", b"1") == 1
    finally:
        await kv.aclose()


async def test_an_open_on_a_full_disk_without_a_reserve_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear.errors import NoSpace

    path = str(tmp_path / "db")
    tried = _opens_on_a_full_disk(monkeypatch, failures=1)
    with pytest.raises(NoSpace) as info:
        LevelDBKV.open(path)
    assert str(info.value) == (
        f"no space left on device (the database at {path}): free space in the data dir"
    )
    assert tried == [path]


async def test_an_open_gives_the_reserve_back_at_most_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear.errors import NoSpace

    (tmp_path / "reserve").write_bytes(b"\0" * 16)
    path = str(tmp_path / "db")
    tried = _opens_on_a_full_disk(monkeypatch, failures=2, refill=True)
    with pytest.raises(NoSpace):
        LevelDBKV.open(path)
    assert tried == [path, path] and (tmp_path / "reserve").exists()


async def test_a_database_that_fails_otherwise_keeps_the_reserve(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await LevelDBKV.open(str(path)).aclose()
    (path / "CURRENT").write_text("MANIFEST-999999\n")
    (tmp_path / "reserve").write_bytes(b"\0" * 16)
    with pytest.raises(StorageError):
        LevelDBKV.open(str(path))
    assert (tmp_path / "reserve").exists()


class _Failing:
    """A plyvel DB whose reads of user keys fail as a bad disk's do and whose writes fail
    as a full disk's do."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def get(self, key: bytes) -> Any:
        import plyvel

        if key.startswith(b"d/"):  # the users' keys (the revision reads fine)
            raise plyvel.IOError("disk on fire")
        return self._real.get(key)

    def write_batch(self, *args: Any, **kwargs: Any) -> Any:
        import plyvel

        raise plyvel.IOError(f"IO error: 000005.log: {_FULL}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("hold", [True, False], ids=["held", "shared"])
async def test_reads_and_writes_that_fail_say_what_the_database_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hold: bool
) -> None:
    from spear.errors import NoSpace
    from spear.store import leveldb

    real_open = leveldb._open
    monkeypatch.setattr(leveldb, "_open", lambda *a, **k: _Failing(real_open(*a, **k)))
    kv = LevelDBKV.open(str(tmp_path / "db"), hold=hold)
    try:
        with pytest.raises(StorageError) as failed:
            await kv.get("a")
        assert str(failed.value) == "database error: disk on fire"
        with pytest.raises(NoSpace) as full:
            await kv.put("a", b"1")
        assert str(full.value) == (
            "no space left on device (the database): free space in the data dir"
        )
    finally:
        await kv.aclose()
