"""The only place that knows HTTP: each daemon's dashboard, `/metrics`, (later) HTTP
triggers and WebSocket streams, on one server sharing the daemon's event loop.

Importing this package loads no web library; they load when a server starts.
"""

from __future__ import annotations

from spear.web._server import (
    check_http_listen,
    http_address_file,
    read_http_address,
    serving,
    serving_sms,
)

__all__ = ["check_http_listen", "http_address_file", "read_http_address", "serving", "serving_sms"]
