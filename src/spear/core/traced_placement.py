"""The `spear.place` span of a traced node's placement decision (docs/observability.md):
around `Scheduler.submit`, current while it runs, so the task made here, or the forward
to another node, hangs under it. A node that does not trace pays one None check.

A task that waited in the queue is placed later, from the scheduler's own loop: its
record's context (its placement's span) is made current again for that, so the task
started here, or the forward, stays in the submit's trace (`in_its_trace`)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from spear.tracing.base import current_traceparent

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from spear.core.models import FunctionSpec, Task

_P = ParamSpec("_P")
_R = TypeVar("_R")


def traced_placement(submit: Callable[_P, Awaitable[Task]]) -> Callable[_P, Awaitable[Task]]:
    """Wrap a scheduler's `submit(self, spec, ...)` in a `spear.place` span when its node
    traces; the span says where the task went (its node and state)."""

    @functools.wraps(submit)
    async def placed(*args: _P.args, **kw: _P.kwargs) -> Task:
        scheduler: Any = args[0]
        tracing = scheduler.node.controller.tracing
        if tracing is None:
            return await submit(*args, **kw)
        spec: FunctionSpec = args[1]  # type: ignore[assignment]
        with tracing.span("spear.place", {"spear.task.runtime": spec.runtime.value}) as span:
            task = await submit(*args, **kw)
            span.set_attribute("spear.task.id", task.id)
            span.set_attribute("spear.placed_on", task.node or "")
            span.set_attribute("spear.task.state", task.state.value)
            return task

    return placed


def in_its_trace(place: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """Wrap a scheduler's `_place_head(self, head)` so the queued task's own context (its
    record's `traceparent`, "" when untraced) is current while it is placed."""

    @functools.wraps(place)
    async def placed(*args: _P.args, **kw: _P.kwargs) -> _R:
        traceparent: str = args[1].task.traceparent  # type: ignore[attr-defined]
        if not traceparent:
            return await place(*args, **kw)
        token = current_traceparent.set(traceparent)
        try:
            return await place(*args, **kw)
        finally:
            current_traceparent.reset(token)

    return placed
