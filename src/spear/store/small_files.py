"""A whole file read from async code: right on the event loop when it is small, in a
worker thread otherwise.

A hop to a worker thread and back cost ~0.5 ms on a busy cluster member, far more than
reading a few KiB (a task's stdout or result, a small object's value): on every call's
path that hop was the largest part of its time (issue 17). Larger files go to a thread,
as every blocking read of a large file does (CONVENTIONS.md).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio.to_thread

if TYPE_CHECKING:
    from pathlib import Path

READ_ON_LOOP_MAX = 64 * 1024  # a file this small is read on the event loop


def _read(path: Path | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def read_file(path: Path | str, size: int | None = None) -> bytes:
    """The bytes of the file at `path` (FileNotFoundError if there is none); `size`, its
    size if the caller knows it, chooses where it is read (looked up otherwise)."""
    if size is None:
        size = os.stat(path).st_size
    if size <= READ_ON_LOOP_MAX:
        return _read(path)
    data: bytes = await anyio.to_thread.run_sync(_read, path)
    return data
