"""Value files no version names any more, kept to be written over by the next values.

A new value's file costs the kernel new pages: a new 1 MiB file written and a replaced one
unlinked took 0.52 ms on this machine's tmpfs (0.35 on its disk's page cache), writing
the same bytes over a file already there 0.13 (0.09); for 64 MiB 42 ms against 15. On a
virtual machine the new pages can be worse: the pages of freed files go back to the host
(free page reporting) and come back one fault at a time, so a node that pulled 1 GiB in
0.7 s took 3-4 s in other rounds (docs/benchmarks.md, "Value files written over, and a
value's memory"). Ray's object store keeps the memory it mapped once; spear keeps every
value as a file of its own, so it keeps the files of replaced values for a while instead
(a deleted value's room is given back at once), and writes the next value over one.

A spare is written over only when nothing has it open: not a reader that opened it before
its version was replaced (a node sending it, a client it was handed to over the object
socket, a map of it in this process). The kernel says so: a write lease
(`fcntl(F_SETLEASE, F_WRLCK)`) is granted only on a file no one else has open or mapped.
Nobody opens a spare anew: it has left the store's tree, and readers open values by the
names their versions give. A reader that looked a name up before the version went finds
no file and looks again, as it did when the file was unlinked.

Kept within bounds: at most `max_files` spares of at most `max_bytes` together, and none
while the data dir's file system has less than a quarter free; one that fits none of this
is unlinked as before. A new file that would leave the disk short drops every spare first.
Spares left by an earlier run are removed by `clear_unknown` (with the store's staging).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

SPARE_DIR = "spare"
F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)  # (Linux's number where fcntl has none)
MIN_FREE_SHARE = 0.25  # no spare is kept while the file system has less free than this
LOW_SPACE_BYTES = 8 * 1024 * 1024  # a new file leaving less than this drops every spare
OVERSIZE = 4  # a spare more than this many times a value's size is left for a larger one
SMALL_BYTES = 64 * 1024  # (below this, a value counts as this large)


class SpareFiles:
    """The spare files of one object store, in `root/spare`; safe from any thread."""

    def __init__(self, root: Path, *, max_files: int = 16, max_bytes: int = 1024**3) -> None:
        self.directory = root / SPARE_DIR
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}  # name in the directory -> its size

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._sizes)

    # -- keeping -----------------------------------------------------------------------

    def retire(self, path: Path) -> None:
        """`path`, a value file no version names any more: kept as a spare, or unlinked."""
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return
        name = os.urandom(16).hex()
        with self._lock:
            keep = (
                len(self._sizes) < self.max_files
                and sum(self._sizes.values()) + size <= self.max_bytes
                and self._room_to_spare()
            )
            if keep:
                try:
                    os.rename(path, self._spare(name))
                except FileNotFoundError:
                    if not self.directory.is_dir():  # (the first spare: its directory)
                        self.directory.mkdir(mode=0o700, exist_ok=True)
                        keep = _renamed(path, self._spare(name))
                    else:
                        return  # (someone else removed it)
                if keep:
                    self._sizes[name] = size
                    return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _room_to_spare(self) -> bool:
        try:
            fs = os.statvfs(self.directory.parent)
        except OSError:
            return False
        return fs.f_bavail >= fs.f_blocks * MIN_FREE_SHARE

    # -- writing over ------------------------------------------------------------------

    def place(self, path: Path, size: int) -> bool:
        """A spare renamed to the new name `path` when one is free, for a value of `size`
        to be written over it; whether one was. Either way the writer opens `path` with
        `O_WRONLY | O_CREAT` (no `O_TRUNC`: that would free the pages), writes all of the
        value from the start, and truncates the file to `size` (a spare may be longer)."""
        for name in self._candidates(size):
            if self._take(name, path):
                return True
        self._make_room(size)
        return False

    def _candidates(self, size: int) -> list[str]:
        """Spares to try for a value of `size`: those that hold it, smallest first, then
        the rest, largest first (its pages are written over, more are added). Not one
        more than `OVERSIZE` times the value: cut to its size, it would free the rest
        (a small value would take a large spare that a large one could use whole)."""
        with self._lock:
            spares = sorted(self._sizes.items(), key=lambda item: item[1])
        most = OVERSIZE * max(size, SMALL_BYTES)
        holding = [name for name, held in spares if size <= held <= most]
        short = [name for name, held in reversed(spares) if held < size]
        return holding + short

    def _take(self, name: str, path: Path) -> bool:
        """The spare `name` renamed to `path`; False if another writer took it first or
        someone still has it open (then it stays a spare)."""
        with self._lock:
            size = self._sizes.pop(name, None)
        if size is None:
            return False  # (taken by another writer meanwhile)
        spare = self._spare(name)
        try:
            fd = os.open(spare, os.O_WRONLY)
        except FileNotFoundError:
            return False
        try:
            alone = _alone(fd)
            if alone:
                os.utime(fd)  # (its time now: a new file to whoever sweeps by age)
                return _renamed(spare, path)
        finally:
            os.close(fd)
        if alone is None:  # (leases refused here: no spare can be known free)
            self.max_files = 0
            self.drop_all()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spare)
            return False
        with self._lock:
            self._sizes[name] = size
        return False

    def _make_room(self, size: int) -> None:
        try:
            fs = os.statvfs(self.directory.parent)
        except OSError:
            return
        if self._sizes and fs.f_bavail * fs.f_frsize < size + LOW_SPACE_BYTES:
            self.drop_all()

    # -- letting go --------------------------------------------------------------------

    def drop_all(self) -> int:
        """Unlink every spare; how many."""
        with self._lock:
            names, self._sizes = list(self._sizes), {}
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._spare(name))
        return len(names)

    def clear_unknown(self) -> int:
        """Unlink the files of the spare directory this pool does not hold (an earlier
        run's); how many."""
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                with self._lock:
                    known = entry.name in self._sizes
                if not known:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def _spare(self, name: str) -> Path:
        return self.directory / name


def _alone(fd: int) -> bool | None:
    """Whether no one else has the file of `fd` open or mapped (a write lease is granted
    only then, and given back at once); None if this file system or user has no leases."""
    try:
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            return False
        return None
    fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
    return True


def write_over(path: Path, data: bytes | memoryview) -> None:
    """`data` into the file `path` from its start (a new file if there is none there),
    the file then cut to its length: a spare placed there is written over, not freed."""
    view = memoryview(data).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        offset = 0
        while offset < len(view):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(view))
    finally:
        os.close(fd)


def _renamed(source: Path, target: Path) -> bool:
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return False
    return True


__all__ = ["SPARE_DIR", "SpareFiles", "write_over"]
