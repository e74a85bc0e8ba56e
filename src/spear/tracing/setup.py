"""The tracer a process gets from its settings: None unless an OTLP endpoint is set."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spear.tracing.base import Tracing

_TRACES_PATH = "/v1/traces"


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of `endpoint`: a base URL (as OTEL_EXPORTER_OTLP_ENDPOINT
    gives it) gets `/v1/traces`; a URL ending in it is kept."""
    url = endpoint.rstrip("/")
    return url if url.endswith(_TRACES_PATH) else url + _TRACES_PATH


def build_tracing(endpoint: str | None, node_name: str) -> Tracing | None:
    """A tracer exporting over OTLP/HTTP to `endpoint` (None when it is unset: tracing
    off, and no OpenTelemetry module is imported)."""
    if not endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        from spear.errors import InvalidArgument

        raise InvalidArgument(
            "trace_otlp_endpoint is set but OpenTelemetry is not installed "
            "(pip install 'spear[tracing]')"
        ) from None
    from spear.tracing.otel import OtelTracing
    from spear.tracing.sdk_logs import route_sdk_logs

    url = otlp_traces_url(endpoint)
    route_sdk_logs(url)  # (the SDK's retries: in spear's log, not on stderr)
    return OtelTracing(OTLPSpanExporter(endpoint=url), node_name=node_name)
