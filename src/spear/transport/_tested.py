"""Whether a speed-up may replace a library's function: only on the library version it
was tested against (transport/_speedups.py installs them; each patch module asks here)."""

from __future__ import annotations

import importlib

from spear._logging import logger

_declined: set[str] = set()


def tested_version(distribution: str, tested: str) -> bool:
    """Whether the installed `distribution` is a version starting with `tested` (e.g.
    "6.1."), the versions a patch of it was tested against. Says once when it is not."""
    version = _version(distribution)
    if version.startswith(tested):
        return True
    if distribution not in _declined:
        _declined.add(distribution)
        logger.debug(
            "{} {} is not the {}* spear's speed-up was tested with: not installed",
            distribution,
            version,
            tested,
        )
    return False


def _version(distribution: str) -> str:
    """The installed version: the package's own `__version__` (grpclib and hyperframe have
    one; importlib.metadata would import the email package, ~10 ms of a CLI command)."""
    try:
        version = getattr(importlib.import_module(distribution), "__version__", None)
    except ImportError:
        return "unknown"
    if isinstance(version, str):
        return version
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
