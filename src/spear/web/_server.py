"""The HTTP server of a node or the SMS: uvicorn serving our Starlette app as a task of the
process's own event loop (docs/dashboard.md says why this stack).

`serving(api, settings)` / `serving_sms(sms, settings, address)` are the one hook where a
daemon starts: `async with web.serving(api, settings) as url:` beside the gRPC server.
They bind the socket first (so the address is known, and connections queue, before
uvicorn runs), write it to DATA/<role>.http for `spear dashboard`, and on the way out stop
the live feeds and the server, and remove the file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from typing import TYPE_CHECKING

import anyio
from loguru import logger

from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from spear.config import Settings
    from spear.core.sms import MetadataServer
    from spear.node.inprocess import InProcessNode
    from spear.web._sources import Source
    from spear.web.metrics import Exposition

OFF = "off"
_STOP_TIMEOUT_S = 5.0


def http_address_file(data_dir: Path, role: str) -> Path:
    """Where a daemon of `role` (spearlet or sms) on `data_dir` writes its dashboard URL."""
    return data_dir / f"{role}.http"


def read_http_address(data_dir: Path, role: str) -> str | None:
    try:
        text = http_address_file(data_dir, role).read_text().strip()
    except OSError:
        return None
    return text or None


def parse_http_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT', '[V6]:PORT' or 'PORT' -> (host, port), with one clear error."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "", listen
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise InvalidArgument(f"--http expects HOST:PORT (or off), got {listen!r}") from None
    if not 0 <= number <= 65535:
        raise InvalidArgument(f"--http: port {number} is out of range")
    return host, number


def check_http_listen(listen: str) -> None:
    """Raise InvalidArgument, one clear line, unless `listen` is HOST:PORT or "off"."""
    if listen != OFF:
        parse_http_listen(listen)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(listen: str) -> socket.socket:
    host, port = parse_http_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InvalidArgument(f"cannot serve HTTP on {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def serving(api: InProcessNode, settings: Settings) -> AsyncIterator[str | None]:
    """Serve a SPEARlet's dashboard and /metrics while inside; yields its URL (None when
    `http_listen` is "off")."""
    if settings.http_listen == OFF:
        yield None
        return
    from spear.web._sources import NodeSource
    from spear.web.metrics import Exposition, NodeCollector

    collector = NodeCollector(api)
    collector.attach()
    try:
        async with _serve(NodeSource(api), Exposition(collector), settings, "spearlet") as url:
            yield url
    finally:
        collector.detach()


@contextlib.asynccontextmanager
async def serving_sms(
    sms: MetadataServer, settings: Settings, address: str
) -> AsyncIterator[str | None]:
    """Serve the SMS's dashboard and /metrics while inside (`address`: its gRPC address)."""
    if settings.http_listen == OFF:
        yield None
        return
    from spear.web._sources import SmsSource
    from spear.web.metrics import Exposition, SmsCollector

    exposition = Exposition(SmsCollector(sms))
    async with _serve(SmsSource(sms, address), exposition, settings, "sms") as url:
        yield url


@contextlib.asynccontextmanager
async def _serve(
    source: Source, exposition: Exposition, settings: Settings, role: str
) -> AsyncIterator[str]:
    from spear.web._app import build_app
    from spear.web._uvicorn import make_server

    sock = _bind(settings.http_listen)
    url = _url(sock)
    closing = anyio.Event()
    app = build_app(
        source, exposition, closing=closing, loopback=_is_loopback(sock.getsockname()[0])
    )
    server = make_server(app)
    path = http_address_file(settings.data_dir, role)
    done = anyio.Event()

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            _write_atomically(path, url + "\n")
            logger.info("dashboard and /metrics on {}", url)
            yield url
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(OSError):
                    if path.read_text().strip() == url:
                        path.unlink()
                closing.set()
                server.should_exit = True
                with anyio.move_on_after(_STOP_TIMEOUT_S):
                    await done.wait()
            tg.cancel_scope.cancel()


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
