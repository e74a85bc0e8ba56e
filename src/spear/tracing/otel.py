"""The tracing seam on the OpenTelemetry SDK, with a tracer provider of the node's own.

The provider is never made global (`opentelemetry.trace.set_tracer_provider` is not
called): several nodes in one process (tests, `LocalCluster`) each export as themselves,
and a program embedding spear keeps its own global provider. Only `setup.py` (when
tracing is configured) and tests import this module.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from spear.tracing.base import current_traceparent
from spear.tracing.log_context import correlate_logs

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from opentelemetry.context import Context
    from opentelemetry.trace import Span

_SHUTDOWN_WAIT_S = 2.0
_MAX_OPEN_TASKS = 100_000  # a task never ended (its node lost it) must not grow this forever


def traceparent_of(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def context_of(traceparent: str | None) -> Context | None:
    """The OpenTelemetry context of a remote parent named by `traceparent` (None: none or
    malformed, a new trace starts)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return trace.set_span_in_context(NonRecordingSpan(parent))


class OtelSpan:
    """A SpanHandle over an SDK span."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    @property
    def traceparent(self) -> str:
        return traceparent_of(self._span.get_span_context())

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        self._span.set_attribute(key, value)

    def end(self, error: str | None = None) -> None:
        if error is not None:
            self._span.set_status(Status(StatusCode.ERROR, error))
        self._span.end()


class OtelTaskTrace:
    """A task's run span and what its hostcalls and model calls record under it."""

    __slots__ = ("_context", "_tracer", "run_span", "traceparent")

    def __init__(self, tracer: trace.Tracer, run_span: Span) -> None:
        self._tracer = tracer
        self.run_span = run_span
        self._context = trace.set_span_in_context(run_span)
        self.traceparent = traceparent_of(run_span.get_span_context())

    def hostcall(self, name: str, start_ns: int, result: int | None = None) -> None:
        span = self._tracer.start_span(
            f"spear.hostcall {name}",
            context=self._context,
            start_time=start_ns,
            attributes={"spear.hostcall": name},
        )
        if result is not None:
            span.set_attribute("spear.hostcall.result", result)
            if result < 0:
                span.set_status(Status(StatusCode.ERROR, f"errno {-result}"))
        span.end()

    def model_call(self, kind: str, model: str, start_ns: int, error: str | None = None) -> None:
        span = self._tracer.start_span(
            f"spear.model {kind}",
            context=self._context,
            kind=SpanKind.CLIENT,
            start_time=start_ns,
            attributes={"spear.model.kind": kind, "spear.model": model},
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()


class OtelTracing:
    """The Tracing seam on an SDK tracer provider owned by this object (never global)."""

    def __init__(self, exporter: SpanExporter, *, node_name: str, batch: bool = True) -> None:
        self.provider = TracerProvider(
            resource=Resource.create(
                {"service.name": "spear", "service.instance.id": node_name, "spear.node": node_name}
            ),
            shutdown_on_exit=False,  # (its atexit hook would be a global change; shutdown())
        )
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("spear")
        correlate_logs()  # (log lines written in a trace name it: tracing/log_context.py)
        self._node = node_name
        self._open: dict[str, tuple[Span, OtelTaskTrace | None]] = {}
        self._closed = False

    # -- spans of tasks -----------------------------------------------------------------

    def task_started(
        self, task_id: str, parent: str | None, attributes: Mapping[str, str | int | float | bool]
    ) -> str:
        span = self._tracer.start_span(
            "spear.task",
            context=context_of(parent or current_traceparent.get()),
            kind=SpanKind.SERVER,
            attributes={"spear.task.id": task_id, **attributes},  # (the node: its resource)
        )
        if len(self._open) >= _MAX_OPEN_TASKS:
            self._end_all("the node traced too many unfinished tasks")
        self._open[task_id] = (span, None)
        return traceparent_of(span.get_span_context())

    def run_started(self, task_id: str, traceparent: str) -> OtelTaskTrace:
        found = self._open.get(task_id)
        if found is None:  # opened elsewhere (another process made the record)
            run = self._tracer.start_span(
                "spear.run", context=context_of(traceparent), attributes={"spear.task.id": task_id}
            )
            self._open[task_id] = (run, None)  # (ended as the task's own span)
            return OtelTaskTrace(self._tracer, run)
        task_span, earlier = found
        if earlier is not None:  # a retried task's earlier attempt: it failed
            earlier.run_span.set_status(Status(StatusCode.ERROR, "failed, run again"))
            earlier.run_span.end()
        run = self._tracer.start_span(
            "spear.run",
            context=trace.set_span_in_context(task_span),
            attributes={"spear.task.id": task_id},
        )
        traced = OtelTaskTrace(self._tracer, run)
        self._open[task_id] = (task_span, traced)
        return traced

    def task_ended(
        self,
        task_id: str,
        state: str,
        exit_code: int | None,
        reason: str | None,
        finished_at: float | None,
    ) -> None:
        found = self._open.pop(task_id, None)
        if found is None:
            return
        span, run = found
        end = int(finished_at * 1e9) if finished_at else time.time_ns()
        failed = None if state == "COMPLETED" else Status(StatusCode.ERROR, reason or state)
        if run is not None:  # (its outcome is the task's: said once, on the task's span)
            if failed is not None:
                run.run_span.set_status(failed)
            run.run_span.end(end_time=end)
        span.set_attributes(
            {"spear.task.state": state}
            if exit_code is None
            else {"spear.task.state": state, "spear.task.exit_code": exit_code}
        )
        if failed is not None:
            span.set_status(failed)
        span.end(end_time=end)

    def _end_all(self, why: str) -> None:
        for span, run in self._open.values():
            if run is not None:
                run.run_span.end()
            span.set_status(Status(StatusCode.ERROR, why))
            span.end()
        self._open.clear()

    # -- other spans --------------------------------------------------------------------

    def start_span(
        self,
        name: str,
        parent: str | None,
        attributes: Mapping[str, str | int | float | bool],
        *,
        client: bool = False,
    ) -> OtelSpan:
        span = self._tracer.start_span(
            name,
            context=context_of(parent or current_traceparent.get()),
            kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
            attributes={"spear.node": self._node, **attributes},
        )
        return OtelSpan(span)

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        attributes: Mapping[str, str | int | float | bool],
        *,
        client: bool = False,
    ) -> Iterator[OtelSpan]:
        handle = self.start_span(name, None, attributes, client=client)
        token = current_traceparent.set(handle.traceparent)
        error: str | None = None
        try:
            yield handle
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            current_traceparent.reset(token)
            handle.end(error)

    def shutdown(self, timeout_s: float = _SHUTDOWN_WAIT_S) -> None:
        """Export what is pending and stop, waiting at most `timeout_s`: a collector that
        is down makes the exporter retry for its whole timeout (10 s), which must not
        hold a short `spear run` or a stopping node (the spans are lost either way)."""
        if self._closed:
            return
        self._closed = True
        self._end_all("the node stopped before the task ended")
        stopping = threading.Thread(target=self.provider.shutdown, daemon=True)
        stopping.start()
        stopping.join(timeout_s)
