"""LevelDB-specific ownership rules (the KV contract itself is in test_kv_contract.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest

from spear.errors import StorageBusy, StorageError
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from pathlib import Path


async def test_held_database_persists(tmp_path: Path) -> None:
    kv = LevelDBKV.open(str(tmp_path / "db"))
    v1 = await kv.put("a", b"1")
    await kv.aclose()
    kv = LevelDBKV.open(str(tmp_path / "db"))
    entry = await kv.get("a")
    assert entry is not None and entry.value == b"1" and entry.version == v1
    assert await kv.put("b", b"2") > v1  # the revision counter survives a reopen
    await kv.aclose()


async def test_writes_of_one_loop_turn_share_a_batch_and_are_on_disk_when_acknowledged(
    tmp_path: Path,
) -> None:
    import asyncio

    kv = LevelDBKV.open(str(tmp_path / "db"))
    written: list[int] = []

    def spy(real: Any) -> Any:
        def write_batch(*args: Any, **kwargs: Any) -> Any:
            written.append(1)
            return real(*args, **kwargs)

        return write_batch

    kv._db = _Spy(kv._db, write_batch=spy(kv._db.write_batch))
    versions = await asyncio.gather(*(kv.put(f"k{i}", b"v") for i in range(200)))
    assert len(set(versions)) == 200 and len(written) == 1
    # Acknowledged means written: another process reads every key once we let go.
    await kv.aclose()
    code = textwrap.dedent(f"""
        import plyvel
        db = plyvel.DB({str(tmp_path / "db")!r})
        print(sum(1 for _ in db.iterator(prefix=b"d/k")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "200", out.stderr


async def test_staged_changes_are_read_back_before_they_are_written(tmp_path: Path) -> None:
    import asyncio

    kv = LevelDBKV.open(str(tmp_path / "db"))
    v = await kv.put("a", b"1")
    # Started together, all in one loop turn: each sees the ones staged before it.
    results = await asyncio.gather(
        kv.compare_and_swap("a", b"2", v),
        kv.compare_and_swap("a", b"3", v),  # stale by then
        kv.delete("a"),
        kv.compare_and_swap("a", b"4", 0),  # re-created after the delete
    )
    assert results[0] > v and results[1] == -1 and results[2] is True and results[3] > 0
    assert (await kv.get("a")).value == b"4"  # type: ignore[union-attr]
    await kv.put("p/1", b"x")
    assert [e.key for e in await kv.scan("p/")] == ["p/1"]
    await kv.aclose()


async def test_a_failed_batch_fails_its_writers_and_keeps_what_was_stored(
    tmp_path: Path,
) -> None:
    import asyncio

    import plyvel

    kv = LevelDBKV.open(str(tmp_path / "db"))
    v = await kv.put("a", b"kept")
    real = kv._db

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise plyvel.IOError("disk on fire")

    kv._db = _Spy(real, write_batch=broken)
    outcomes = await asyncio.gather(
        kv.put("a", b"lost"), kv.put("b", b"lost"), return_exceptions=True
    )
    assert all(isinstance(o, StorageError) for o in outcomes)
    kv._db = real
    entry = await kv.get("a")
    assert entry is not None and (entry.value, entry.version) == (b"kept", v)
    assert await kv.get("b") is None
    assert await kv.put("c", b"ok") > v  # the store still works afterwards
    await kv.aclose()


class _Spy:
    """A plyvel DB with some methods replaced."""

    def __init__(self, real: Any, **methods: Any) -> None:
        self._real = real
        self.__dict__.update(methods)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_second_open_in_one_process_is_refused(tmp_path: Path) -> None:
    kv = LevelDBKV.open(str(tmp_path / "db"))
    with pytest.raises(StorageError, match="already open in this process"):
        LevelDBKV.open(str(tmp_path / "db"))
    # The refusal did not touch the lock: another process still cannot open it.
    code = textwrap.dedent(f"""
        import plyvel, sys
        try:
            plyvel.DB({str(tmp_path / "db")!r})
        except plyvel.IOError:
            sys.exit(3)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    await kv.aclose()


async def test_shared_mode_waits_for_the_holder(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    holder = LevelDBKV.open(path)
    await holder.put("k", b"v")
    await holder.aclose()
    holder_proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import plyvel, time; db = plyvel.DB({path!r}); "
            "print('held', flush=True); time.sleep(0.5)",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder_proc.stdout is not None
    assert holder_proc.stdout.readline() == b"held\n"
    shared = LevelDBKV.open(path, hold=False, busy_timeout_s=30)
    entry = await shared.get("k")  # retries until the other process lets go
    assert entry is not None and entry.value == b"v"
    holder_proc.wait()
    holder_proc.stdout.close()
    await shared.aclose()


async def test_shared_mode_gives_up_with_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    await LevelDBKV.open(path).aclose()  # create it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import plyvel, time; db = plyvel.DB({path!r}); "
            "print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        with pytest.raises(StorageBusy, match="stayed locked"):
            LevelDBKV.open(path, hold=False, busy_timeout_s=0.2)
    finally:
        proc.kill()
        proc.communicate()


def _other_process_opens(path: str, timeout_s: float) -> subprocess.CompletedProcess[bytes]:
    """Another process opening the database (shared, retrying) and reading key k."""
    code = textwrap.dedent(f"""
        import anyio
        from spear.store.leveldb import LevelDBKV

        async def main():
            kv = LevelDBKV.open({path!r}, hold=False, busy_timeout_s={timeout_s})
            entry = await kv.get("k")
            await kv.aclose()
            print(entry.value.decode())

        anyio.run(main)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)


async def test_shared_handle_lingers_then_lets_go(tmp_path: Path) -> None:
    import time

    from spear.store import leveldb

    path = str(tmp_path / "db")
    kv = LevelDBKV.open(path, hold=False, busy_timeout_s=5)
    opened = []
    real_open = leveldb._open

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return real_open(*args, **kwargs)

    leveldb._open = counting_open  # type: ignore[assignment]
    try:
        for i in range(5):  # operations in quick succession share one open handle
            await kv.put("k", str(i).encode())
    finally:
        leveldb._open = real_open  # type: ignore[assignment]
    assert len(opened) <= 1
    # Idle, it lets go: another process gets the database at its first attempts.
    start = time.monotonic()
    other = _other_process_opens(path, timeout_s=0.5)
    assert other.returncode == 0, other.stderr
    assert other.stdout == b"4\n"
    assert time.monotonic() - start < 30
    await kv.aclose()


async def test_a_busy_shared_user_does_not_starve_another_process(tmp_path: Path) -> None:
    import threading

    path = str(tmp_path / "db")
    kv = LevelDBKV.open(path, hold=False, busy_timeout_s=5)
    await kv.put("k", b"busy")
    stop = threading.Event()

    def keep_writing() -> None:  # an operation every millisecond: never idle
        import anyio

        async def loop() -> None:
            while not stop.is_set():
                await kv.put("other", b"x")
                await anyio.sleep(0.001)

        anyio.run(loop)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        other = _other_process_opens(path, timeout_s=5)
    finally:
        stop.set()
        writer.join()
    assert other.returncode == 0, other.stderr  # it got its turn within the timeout
    assert other.stdout == b"busy\n"
    await kv.aclose()
