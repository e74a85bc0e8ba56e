"""An MCP server for the toolkit's tests, on the official SDK: tools that answer, sleep,
fail and crash. `python mcp_test_server.py` serves stdio; `--http` binds a loopback port
(0: any), prints it on one line, and serves streamable HTTP on /mcp."""

from __future__ import annotations

import os
import socket
import sys
import time

from mcp.server import MCPServer

server = MCPServer("spear-test")


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def nap(seconds: float) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "rested"


@server.tool()
def fail(why: str) -> str:
    """Raise an error."""
    raise RuntimeError(why)


@server.tool()
def crash() -> str:
    """Exit the server process at once."""
    os._exit(3)


def serve_http() -> None:
    import anyio
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(sock.getsockname()[1], flush=True)
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    anyio.run(uvicorn.Server(config).serve, [sock])


if __name__ == "__main__":
    if "--http" in sys.argv:
        serve_http()
    else:
        server.run("stdio")
