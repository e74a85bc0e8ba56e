"""The route API (`/api/routes`) and the routes that serve the triggers.

Changing routes needs a token: a submitter's for WASM agents, an admin's for process
agents (programs on the node's host), as for submitting tasks over gRPC; listing them
needs a reader's. The CLI (`spear route`) calls this API with the data dir's owner token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from spear.errors import InvalidArgument, NotFound, Unauthenticated
from spear.transport.auth import RUNTIME_ROLES, Role, bearer, require_role
from spear.web._routes import Route as TriggerRoute

if TYPE_CHECKING:
    from starlette.requests import Request

    from spear.transport.auth import Principal, TokenStore
    from spear.web._routes import RouteTable
    from spear.web._triggers import Triggers


def _principal(request: Request, tokens: TokenStore | None, need: Role) -> Principal:
    token = bearer(request.headers)
    if token is None:
        raise Unauthenticated("the route API needs a token (Authorization: Bearer ...)")
    principal = tokens.verify(token) if tokens is not None else None
    if principal is None:
        raise Unauthenticated("the token was not accepted (unknown or revoked)")
    require_role(principal, need, "do this")
    return principal


def route_api(table: RouteTable, triggers: Triggers, tokens: TokenStore | None) -> list[BaseRoute]:
    """The API's routes, then the catch-all routes that hand every other path to the
    triggers (last: the node's own pages and API come first)."""

    async def list_routes(request: Request) -> Response:
        _principal(request, tokens, Role.READER)
        return JSONResponse([r.to_json() for r in table.routes()])

    async def add_route(request: Request) -> Response:
        _principal(request, tokens, Role.SUBMITTER)
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"the route is not JSON: {exc}") from None
        replace = request.query_params.get("replace") in ("1", "true")
        route = TriggerRoute.from_json(data)
        need = RUNTIME_ROLES.get(route.spec.runtime.value, Role.SUBMITTER)
        _principal(request, tokens, need)
        added = await table.add(route, replace=replace)
        return JSONResponse(added.to_json(), 201)

    async def remove_route(request: Request) -> Response:
        _principal(request, tokens, Role.SUBMITTER)
        path = request.query_params.get("path")
        if not path:
            raise InvalidArgument("say which route: ?path=/ask")
        removed = await table.remove(path)
        return JSONResponse(removed.to_json())

    async def requests(request: Request) -> Response:
        """Request mode's record: the last requests (`?failed=1`: failures), or one by id."""
        _principal(request, tokens, Role.READER)
        log = triggers.direct.log
        wanted = request.query_params.get("id")
        if wanted:
            record = log.find(wanted)
            if record is None:
                raise NotFound(f"no request {wanted} in this node's last {log.recent.maxlen}"
                               " requests or failures (request mode keeps no more)")  # fmt: skip
            return JSONResponse(record.to_json())
        failed = request.query_params.get("failed") in ("1", "true")
        raw = request.query_params.get("limit", "50")
        if not raw.isdigit():
            raise InvalidArgument(f"limit is a number, not {raw!r}")
        return JSONResponse([r.to_json() for r in log.latest(int(raw), failed)])

    return [
        Route("/api/routes/requests", requests, methods=["GET"]),
        Route("/api/routes", list_routes, methods=["GET"]),
        Route("/api/routes", add_route, methods=["POST"]),
        Route("/api/routes", remove_route, methods=["DELETE"]),
        Route("/{path:path}", triggers),
        WebSocketRoute("/{path:path}", triggers),
    ]
