"""Helpers for trace tests: a local node tracing into an exporter, span lookups."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from spear.config import Settings
from spear.core.node import Spearlet
from spear.node.assembly import local_components
from spear.tracing.otel import OtelTracing

if TYPE_CHECKING:
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter


def traced_node(home: Path, exporter: SpanExporter, **settings: Any) -> Spearlet:
    """A local node whose tracer exports to `exporter` as each span ends."""
    parts = local_components(Settings(data_dir=home, **settings))
    tracing = OtelTracing(exporter, node_name="local", batch=False)
    parts["services"] = dataclasses.replace(parts["services"], tracing=tracing)
    return Spearlet(**parts)


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if (s.name or "").startswith(prefix)]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None
