"""Submitting and cancelling tasks from the dashboard (a SPEARlet's; the SMS has none).

`POST /api/tasks` takes a small JSON form and submits it as the gRPC server's SubmitTask
would: in the caller's namespace (node/namespaced.py, with the namespace's task quota),
refused to a reader, and the process runtime (programs on the node's host, as the node's
user) only to an admin (`transport.auth.RUNTIME_ROLES`). `POST /api/tasks/ID/cancel`
cancels a task of the caller's namespace.

Cross-site requests: the browser sends the dashboard's cookie by itself, but it is
SameSite=Strict, a change must send `X-Spear-CSRF` (the token `/api/info` gives the page;
another site can neither read it nor set the header without a CORS grant, which this
server never gives) and, when the browser names an `Origin`, it must be this server's.
A client with an `Authorization` header (curl, scripts) needs no CSRF token: a browser never
adds that header by itself.
"""

from __future__ import annotations

import hmac
import shlex
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from starlette.responses import JSONResponse
from starlette.routing import Route

from spear.core.models import FunctionSpec, Runtime
from spear.errors import InvalidArgument, PermissionDenied, Unauthenticated
from spear.transport.auth import RUNTIME_ROLES, Role
from spear.web._auth import Caller, caller
from spear.web._events import task_summary

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from spear.node.api import NodeAPI
    from spear.node.quotas import TaskSlots

CSRF_HEADER = "x-spear-csrf"
_MAX_FORM_BYTES = 1024 * 1024
_MAX_TIMEOUT_S = 7 * 24 * 3600.0


def may_run(principal_role: Role) -> list[str]:
    """The runtimes a caller of `principal_role` may submit to (none for a reader)."""
    if principal_role < Role.SUBMITTER:
        return []
    need = RUNTIME_ROLES
    return [r.value for r in Runtime if principal_role >= need.get(r.value, Role.SUBMITTER)]


def _check_request(request: Request, who: Caller | None) -> Caller:
    if who is None:  # the app without its gate (never so in a daemon): no changes at all
        raise Unauthenticated("changing tasks needs a token")
    if who.by_cookie:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), who.csrf.encode()):
            raise PermissionDenied(f"a change from a browser must send the {CSRF_HEADER} header")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise PermissionDenied(f"a change from another site ({origin}) is refused")
    return who


async def _form(request: Request) -> dict[str, Any]:
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():  # read no more than the cap
        size += len(part)
        if size > _MAX_FORM_BYTES:
            raise InvalidArgument(f"the form is larger than {_MAX_FORM_BYTES} bytes")
        parts.append(part)
    body = b"".join(parts)
    try:
        form = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidArgument("the body must be a JSON object") from None
    if not isinstance(form, dict):
        raise InvalidArgument("the body must be a JSON object")
    return form


def _text(form: dict[str, Any], key: str, default: str = "") -> str:
    value = form.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} must be a string")
    return value.strip()


def spec_from_form(form: dict[str, Any], namespace: str) -> tuple[FunctionSpec, bytes | None]:
    """The task a dashboard form describes: `runtime` (wasm, process), `artifact` (the
    module's absolute path on the node, or the command), `args` (a list, or one string
    split as a shell would), `stdin`, `timeout_s`."""
    raw_runtime = _text(form, "runtime", Runtime.WASM.value) or Runtime.WASM.value
    try:
        runtime = Runtime(raw_runtime)
    except ValueError:
        names = ", ".join(r.value for r in Runtime)
        raise InvalidArgument(f"unknown runtime {raw_runtime!r}: choose {names}") from None
    artifact = _text(form, "artifact")
    if not artifact:
        raise InvalidArgument("name the agent to run (a module's path on the node, or a command)")
    if runtime is Runtime.WASM and not artifact.startswith("/"):
        raise InvalidArgument(f"{artifact!r}: give the module's absolute path on the node")
    args = form.get("args") or []
    if isinstance(args, str):
        try:
            args = shlex.split(args)
        except ValueError as exc:
            raise InvalidArgument(f"args: {exc}") from None
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise InvalidArgument("args must be a string or a list of strings")
    timeout = form.get("timeout_s")
    if timeout in (None, ""):
        timeout = None
    elif isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgument("timeout_s must be a number of seconds")
    elif not 0 < timeout <= _MAX_TIMEOUT_S:
        raise InvalidArgument(f"timeout_s must be above 0 and at most {_MAX_TIMEOUT_S:.0f}")
    stdin = _text(form, "stdin")
    spec = FunctionSpec(
        artifact,
        runtime=runtime,
        args=tuple(args),
        timeout_s=None if timeout is None else float(timeout),
        namespace=namespace,
    )
    return spec, (stdin.encode() if stdin else None)


def _namespace(who: Caller, asked: str) -> str:
    bound = who.principal.namespace
    if asked and bound is not None and asked != bound:
        raise PermissionDenied(
            f"{who.principal.name} may act only in namespace {bound!r}, not {asked!r}"
        )
    return asked or bound or "default"


def action_routes(api: NodeAPI, slots: TaskSlots | None) -> list[Route]:
    """The dashboard's two changes, on `api` (a SPEARlet's NodeAPI)."""
    from spear.core import namespaces
    from spear.node.namespaced import NamespacedNode

    def scoped(namespace: str) -> NodeAPI:
        return NamespacedNode(api, namespaces.check_name(namespace), slots)

    async def submit(request: Request) -> Response:
        who = _check_request(request, caller(request.scope))
        allowed = may_run(who.principal.role)
        form = await _form(request)
        namespace = _namespace(who, _text(form, "namespace"))
        spec, stdin = spec_from_form(form, namespace)
        if spec.runtime.value not in allowed:
            role = who.principal.role.name.lower()
            raise PermissionDenied(
                f"{who.principal.name} ({role}) may not run {spec.runtime.value} tasks"
                + (f": it may run {', '.join(allowed)}" if allowed else ": it may only read")
            )
        handle = await scoped(namespace).submit(spec, stdin=stdin)
        return JSONResponse(task_summary(handle.task), 201)

    async def cancel(request: Request) -> Response:
        who = _check_request(request, caller(request.scope))
        if who.principal.role < Role.SUBMITTER:
            raise PermissionDenied(f"{who.principal.name} (reader) may not cancel tasks")
        task_id = request.path_params["id"]
        if who.principal.namespace is not None:
            node = scoped(who.principal.namespace)
        else:
            node = api  # an admin cancels any task of the node
        task = await node.cancel(task_id, f"cancelled from the dashboard by {who.principal.name}")
        return JSONResponse(task_summary(task))

    return [
        Route("/api/tasks", submit, methods=["POST"]),
        Route("/api/tasks/{id}/cancel", cancel, methods=["POST"]),
    ]
