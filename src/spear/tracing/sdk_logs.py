"""OpenTelemetry's own log records, routed to spear's logger (docs/observability.md).

The SDK's exporter and span processor log through the standard `logging` module; with
no handler configured, Python prints their warnings on stderr (`Transient error ...
retrying in 1.1s.`, twice or more per batch while the collector is down). When a node's
tracing is set up from its settings (`spear.tracing.setup.build_tracing`), the
`opentelemetry` loggers (only those) get one handler that passes each record to spear's
logger at debug level; the first warning or error is also said once, in one clear line,
on the standard `spear.tracing` logger (so on stderr unless the program configured
logging otherwise). Nothing is changed at import time.
"""

from __future__ import annotations

import logging

from spear._logging import logger

_OTEL_LOGGER = "opentelemetry"


class _ToSpearLog(logging.Handler):
    """Each record at debug in spear's log; the first trouble once at warning."""

    def __init__(self, url: str) -> None:
        super().__init__(logging.DEBUG)
        self.url = url
        self.warned = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record of theirs: never an error of ours
            message = str(record.msg)
        if record.levelno >= logging.WARNING and not self.warned:
            self.warned = True
            logging.getLogger("spear.tracing").warning(
                "spear: traces cannot be exported to %s (is the collector up?); spans are "
                "dropped while it is away (details in spear's log at debug level)",
                self.url,
            )
        logger.debug("opentelemetry: {}", message)


def route_sdk_logs(url: str) -> None:
    """Send the `opentelemetry` loggers' records to spear's logger (once per process:
    a second node's setup keeps the first handler)."""
    otel = logging.getLogger(_OTEL_LOGGER)
    if any(isinstance(h, _ToSpearLog) for h in otel.handlers):
        return
    otel.addHandler(_ToSpearLog(url))
    otel.propagate = False  # (not also on stderr through the root logger's last resort)
