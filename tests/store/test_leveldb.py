"""LevelDB-specific ownership rules (the KV contract itself is in test_kv_contract.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

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
        [sys.executable, "-c", f"import plyvel, time; db = plyvel.DB({path!r}); "
         "print('held', flush=True); time.sleep(0.5)"],
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
        [sys.executable, "-c", f"import plyvel, time; db = plyvel.DB({path!r}); "
         "print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        with pytest.raises(StorageBusy, match="stayed locked"):
            LevelDBKV.open(path, hold=False, busy_timeout_s=0.2)
    finally:
        proc.kill()
        proc.communicate()
