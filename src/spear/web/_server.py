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
from typing import TYPE_CHECKING

import anyio
from loguru import logger

if TYPE_CHECKING:
    import socket
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from starlette.routing import BaseRoute

    from spear.config import Settings
    from spear.core.sms import MetadataServer
    from spear.node.cluster import ClusterNode
    from spear.node.inprocess import InProcessNode
    from spear.node.quotas import TaskSlots
    from spear.web._sources import Source
    from spear.web.metrics import Exposition

OFF = "off"
_FLAG = "--http"
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


def check_http_listen(listen: str) -> None:
    """Raise InvalidArgument, one clear line, unless `listen` is HOST:PORT or "off"."""
    if listen != OFF:
        from spear.transport.serving import parse_listen

        parse_listen(listen, _FLAG)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def serving(
    api: InProcessNode | ClusterNode, settings: Settings, slots: TaskSlots | None = None
) -> AsyncIterator[str | None]:
    """Serve a SPEARlet's dashboard and /metrics while inside; yields its URL (None when
    `http_listen` is "off"). `slots`: the namespaces' task quotas the gRPC server holds,
    which tasks submitted from the dashboard count against too."""
    if settings.http_listen == OFF:
        yield None
        return
    from spear.web._actions import action_routes
    from spear.web._sources import NodeSource
    from spear.web._wiring import trigger_routes
    from spear.web.metrics import Exposition, NodeCollector

    if slots is None:
        from spear.node.quotas import QuotaFile, TaskSlots
        from spear.transport.auth import AUTH_DIR

        slots = TaskSlots(QuotaFile(settings.data_dir / AUTH_DIR))
    extra = [*action_routes(api, slots), *await trigger_routes(api, settings)]
    collector = NodeCollector(api)
    collector.attach()
    try:
        async with _serve(
            NodeSource(api), Exposition(collector), settings, "spearlet", extra
        ) as url:
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
    source: Source,
    exposition: Exposition,
    settings: Settings,
    role: str,
    extra_routes: Sequence[BaseRoute] = (),
) -> AsyncIterator[str]:
    from spear.transport.serving import listening_socket
    from spear.web._app import build_app
    from spear.web._auth import guarded
    from spear.web._uvicorn import make_server

    sock = listening_socket(settings.http_listen, _FLAG)
    url = _url(sock)
    closing = anyio.Event()
    app = build_app(
        source,
        exposition,
        closing=closing,
        loopback=_is_loopback(sock.getsockname()[0]),
        extra_routes=extra_routes,
    )
    gated = guarded(app, settings.data_dir, scoped_views=role == "spearlet")
    server = make_server(gated, ws_max_size=settings.stream_message_max_bytes)
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
