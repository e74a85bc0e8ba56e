"""A tracing client's spans: `spear.submit` around a call that makes a task, its trace
context sent with the call (transport/trace_metadata.py), so the task's spans on every
node it passes join the caller's trace (docs/observability.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from spear.core.models import FunctionSpec, Task
    from spear.errors import SpearError
    from spear.tracing.base import SpanHandle, Tracing

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


async def traced_batch(
    tracing: Tracing,
    how: str,
    specs: Sequence[FunctionSpec],
    requests: Sequence[Any],
    send: Callable[[], Awaitable[list[Task | SpearError]]],
) -> list[Task | SpearError]:
    """A SubmitTasks batch with one `spear.submit` span per task (each the root of its
    task's own trace, or a child of the caller's span when it has one), each request
    carrying its span's context (`SubmitTaskRequest.traceparent`); a task refused in
    the batch ends its span failed, with the reason."""
    spans: list[SpanHandle] = []
    for spec, request in zip(specs, requests, strict=True):
        attributes = {"spear.call": how, "spear.task.artifact": spec.artifact}
        span = tracing.start_span("spear.submit", None, attributes, client=True)
        request.traceparent = span.traceparent
        spans.append(span)
    try:
        outcomes = await send()
    except BaseException as exc:
        for span in spans:
            span.end(f"{type(exc).__name__}: {exc}")
        raise
    for span, outcome in zip(spans, outcomes, strict=True):
        task_id = getattr(outcome, "id", None)
        if isinstance(task_id, str):
            span.set_attribute("spear.task.id", task_id)
            span.end()
        else:
            span.end(str(outcome))
    return outcomes
