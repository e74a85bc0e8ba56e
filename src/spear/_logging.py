"""System log setup (seed §7.2). Only the CLI entry point calls this; a library stays quiet."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from spear.config import Settings


def configure(settings: Settings, *, console: bool = False) -> None:
    """Send spear's system log to a rotating file under the data dir (and stderr if asked)."""
    logger.remove()
    logger.enable("spear")
    serialize = settings.log_format == "json"
    try:
        settings.system_log_path.parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            settings.system_log_path,
            level=settings.log_level.upper(),
            rotation="10 MB",
            retention=5,
            serialize=serialize,
            enqueue=False,
        )
    except (OSError, ValueError):
        pass  # an unusable data dir is reported by the command itself, in one line
    if console:
        logger.add(sys.stderr, level=settings.log_level.upper(), serialize=serialize)
