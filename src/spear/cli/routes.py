"""`spear route add|ls|rm`: the HTTP triggers of the node serving this data dir.

    spear route add /ask build/ask.wasm --method POST --public
    spear route add /chat examples/http/chat_agent.py --websocket --public
    spear route ls
    spear route rm /ask
    spear route add /hi build/hi.wasm --mode request --public   # no task per request
    spear route requests [REQUEST_ID] [--failed]

They call the node's route API (`/api/routes`, docs/triggers.md) at the HTTP address the
daemon wrote (DATA/spearlet.http, or --url), with the token of the settings (SPEAR_TOKEN)
or the data dir's owner token. The module is a path on the node's machine: a relative
path is made absolute here.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from spear.cli._common import ConfigOpt, DataDirOpt, JsonOpt, emit_json, load_settings, printable
from spear.cli.spec import (
    ArgsArg,
    CpuTimeOpt,
    DirOpt,
    EnvOpt,
    FuelOpt,
    InvokeOpt,
    MemoryOpt,
    OpenFilesOpt,
    RuntimeOpt,
    WarmOpt,
    WorkdirOpt,
    build_spec,
)
from spear.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable

route_app = typer.Typer(
    help="HTTP triggers and WebSocket streams: which URL path runs which agent.",
    no_args_is_help=True,
)
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="The node's HTTP address (default: from DATA/spearlet.http)."),
]
PathArg = Annotated[
    str, typer.Argument(metavar="PATH", help="The URL path, e.g. /ask or /api2/...")
]


def _target(url: str | None, data_dir: Any, config: Any) -> tuple[str, str | None]:
    from spear.transport.auth import read_owner_token
    from spear.web import read_http_address

    settings = load_settings(data_dir, config)
    found = url or read_http_address(settings.data_dir, "spearlet")
    if found is None:
        raise Unavailable(
            f"no node serves HTTP on {settings.data_dir}: start one (spear serve), or give --url"
        )
    return found.rstrip("/"), settings.token or read_owner_token(settings.data_dir)


def _call(method: str, url: str, token: str | None, api: str = "/api/routes", **kw: Any) -> Any:
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url + api, headers=headers, timeout=30, **kw)
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot reach the node at {url}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text.strip()[:200]}
    if response.status_code >= 400:
        message = body.get("error", "") if isinstance(body, dict) else str(body)
        error = {401: Unauthenticated, 403: PermissionDenied, 404: NotFound, 409: Unavailable}
        raise error.get(response.status_code, InvalidArgument)(message)
    return body


def _line(route: dict[str, Any]) -> str:
    spec = route["spec"]
    what = " ".join([spec["artifact"], *spec.get("args", ())])
    access = "public" if route["public"] else "token"
    methods = "WS" if route["kind"] == "websocket" else ",".join(route["methods"])
    mode = route.get("mode", "task")  # (a node before request mode sends none)
    return printable(
        f"{route['path']:<20} {methods:<10} {mode:<7} {access:<7} {route['source']:<7} {what}"
    )


@route_app.command(
    "add",
    help="Serve PATH with an agent: each request runs MODULE|CMD as a task (CGI-style), "
    "or with --websocket each connection talks to it over its caller stream. Arguments "
    "for the task that start with - go after --.",
)
def add(
    path: PathArg,
    artifact: Annotated[str, typer.Argument(metavar="MODULE|CMD", help="Module or command.")],
    args: ArgsArg = None,
    methods: Annotated[
        list[str] | None,
        typer.Option("--method", "-X", help="An HTTP method it takes (repeatable; GET, POST)."),
    ] = None,
    websocket: Annotated[
        bool, typer.Option("--websocket", help="A WebSocket route (the task's caller stream).")
    ] = False,
    public: Annotated[
        bool, typer.Option("--public", help="Anyone may call it (default: a submitter token).")
    ] = False,
    max_body: Annotated[
        str, typer.Option("--max-body", help="The largest request body, e.g. 1M.")
    ] = "1M",
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds a request's task may take.")
    ] = 30.0,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Requests served at once (then 503).")
    ] = 16,
    replace: Annotated[bool, typer.Option("--replace", help="Replace PATH's route.")] = False,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="task: each request is a task (recorded, logged); request: a WASM agent "
            "runs in the node's process, only the last requests kept in memory.",
        ),
    ] = "task",
    labels: Annotated[
        list[str] | None,
        typer.Option("--label", help="NAME=VALUE a node must carry to run it (repeatable)."),
    ] = None,
    runtime: RuntimeOpt = None,
    env: EnvOpt = None,
    dirs: DirOpt = None,
    memory: MemoryOpt = None,
    fuel: FuelOpt = None,
    invoke: InvokeOpt = "_start",
    warm: WarmOpt = False,
    cpu_time: CpuTimeOpt = None,
    open_files: OpenFilesOpt = None,
    workdir: WorkdirOpt = None,
    url: UrlOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from spear.config import parse_size
    from spear.web._routes import Route

    if os.path.exists(artifact):
        artifact = os.path.abspath(artifact)
    spec = build_spec(
        artifact, args, runtime=runtime, env=env, dirs=dirs, timeout=None, memory=memory,
        fuel=fuel, invoke=invoke, warm=warm, cpu_time=cpu_time, open_files=open_files,
        workdir=workdir, labels=labels,
    )  # fmt: skip
    route = Route(
        path=path,
        spec=spec,
        methods=tuple(m.upper() for m in methods or ("GET", "POST")),
        kind="websocket" if websocket else "http",
        public=public,
        max_body_bytes=parse_size(max_body),
        timeout_s=timeout,
        concurrency=concurrency,
        mode=mode,
    )  # checked here: a bad route is one line before anything is sent
    base, token = _target(url, data_dir, config)
    added = _call("POST", base, token, json=route.to_json(), params={"replace": int(replace)})
    if as_json:
        emit_json(added)
    else:
        sys.stdout.write(f"{base}{added['path']}\n")


@route_app.command("ls", help="List the node's routes.")
def ls(
    url: UrlOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    base, token = _target(url, data_dir, config)
    routes = _call("GET", base, token)
    if as_json:
        emit_json(routes)
        return
    for route in routes:
        sys.stdout.write(_line(route) + "\n")


@route_app.command("rm", help="Stop serving PATH.")
def rm(
    path: PathArg,
    url: UrlOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    base, token = _target(url, data_dir, config)
    removed = _call("DELETE", base, token, params={"path": path})
    if as_json:
        emit_json(removed)
    else:
        sys.stdout.write(f"removed {printable(removed['path'])}\n")


@route_app.command(
    "requests",
    help="Request-mode routes' last requests (or failures), or one by its x-request-id: "
    "status, time, exit code, reason and the end of its stderr.",
)
def requests(
    request_id: Annotated[
        str | None, typer.Argument(metavar="[REQUEST_ID]", help="One request's id.")
    ] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only failed requests.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 20,
    url: UrlOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    base, token = _target(url, data_dir, config)
    api = "/api/routes/requests"
    if request_id is not None:
        record = _call("GET", base, token, api, params={"id": request_id})
        if as_json:
            emit_json(record)
            return
        for key, value in record.items():
            if key != "stderr":
                sys.stdout.write(printable(f"{key:<11} {value}") + "\n")
        if record["stderr"]:
            sys.stdout.write("stderr:\n")
            for line in record["stderr"].splitlines():
                sys.stdout.write("  " + printable(line) + "\n")
        return
    params = {"failed": int(failed), "limit": max(0, limit)}
    records = _call("GET", base, token, api, params=params)
    if as_json:
        emit_json(records)
        return
    for r in records:
        what = r["reason"] or ""
        line = f"{r['request_id']}  {r['status']:>3}  {r['seconds'] * 1000:8.2f} ms  "
        sys.stdout.write(printable(line + f"{r['method']} {r['path']}  {what}") + "\n")
