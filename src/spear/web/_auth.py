"""The HTTP server accepts the same tokens as gRPC (docs/security.md, docs/dashboard.md).

A request authenticates with `Authorization: Bearer spear_...` (Prometheus's
`authorization` setting, curl), or with the cookie a browser got by opening the link
`spear dashboard` prints (`/?token=...`: the token is checked, set as an HttpOnly,
SameSite=Strict cookie, and the browser sent on to the page without it in the address).

`/metrics` takes any valid token. On a SPEARlet, a token bound to a namespace (a reader's
or a submitter's) sees the dashboard of its namespace only (web/_app.py scopes the node
to it, as the gRPC server does); the SMS shows the whole cluster, so there every other
path needs a token bound to no namespace (an admin's, such as the owner token).

The gate hands the app who called (`caller(scope)`): the principal, whether its
credential came in a cookie (the browser sends cookies by itself, so a change made that
way must also carry the CSRF token, web/_actions.py) and that token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from spear.transport.auth import bearer
from spear.web._routes import RESERVED

if TYPE_CHECKING:
    from pathlib import Path

    from starlette.types import ASGIApp, Receive, Scope, Send

    from spear.transport.auth import Principal, TokenStore

OPEN_TO_ANY_TOKEN = frozenset({"/metrics"})
_LOGIN_HINT = "open the link `spear dashboard` prints, or send Authorization: Bearer TOKEN"


def node_page(path: str) -> bool:
    """Whether `path` is one of the node's own pages (the dashboard, its API, /metrics),
    which this gate guards. Other paths are HTTP triggers' routes, and `/api/routes`
    their table: each checks its callers' tokens itself (web/_triggers.py, _route_api.py:
    a route may be public, and a namespace's submitter may call or add routes)."""
    if path == "/api/routes" or path.startswith("/api/routes/"):
        return False
    return path == "/" or any(path == own or path.startswith(own + "/") for own in RESERVED)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request the gate let in."""

    principal: Principal
    by_cookie: bool  # the credential came in the cookie, not an Authorization header
    csrf: str  # what a change must send in `X-Spear-CSRF` (derived from the credential)


_CALLER = "spear_caller"


def caller(scope: Scope) -> Caller | None:
    """The caller the gate let in (None: the app runs without the gate, as in unit use)."""
    state: dict[str, Any] = scope.get("state") or {}
    found = state.get(_CALLER)
    return found if isinstance(found, Caller) else None


def cookie_name(port: int | None) -> str:
    """One cookie per port: browsers share cookies between the ports of one host."""
    return f"spear_token_{port}" if port else "spear_token"


class TokenGate:
    """ASGI middleware: refuse a request without a valid token (401) or whose token may
    not see what it asks for (403), before the app sees it."""

    def __init__(self, app: ASGIApp, tokens: TokenStore, *, scoped_views: bool = False) -> None:
        """`scoped_views`: a token bound to a namespace may see that namespace's view (a
        SPEARlet); else the dashboard needs an admin's token (the SMS)."""
        self.app = app
        self.tokens = tokens
        self.scoped_views = scoped_views
        self._csrf_key = secrets.token_bytes(32)  # this process's: tokens die with it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not node_page(scope["path"]):
            await self.app(scope, receive, send)  # (a route checks its callers itself)
            return
        response = self._check(scope)
        if response is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> Response | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        port = (scope.get("server") or (None, None))[1]
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        link_token = next((v for k, v in query if k == "token"), None)
        if link_token is not None and scope["type"] == "http":
            return self._login(scope, link_token, query, port)
        header_token = bearer(headers)
        token = header_token or _cookie(headers, cookie_name(port))
        principal = self.tokens.verify(token) if token else None
        refused = _refusal(scope, principal, token is not None, self.scoped_views)
        if refused is None and principal is not None and token is not None:
            csrf = hmac.new(self._csrf_key, token.encode(), hashlib.sha256).hexdigest()[:32]
            state = scope.setdefault("state", {})
            state[_CALLER] = Caller(principal, header_token is None, csrf)
        return refused

    def _login(
        self, scope: Scope, token: str, query: list[tuple[str, str]], port: int | None
    ) -> Response:
        """`?token=`: checked, kept in a cookie, and taken out of the address."""
        principal = self.tokens.verify(token)
        refused = _refusal(scope, principal, True, self.scoped_views)
        if refused is not None:
            return refused
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), 303)
        response.set_cookie(cookie_name(port), token, httponly=True, samesite="strict", path="/")
        return response


def _cookie(headers: dict[str, str], name: str) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed cookie header is no credential
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def _refusal(
    scope: Scope, principal: Principal | None, had_token: bool, scoped_views: bool
) -> Response | None:
    if principal is None:
        why = (
            "the token was not accepted (unknown or revoked)"
            if had_token
            else ("this dashboard requires a token: " + _LOGIN_HINT)
        )
        return _error(scope, why, "unauthenticated", 401)
    bound = principal.namespace is not None
    if scope["path"] not in OPEN_TO_ANY_TOKEN and bound and not scoped_views:
        why = (
            f"{principal.name} acts only in namespace {principal.namespace!r}; this dashboard"
            " shows every namespace and needs a token bound to none (an admin's)"
        )
        return _error(scope, why, "denied", 403)
    return None


def _error(scope: Scope, message: str, code: str, status: int) -> Response:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    if scope["path"] == "/metrics":
        return PlainTextResponse(message + "\n", status, headers=headers)
    return JSONResponse({"error": message, "code": code}, status, headers=headers)


def guarded(app: ASGIApp, data_dir: Path, *, scoped_views: bool = False) -> ASGIApp:
    """`app` behind the tokens of `data_dir` (the owner's made if missing)."""
    from spear.transport.auth import TokenStore

    tokens = TokenStore(data_dir)
    tokens.owner_token()
    return TokenGate(app, tokens, scoped_views=scoped_views)
