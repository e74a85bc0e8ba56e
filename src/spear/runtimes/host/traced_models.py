"""A traced task's model calls as spans (docs/observability.md): one `spear.model <kind>`
span per chat or embedding, under the task's run span. Untraced tasks pay a None check."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from spear.core.worker import TaskContext


@contextlib.contextmanager
def model_span(ctx: TaskContext, kind: str, model: Callable[[], str]) -> Iterator[None]:
    """Record the block as one model call of the task (failed, with why, if it raises);
    `model()` names the model it was routed to (asked only when the task is traced)."""
    trace = ctx.trace
    if trace is None:
        yield
        return
    started = time.time_ns()
    error: str | None = None
    try:
        name = model()
    except Exception as exc:  # (refused: the call itself says so)
        name = f"? ({exc})"
    try:
        yield
    except BaseException as exc:
        error = str(exc) or type(exc).__name__
        raise
    finally:
        trace.model_call(kind, name, started, error)
