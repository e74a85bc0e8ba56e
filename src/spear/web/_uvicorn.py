"""The one place that knows uvicorn (imported only when an HTTP server starts).

`Server.capture_signals` is uvicorn's public hook for its signal handling; ours does
nothing, because signals belong to the CLI entry point (the two-stage drain of `spear
serve`), which stops the server through `should_exit`. uvicorn's own handlers would
replace the event loop's and swallow the drain. Its log (errors in a request included)
goes to spear's system log, not to stderr.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import uvicorn
from loguru import logger

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import ASGIApp


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# uvicorn's WebSocket protocol (0.3x-0.5x) logs this after a handshake refused with an
# HTTP answer (the websocket.http.response extension), which is how a route refuses one.
_NOT_AN_ERROR = "ASGI callable returned without completing handshake."


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == _NOT_AN_ERROR:
            return
        level = record.levelname if record.levelname in ("DEBUG", "INFO", "WARNING") else "ERROR"
        logger.opt(exception=record.exc_info).log(level, "http: {}", record.getMessage())


def _route_logs() -> None:
    log = logging.getLogger("uvicorn")
    if not any(isinstance(h, _ToLoguru) for h in log.handlers):
        log.addHandler(_ToLoguru())
        log.setLevel(logging.WARNING)  # its start/stop notes are ours to write
        log.propagate = False


def make_server(app: ASGIApp, *, ws_max_size: int = 1024**2) -> Server:
    _route_logs()
    return Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            ws="auto",  # WebSocket streams (web/_triggers.py): the websockets package
            ws_max_size=ws_max_size,  # a message is at most what a task's stream takes
            timeout_graceful_shutdown=2,
        )
    )
