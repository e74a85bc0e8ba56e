"""spear's version: the installed distribution's, read once, on demand (importlib.metadata
scans the installed packages: a few ms no command that does not print it should pay)."""

from __future__ import annotations

import functools


@functools.cache
def version() -> str:
    from importlib.metadata import version as installed

    return installed("spear")
