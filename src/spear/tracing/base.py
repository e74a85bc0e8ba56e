"""The tracing seam: what task, placement, forwarding, hostcall and model hooks call.

Components hold a `Tracing | None` (None: tracing is off, the hook is one None check);
nothing here imports OpenTelemetry. Trace context crosses processes as a W3C
`traceparent` string (`00-<trace id>-<span id>-<flags>`): in gRPC metadata for a call
(`TRACEPARENT_KEY`) and on the task record (`Task.traceparent`), and within a process in
the `current_traceparent` context variable (what a new span or task hangs from).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping
    from contextlib import AbstractContextManager

TRACEPARENT_KEY = "traceparent"  # W3C Trace Context's header, as gRPC metadata


current_traceparent: ContextVar[str | None] = ContextVar("spear_traceparent", default=None)
"""The span that work started now belongs under (a call's, a placement's), if any."""


def trace_id_of(traceparent: str) -> str:
    """The 32 hex digits of the trace a traceparent names ("" for none or a malformed one)."""
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32:
        return ""
    return parts[1]


class SpanHandle(Protocol):
    """One open span."""

    @property
    def traceparent(self) -> str: ...

    def set_attribute(self, key: str, value: str | int | float | bool) -> None: ...

    def end(self, error: str | None = None) -> None:
        """End the span (with `error`, marked failed)."""


class TaskTrace(Protocol):
    """One run of a task: what its hostcalls and model calls record under."""

    @property
    def traceparent(self) -> str: ...

    def hostcall(self, name: str, start_ns: int, result: int | None = None) -> None:
        """A hostcall that started at `start_ns` (time.time_ns) and ended now; `result`
        below 0 is an error (a negative errno)."""

    def model_call(self, kind: str, model: str, start_ns: int, error: str | None = None) -> None:
        """A model call (`chat`, `embed`) that started at `start_ns` and ended now."""


class Tracing(Protocol):
    """A node's (or a client's) tracer: spans for its tasks and calls."""

    def task_started(
        self, task_id: str, parent: str | None, attributes: Mapping[str, str | int | float | bool]
    ) -> str:
        """Open the task's span on this node (under `parent`, else a new trace); its
        traceparent, for the task record."""

    def run_started(self, task_id: str, traceparent: str) -> TaskTrace:
        """Open the span of the task's run (under its task span)."""

    def task_ended(
        self,
        task_id: str,
        state: str,
        exit_code: int | None,
        reason: str | None,
        finished_at: float | None,
    ) -> None:
        """Close the task's run and task spans (no-op for a task not opened here)."""

    def start_span(
        self,
        name: str,
        parent: str | None,
        attributes: Mapping[str, str | int | float | bool],
        *,
        client: bool = False,
    ) -> SpanHandle:
        """Open a span under `parent` (None: the current one, else a new trace)."""

    def span(
        self,
        name: str,
        attributes: Mapping[str, str | int | float | bool],
        *,
        client: bool = False,
    ) -> AbstractContextManager[SpanHandle]:
        """A span around a block, under the current one; it is the current one inside."""

    def shutdown(self) -> None:
        """Export what is pending and stop (safe twice)."""
