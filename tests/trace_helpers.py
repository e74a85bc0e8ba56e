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


class OtlpReceiver:
    """A real OTLP/HTTP traces endpoint on loopback: decodes each export (protobuf,
    gzip or not) with opentelemetry-proto and keeps the spans, with the exporting
    process's `service.instance.id`."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    import gzip

                    body = gzip.decompress(body)
                status = 200 if self.path == "/v1/traces" else 404
                if status == 200:
                    receiver.take(body)
                from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts

                reply = ts.ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def take(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts

        request = ts.ExportTraceServiceRequest.FromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "process": resource.get("service.instance.id", ""),
                            "attributes": {
                                a.key: a.value.string_value or a.value.int_value
                                for a in span.attributes
                            },
                        }
                    )
        with self._lock:
            self.spans.extend(found)

    def of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
