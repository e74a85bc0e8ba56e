"""Files of replaced values kept to be written over (store/spare_files.py): the next value
lands in a spare's pages, never in one that a reader still has open or mapped, within the
pool's bounds; a deleted value's room is given back. Real files, real LevelDB."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from spear.store import spare_files
from spear.store.leveldb import LevelDBKV
from spear.store.objects import ObjectStore
from spear.store.spare_files import SPARE_DIR, SpareFiles, write_over

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

MiB = 1 << 20


def _leases_here() -> bool:
    """Whether this machine's temporary directory gives write leases (the pool writes
    over no spare where it does not: then there is nothing of that to test)."""
    import fcntl
    import tempfile

    made, path = tempfile.mkstemp()
    os.close(made)  # (open elsewhere, it would refuse the lease for that reason)
    fd = os.open(path, os.O_WRONLY)
    try:
        fcntl.fcntl(fd, spare_files.F_SETLEASE, fcntl.F_WRLCK)
        fcntl.fcntl(fd, spare_files.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(path)
    return True


needs_leases = pytest.mark.skipif(
    not _leases_here(), reason="this file system gives no write leases: no spare is reused"
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    try:
        yield ObjectStore(kv, tmp_path / "objects")
    finally:
        await kv.aclose()


@pytest.fixture(autouse=True)
def _any_free_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spares kept whatever share of this machine's disk is free (the rule has its own
    test below): a CI machine's disk may be more than three quarters full."""
    monkeypatch.setattr(spare_files, "MIN_FREE_SHARE", 0.0)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    made = tmp_path / "objects"
    made.mkdir()
    return made


def _retired(pool: SpareFiles, path: Path, size: int = 4096) -> Path:
    """A file of `size` bytes at `path`, then retired into `pool`."""
    path.write_bytes(b"v" * size)
    pool.retire(path)
    return path


def _inodes(directory: Path) -> set[int]:
    return {p.stat().st_ino for p in directory.iterdir()} if directory.is_dir() else set()


def _value_file(store: ObjectStore) -> Path:
    """The one file of a version in `store` (not a spare, not a staged one)."""
    [path] = [
        p
        for p in store.root.rglob("*")
        if p.is_file() and SPARE_DIR not in p.parts and "staging" not in p.parts
    ]
    return path


@contextlib.contextmanager
def _one_spare_in_use(root: Path) -> Iterator[tuple[SpareFiles, Path]]:
    """A pool of one spare that this process holds open (so it is not to be written
    over) while the block runs."""
    pool = SpareFiles(root)
    _retired(pool, root / "v")
    [spare] = pool.directory.iterdir()
    held = os.open(spare, os.O_RDONLY)
    try:
        yield pool, spare
    finally:
        os.close(held)


@needs_leases
async def test_a_replaced_values_file_is_written_over_by_the_next_value(
    store: ObjectStore,
) -> None:
    await store.put("a", os.urandom(2 * MiB))
    first = _value_file(store).stat().st_ino
    await store.put("a", b"b" * MiB)  # (version 1's file: a spare now)
    assert _inodes(store.spares.directory) == {first}
    assert store.spares.held_bytes == 2 * MiB
    second = b"c" * (MiB + 5)
    await store.put("a", second)  # written over version 1's file, cut to its length
    assert _value_file(store).stat().st_ino == first
    assert bytes((await store.get("a"))[0]) == second
    assert _value_file(store).stat().st_size == len(second)
    assert len(store.spares) == 1  # (version 2's file, in its turn)


@needs_leases
async def test_a_spare_a_reader_has_mapped_is_not_written_over(store: ObjectStore) -> None:
    old = os.urandom(2 * MiB)
    await store.put("a", old)
    held, _ = await store.get("a")  # a map of version 1's file, in this process
    await store.put("a", b"2" * (2 * MiB))  # version 1's file: a spare, still mapped
    await store.put("b", b"3" * (2 * MiB))  # must not land in it
    await store.put("a", b"4" * (2 * MiB))
    assert bytes(held) == old  # the reader's snapshot is whole
    assert len(store.spares) >= 1
    held.release()
    # Released: the next value may go into it.
    spare_inodes = _inodes(store.spares.directory)
    await store.put("c", b"5" * (2 * MiB))
    assert _inodes(store.spares.directory) < spare_inodes


@needs_leases
async def test_a_spare_another_process_has_open_is_not_written_over(
    store: ObjectStore, tmp_path: Path
) -> None:
    old = os.urandom(MiB)
    await store.put("a", old)
    await store.put("a", b"new" * 1000 * 100)
    [spare] = store.spares.directory.iterdir()
    ready = tmp_path / "ready"
    reader = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY);"
         "open(sys.argv[2], 'w').close(); time.sleep(30)", str(spare), str(ready)],
    )  # fmt: skip
    try:
        while not ready.exists():
            await anyio.sleep(0.01)
        await store.put("b", b"x" * MiB)
        assert spare.read_bytes() == old  # not written over while the other reads it
        assert spare.exists()
    finally:
        reader.kill()
        reader.wait()
    await store.put("c", b"y" * MiB)  # the reader gone: now it is
    assert not spare.exists()


async def test_a_deleted_values_room_is_given_back(store: ObjectStore) -> None:
    await store.put("a", os.urandom(2 * MiB))
    await store.delete("a")
    assert len(store.spares) == 0
    assert not [p for p in store.root.rglob("*") if p.is_file()]


def test_the_pool_keeps_within_its_bounds(root: Path) -> None:
    pool = SpareFiles(root, max_files=2, max_bytes=3 * MiB)
    files = []
    for i, size in enumerate([MiB, MiB, MiB, 2 * MiB]):
        path = root / f"v{i}"
        path.write_bytes(b"v" * size)
        files.append(path)
    pool.retire(files[0])
    pool.retire(files[1])
    pool.retire(files[2])  # (a third file: unlinked)
    assert len(pool) == 2 and pool.held_bytes == 2 * MiB
    assert not files[2].exists() and not files[0].exists()
    pool.drop_all()
    pool.retire(files[3])
    assert pool.held_bytes == 2 * MiB
    big = root / "big"
    big.write_bytes(b"b" * (2 * MiB))
    pool.retire(big)  # (past max_bytes: unlinked)
    assert len(pool) == 1 and not big.exists()
    pool.retire(root / "never-there")  # (nothing to keep)
    assert len(pool) == 1


def test_no_spare_is_kept_on_a_file_system_short_of_room(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.statvfs(root)

    class Short:
        f_blocks, f_frsize = 1000, real.f_frsize
        f_bavail = 249  # (under a quarter free)

    pool = SpareFiles(root)
    monkeypatch.setattr(spare_files, "MIN_FREE_SHARE", 0.25)  # (the rule itself)
    monkeypatch.setattr(spare_files.os, "statvfs", lambda path: Short)
    path = _retired(pool, root / "v")
    assert len(pool) == 0 and not path.exists()
    Short.f_bavail = 250
    _retired(pool, path)
    assert len(pool) == 1


@needs_leases
def test_a_new_file_that_would_leave_the_disk_short_drops_every_spare(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _one_spare_in_use(root) as (pool, spare):
        assert not pool.place(root / "new", 2 * MiB)  # (room enough: it stays)
        assert len(pool) == 1

        class Short:
            f_blocks, f_frsize, f_bavail = 10**6, 4096, 2048  # 8 MiB free

        monkeypatch.setattr(spare_files.os, "statvfs", lambda path: Short)
        assert not pool.place(root / "new", 2 * MiB)
        assert len(pool) == 0 and not spare.exists()


@needs_leases
def test_a_placed_spare_is_new_to_whoever_sweeps_by_age(root: Path) -> None:
    pool = SpareFiles(root)
    old = root / "v"
    old.write_bytes(b"v" * 8192)
    os.utime(old, (time.time() - 86400, time.time() - 86400))
    pool.retire(old)
    target = root / "staged"
    assert pool.place(target, 100)
    assert time.time() - target.stat().st_mtime < 60
    write_over(target, b"w" * 100)
    assert target.read_bytes() == b"w" * 100


def test_where_leases_are_refused_no_spare_is_written_over(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = SpareFiles(root)
    for name in ("a", "b"):
        _retired(pool, root / name)
    monkeypatch.setattr(spare_files, "_alone", lambda fd: None)  # (cannot be told)
    assert not pool.place(root / "new", 4096)
    assert len(pool) == 0 and pool.max_files == 0
    assert not list(pool.directory.iterdir())
    assert not _retired(pool, root / "c").exists()  # (no more spares: unlinked)


def test_an_earlier_runs_spares_are_cleared_not_the_pools(root: Path) -> None:
    (root / SPARE_DIR).mkdir()
    leftovers = [root / SPARE_DIR / "from-before", root / SPARE_DIR / "and-another"]
    for leftover in leftovers:
        leftover.write_bytes(b"l")
    pool = SpareFiles(root)
    _retired(pool, root / "v")
    assert pool.clear_unknown() == 2
    assert not any(p.exists() for p in leftovers)
    assert len(list(pool.directory.iterdir())) == 1


@needs_leases
def test_puts_over_the_object_socket_and_the_transfer_port_write_over_spares(
    tmp_path: Path,
) -> None:
    """The node's own receivers (a client's memfd on its host, bytes over its transfer
    port) write into spares as the store's put does: the inode of a replaced value
    comes back as a later one's."""
    from spear.config import Settings
    from spear.node.assembly import serving_node
    from spear.node.client import Client
    from spear.transport.auth import read_owner_token
    from spear.transport.channels import Credentials
    from spear.transport.object_socket import ObjectSocketClient
    from spear.transport.object_transfer import ObjectTransferClient

    home = tmp_path / "home"
    values = [os.urandom(2 * MiB), os.urandom(MiB), os.urandom(MiB + 3)]

    def inodes() -> dict[str, int]:
        return {
            p.parent.name: p.stat().st_ino
            for p in (home / "objects").rglob("*")
            if p.is_file() and p.parent.name not in (SPARE_DIR, "staging")
        }

    async def main() -> None:
        async with serving_node(Settings(data_dir=home, listen="127.0.0.1:0")) as served:
            owner = Credentials(token=read_owner_token(home))
            async with Client(served.address, credentials=owner) as client:
                info = await client.node_info()
            local = ObjectSocketClient(info.object_socket, owner)
            transfer = ObjectTransferClient(owner)
            try:
                for put in (
                    lambda v: local.put("k", v),
                    lambda v: transfer.put(info.object_transfer_address, "k", v),
                ):
                    await put(values[0])
                    [first] = inodes().values()
                    await put(values[1])  # (the first file: a spare now)
                    await put(values[2])  # written over it
                    assert list(inodes().values()) == [first]
                    assert (await local.get("k"))[0] == values[2]
            finally:
                await local.aclose()
                await transfer.aclose()

    anyio.run(main)


@needs_leases
def test_a_small_value_leaves_a_large_spare_for_a_large_one(root: Path) -> None:
    pool = SpareFiles(root)
    _retired(pool, root / "large", 4 * MiB)
    [spare] = pool.directory.iterdir()
    assert not pool.place(root / "small", 10_000)  # (4 MiB is more than 4 x 64 KiB)
    assert spare.exists() and len(pool) == 1
    assert pool.place(root / "fits", MiB)  # (a quarter of it: written over)
    assert not spare.exists() and (root / "fits").stat().st_size == 4 * MiB
    _retired(pool, root / "short", MiB // 2)
    assert pool.place(root / "longer", MiB)  # (shorter than the value: all of it used)


def test_the_pool_may_fill_its_bytes_exactly(root: Path) -> None:
    pool = SpareFiles(root, max_bytes=2 * MiB)
    _retired(pool, root / "a", MiB)
    _retired(pool, root / "b", MiB)  # (2 MiB held: at the bound, not past it)
    assert len(pool) == 2
    assert pool.directory.stat().st_mode & 0o777 == 0o700  # (the node's alone)


def test_no_spare_is_kept_where_the_file_system_cannot_be_asked(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(path: object) -> None:
        raise OSError("statvfs refused")

    pool = SpareFiles(root)
    monkeypatch.setattr(spare_files.os, "statvfs", fails)
    assert not _retired(pool, root / "v").exists() and len(pool) == 0
    assert not pool.place(root / "new", 4096)  # (and a new file is made as before)


@needs_leases
def test_the_smallest_spare_that_holds_the_value_is_written_over(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spares named in the order they come (a name is random): the largest first, so no
    # order but their sizes' picks the smallest.
    names = iter(range(100))
    monkeypatch.setattr(spare_files.os, "urandom", lambda n: next(names).to_bytes(n, "big"))
    pool = SpareFiles(root)
    for i, size in enumerate([4 * MiB, 3 * MiB, 2 * MiB, MiB + 1]):
        _retired(pool, root / f"v{i}", size)
    assert pool.place(root / "new", MiB)
    assert (root / "new").stat().st_size == MiB + 1
    assert sorted(p.stat().st_size for p in pool.directory.iterdir()) == [
        2 * MiB,
        3 * MiB,
        4 * MiB,
    ]


def test_a_spare_removed_behind_the_pools_back_is_passed_over(root: Path) -> None:
    pool = SpareFiles(root)
    _retired(pool, root / "v")
    [spare] = pool.directory.iterdir()
    spare.unlink()
    assert not pool.place(root / "new", 4096)
    assert not (root / "new").exists() and len(pool) == 0


@needs_leases
def test_spares_stay_while_a_new_file_leaves_just_enough_room(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _one_spare_in_use(root) as (pool, _):
        size = 2 * MiB

        class JustEnough:
            f_frsize = 4096
            f_blocks = 10**6
            f_bavail = (size + spare_files.LOW_SPACE_BYTES) // 4096

        monkeypatch.setattr(spare_files.os, "statvfs", lambda path: JustEnough)
        assert not pool.place(root / "new", size)
        assert len(pool) == 1


def test_a_value_written_anew_is_the_nodes_alone(root: Path) -> None:
    write_over(root / "fresh", b"f" * 5000)
    assert (root / "fresh").stat().st_mode & 0o777 == 0o600
    assert (root / "fresh").read_bytes() == b"f" * 5000


def test_the_setting_object_spare_bytes_bounds_the_pool_and_0_keeps_none(
    tmp_path: Path,
) -> None:
    from spear.config import Settings
    from spear.errors import InvalidArgument
    from spear.node.assembly import _object_store

    env = {"HOME": str(tmp_path), "SPEAR_OBJECT_SPARE_BYTES": "0"}
    none = Settings.load(env=env, data_dir=tmp_path / "a")
    assert none.object_spare_bytes == 0
    assert Settings.load(env={"HOME": str(tmp_path)}).object_spare_bytes == 1024**3
    with pytest.raises(InvalidArgument, match="object_spare_bytes must be 0"):
        Settings(data_dir=tmp_path / "b", object_spare_bytes=-1)
    with pytest.raises(InvalidArgument, match="SPEAR_OBJECT_SPARE_BYTES: setting object_spa"):
        Settings.load(env={**env, "SPEAR_OBJECT_SPARE_BYTES": "-1"})

    async def main() -> None:
        kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
        try:
            store = _object_store(none, kv)
            await store.put("a", os.urandom(MiB))
            await store.put("a", os.urandom(MiB))  # (the first file unlinked: no pool)
            assert len(store.spares) == 0 and not store.spares.directory.exists()
            kept = _object_store(
                Settings.load(env={**env, "SPEAR_OBJECT_SPARE_BYTES": str(MiB)}), kv
            )
            assert (kept.spares.max_files, kept.spares.max_bytes) == (16, MiB)
        finally:
            await kv.aclose()

    anyio.run(main)
