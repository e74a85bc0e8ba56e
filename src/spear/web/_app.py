"""The ASGI application one node (or the SMS) serves: dashboard, JSON API, live feeds,
`/metrics`.

The dashboard's routes read; the two that change tasks (submit, cancel: web/_actions.py)
come in `extra_routes` from a SPEARlet, and check the caller's role and CSRF token. The
token gate (web/_auth.py) wraps the app in a daemon; a caller bound to a namespace sees
`source.in_namespace(...)`, the node as that namespace sees it. HTTP triggers and
WebSocket streams (_triggers.py) and the route API that changes them (_route_api.py,
which checks tokens itself) are routes of this same app, passed in as `extra_routes`.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from spear.core.models import TaskState
from spear.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SpearError,
    Unauthenticated,
    Unavailable,
)
from spear.web._auth import caller
from spear.web._events import EventStream, task_feed, task_list_feed, task_summary

if TYPE_CHECKING:
    from collections.abc import Sequence

    import anyio
    from starlette.requests import Request
    from starlette.types import ASGIApp, Receive, Scope, Send

    from spear.web._sources import Source
    from spear.web.metrics import Exposition

_STATIC = resources.files("spear.web") / "static"
_MAX_LIST = 1000
_RESULT_SHOWN = 256 * 1024  # the task page shows this much of a result, and says so
_LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


class Authenticator(Protocol):
    """Decides whether a request may proceed (issue 14 plugs tokens/certificates in here).
    Returns None to let it in, or the reason to refuse it (401)."""

    async def __call__(self, scope: Scope) -> str | None: ...


async def open_access(scope: Scope) -> str | None:
    """No authentication yet: everyone who can reach the address may read."""
    return None


class _Authenticate:
    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refused = await self.authenticator(scope)
            if refused is not None:
                response = JSONResponse({"error": refused, "code": "unauthenticated"}, 401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _status(exc: SpearError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InvalidArgument):
        return 400
    if isinstance(exc, Unavailable):
        return 409
    if isinstance(exc, Unauthenticated):
        return 401
    if isinstance(exc, PermissionDenied):
        return 403
    return 500


async def _spear_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SpearError)
    return JSONResponse({"error": str(exc), "code": exc.code}, _status(exc))


def _state(request: Request) -> TaskState | None:
    raw = request.query_params.get("state")
    if not raw:
        return None
    try:
        return TaskState(raw.upper())
    except ValueError:
        raise InvalidArgument(f"unknown task state {raw!r}") from None


def _limit(request: Request, default: int = 100) -> int:
    raw = request.query_params.get("limit")
    try:
        limit = int(raw) if raw else default
    except ValueError:
        raise InvalidArgument(f"limit must be a number, got {raw!r}") from None
    return max(1, min(limit, _MAX_LIST))


def build_app(
    source: Source,
    exposition: Exposition,
    *,
    closing: anyio.Event,
    loopback: bool,
    authenticator: Authenticator = open_access,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The app for `source`. `loopback`: answer only Host headers naming loopback (a
    page on another site cannot reach it by DNS rebinding)."""

    def need(feature: str) -> None:
        if feature not in source.features:
            raise NotFound(f"the {source.role} has no {feature}: they live on the nodes")

    def seen(request: Request) -> Any:
        """The source as the caller may see it: a namespace's part for a bound token."""
        who = caller(request.scope)
        if who is not None and who.principal.namespace is not None:
            return source.in_namespace(who.principal.namespace)  # type: ignore[attr-defined]
        return source

    async def page(request: Request) -> Response:
        return FileResponse(str(_STATIC / "index.html"), headers={"cache-control": "no-cache"})

    async def metrics(request: Request) -> Response:
        body, content_type = await exposition.render(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    async def info(request: Request) -> Response:
        body = await seen(request).info()
        who = caller(request.scope)
        if who is not None:
            from spear.web._actions import may_run

            p = who.principal
            changes = "submit" in source.features
            body["caller"] = {
                "name": p.name,
                "role": p.role.name.lower(),
                "namespace": p.namespace,
                "may_run": may_run(p.role) if changes else [],
                "may_cancel": changes and bool(may_run(p.role)),
                "csrf": who.csrf,
            }
        return JSONResponse(body)

    async def nodes(request: Request) -> Response:
        return JSONResponse(await seen(request).nodes())

    async def tasks(request: Request) -> Response:
        found = await seen(request).tasks(_state(request), _limit(request))
        return JSONResponse([task_summary(t) for t in found])

    async def task(request: Request) -> Response:
        return JSONResponse((await seen(request).task(request.path_params["id"])).to_json())

    async def result(request: Request) -> Response:
        need("results")
        output: bytes = await seen(request).result(request.path_params["id"])
        shown = output[:_RESULT_SHOWN]
        return JSONResponse(
            {
                "size": len(output),
                "truncated": len(output) > len(shown),
                "text": shown.decode("utf-8", errors="replace"),
            }
        )

    async def objects(request: Request) -> Response:
        need("objects")
        prefix = request.query_params.get("prefix", "")
        found = await seen(request).objects(prefix)
        return JSONResponse(found[:_MAX_LIST])

    async def models(request: Request) -> Response:
        need("models")
        return JSONResponse(source.models())  # type: ignore[attr-defined]

    async def task_events(request: Request) -> Response:
        feed = task_list_feed(seen(request), _state(request), _limit(request))
        return _Raw(EventStream(feed, closing))

    async def one_task_events(request: Request) -> Response:
        return _Raw(EventStream(task_feed(seen(request), request.path_params["id"]), closing))

    routes: list[BaseRoute] = [
        Route("/", page),
        Route("/tasks/{id}", page),
        Route("/objects", page),
        Route("/metrics", metrics),
        Route("/api/info", info),
        Route("/api/nodes", nodes),
        Route("/api/tasks", tasks),
        Route("/api/tasks/{id}", task),
        Route("/api/tasks/{id}/result", result),
        Route("/api/objects", objects),
        Route("/api/models", models),
        Route("/api/events/tasks", task_events),
        Route("/api/events/tasks/{id}", one_task_events),
        Mount("/static", StaticFiles(directory=str(_STATIC)), name="static"),
        *extra_routes,
    ]
    middleware = [Middleware(_Authenticate, authenticator=authenticator)]
    if loopback:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=_LOOPBACK_HOSTS))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={SpearError: _spear_error},
    )


class _Raw(Response):
    """A Response that hands the connection to a plain ASGI callable (the event stream)."""

    def __init__(self, asgi: Any) -> None:
        super().__init__()
        self._asgi = asgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send)
