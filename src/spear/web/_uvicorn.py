"""The one place that knows uvicorn (imported only when an HTTP server starts).

`Server.capture_signals` is uvicorn's public hook for its signal handling; ours does
nothing, because signals belong to the CLI entry point (the two-stage drain of `spear
serve`), which stops the server through `should_exit`. uvicorn's own handlers would
replace the event loop's and swallow the drain.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import ASGIApp


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(app: ASGIApp) -> Server:
    return Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            ws="none",  # WebSocket streams (issue 19) turn this on with their routes
            timeout_graceful_shutdown=2,
        )
    )
