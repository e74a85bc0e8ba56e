"""Whether a speed-up may replace a library's function: only on the library version it
was tested against (transport/_speedups.py installs them; each patch module asks here)."""

from __future__ import annotations

import importlib.metadata

from spear._logging import logger

_declined: set[str] = set()


def tested_version(distribution: str, tested: str) -> bool:
    """Whether the installed `distribution` is a version starting with `tested` (e.g.
    "6.1."), the versions a patch of it was tested against. Says once when it is not."""
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
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
