"""A tracing client's spans: `spear.submit` around a call that makes a task, its trace
context sent with the call (transport/trace_metadata.py), so the task's spans on every
node it passes join the caller's trace (docs/observability.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from spear.core.models import FunctionSpec
    from spear.tracing.base import Tracing

_T = TypeVar("_T")


async def traced_submit(tracing: Tracing, how: str, spec: FunctionSpec, call: Awaitable[_T]) -> _T:
    """`call` awaited inside a `spear.submit` span (the root of the task's trace, when the caller
    has none); the span names the task it made."""
    attributes = {"spear.call": how, "spear.task.artifact": spec.artifact}
    with tracing.span("spear.submit", attributes, client=True) as span:
        made = await call
        task: Any = getattr(made, "task", made)  # a TaskHandle or TaskResult, or a Task
        task_id = getattr(task, "id", None)
        if isinstance(task_id, str):
            span.set_attribute("spear.task.id", task_id)
        return made
