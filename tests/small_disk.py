"""A real small file system for the tests of a full disk: a tmpfs mounted on a directory
of the test's own (root only; the test is skipped, saying why, elsewhere), and a filler
that fills it, bounded so that a mount gone missing can never fill the machine's disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MIB = 1024 * 1024


@contextlib.contextmanager
def small_disk(mount: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of `size_mib` MiB on `mount` (made if missing), unmounted afterwards."""
    mount.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mount)],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> None:
    """Fill the small disk under `directory` (a file `filler`; delete it to free it)."""
    total = shutil.disk_usage(directory).total
    with open(directory / "filler", "wb") as f, contextlib.suppress(OSError):
        for _ in range(total // MIB + 2):  # (bounded: the disk's size and a little more)
            f.write(b"\0" * MIB)
    assert shutil.disk_usage(directory).free < 64 * 1024
