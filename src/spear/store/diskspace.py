"""A full disk is a limit reached, not a bug: one clear error, and a node that goes on.

`no_space(exc)` is the NoSpace error (a ResourceExhausted: RESOURCE_EXHAUSTED on the wire,
with its own code; exit 71) that an OSError of a full disk or quota stands for. `Reserve`
keeps a little space of the data dir aside (`DATA/reserve`), given back when the database
cannot open for want of room, so that commands that read (`spear tasks`) work on a full
disk while the owner frees space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from typing import TYPE_CHECKING

from spear.errors import NoSpace

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_SPACE = "no space left on device"  # how the refusals of a full disk begin
RESERVE_FILE = "reserve"
RESERVE_BYTES = 4 * 1024 * 1024
# Below this much room for an unprivileged writer, a node's disk counts as full: it takes
# no new task (its record and its end could not be written) and the cluster places it
# elsewhere. LevelDB writes logs of a few KiB and compacts in MiBs.
LOW_SPACE_BYTES = 8 * 1024 * 1024
LOOK_EVERY_S = 0.5  # statvfs costs microseconds, but a node places thousands a second


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the user's disk quota) is full."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    cause = exc.__cause__ or exc.__context__
    text = str(exc)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return True
    return cause is not None and cause is not exc and is_no_space(cause)


def no_space(exc: BaseException, what: str = "") -> NoSpace | None:
    """The error to answer for `exc` if it is a full disk, else None."""
    if not is_no_space(exc):
        return None
    where = f" ({what})" if what else ""
    return NoSpace(f"{NO_SPACE}{where}: free space in the data dir")


class Reserve:
    """A file of `size` bytes in the data dir, kept while there is room and given back
    (deleted) when the node must write something to go on reading."""

    def __init__(self, data_dir: Path, size: int = RESERVE_BYTES) -> None:
        self.path = data_dir / RESERVE_FILE
        self.size = size

    def keep(self) -> bool:
        """Make the reserve if it is missing and the disk has room; True if it exists."""
        if self.path.exists():
            return True
        tmp = self.path.with_name(f".{RESERVE_FILE}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(b"\0" * self.size)  # written, not sparse: the blocks are ours
            os.replace(tmp, self.path)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False

    def release(self) -> bool:
        """Give the space back; True if there was a reserve to give."""
        try:
            self.path.unlink()
            return True
        except OSError:
            return False


class DiskRoom:
    """Whether the disk under `path` is (nearly) full, looked up at most every
    `LOOK_EVERY_S` (or at once, when a write has just said so)."""

    def __init__(
        self,
        path: Path,
        low_bytes: int = LOW_SPACE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.low_bytes = low_bytes
        self._clock = clock
        self._full = False
        self._next_look = 0.0

    def full(self, *, look_now: bool = False) -> bool:
        now = self._clock()
        if look_now or now >= self._next_look:
            self._full = self.free_bytes() < self.low_bytes
            self._next_look = now + LOOK_EVERY_S
        return self._full

    def free_bytes(self) -> int:
        """Room for an unprivileged writer; a path that cannot be looked at has room
        (the write itself will say what is wrong)."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return self.low_bytes
        return st.f_bavail * st.f_frsize
