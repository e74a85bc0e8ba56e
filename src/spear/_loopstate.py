"""What an asyncio event loop is about to do, for code that may skip a turn of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


def ready_count(loop: asyncio.AbstractEventLoop) -> int:
    """How many callbacks `loop` runs on its next turn.

    asyncio's own loops say (`_ready`); any other loop counts as busy, so callers take
    their general path there.
    """
    ready = getattr(loop, "_ready", None)
    return len(ready) if ready is not None else 1 << 30
