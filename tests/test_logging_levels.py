"""spear's logger front (spear/_logging.py) hands loguru a message only when some handler
would write it: a level at or above the lowest handler's is written, one below is dropped
before anything is built for it, and a handler added later lowers that bar at once."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from loguru import logger as loguru_logger

from spear._logging import logger

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def _heard(level: str) -> Iterator[list[str]]:
    """The messages of this module a handler at `level` writes while entered."""
    messages: list[str] = []
    sink = loguru_logger.add(
        lambda m: messages.append(str(m)),
        level=level,
        format="{level}: {message}",
        filter=__name__,
    )
    try:
        yield messages
    finally:
        loguru_logger.remove(sink)


def test_a_message_is_written_at_its_handlers_level_and_dropped_below_it() -> None:
    with _heard("INFO") as messages:
        logger.debug("below {}", "the bar")
        logger.info("at {}", "the bar")
        logger.warning("above {}", "the bar")
    assert messages == ["INFO: at the bar\n", "WARNING: above the bar\n"]


def test_a_handler_at_a_lower_level_lowers_the_bar_while_it_is_there() -> None:
    with _heard("WARNING") as warnings:
        logger.debug("unheard")
        with _heard("DEBUG") as everything:
            logger.debug("heard by one")
        logger.debug("unheard again")
    assert warnings == []
    assert everything == ["DEBUG: heard by one\n"]
