"""OpenTelemetry traces of tasks (docs/observability.md).

`base.py` is the seam the rest of spear calls (no OpenTelemetry import: with tracing off
nothing of it is loaded and every hook is one None check); `otel.py` implements it on the
OpenTelemetry SDK with a tracer provider the node owns (never the global one); `setup.py`
builds it from the settings.
"""
