"""Trace ids on log lines (docs/observability.md): a message spear logs while a trace
context is current (a traced call being handled, a placement, a forward, a queued task
being placed) carries that trace's id as `trace_id` in its loguru `extra` (in the JSON
log format, `record.extra.trace_id`). Added when a process sets tracing up; a process
that does not trace pays nothing."""

from __future__ import annotations

from typing import Any

from spear._logging import add_context_extra
from spear.tracing.base import current_traceparent, trace_id_of


def trace_extra() -> dict[str, Any]:
    """`{"trace_id": ...}` when a trace context is current, else nothing."""
    traceparent = current_traceparent.get()
    trace_id = trace_id_of(traceparent) if traceparent else ""
    return {"trace_id": trace_id} if trace_id else {}


def correlate_logs() -> None:
    """From now on, spear's log lines name the trace they were written in."""
    add_context_extra(trace_extra)
