"""HTTP triggers' route table: which URL path (and methods) runs which function spec.

A route is either `http` (each request runs the agent once, CGI-style: docs/triggers.md)
or `websocket` (each connection starts the agent with its caller stream). Routes come from
two places: the settings' `routes` table (read at start, fixed while the node runs) and
the route API (`spear route add`), kept in the node's KV under `web/routes/`, so they
outlive a restart. A path ending in `/...` matches itself and everything below it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from spear.config import parse_size
from spear.core.models import FunctionSpec
from spear.errors import InvalidArgument, NotFound, Unavailable

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from spear.store.kv import KV

KV_PREFIX = "web/routes/"
KINDS = ("http", "websocket")
# How an http route runs a request: as a task (recorded, logged, its result stored), or,
# for a WASM agent, right in the node's process with only a bounded in-memory record
# (docs/triggers.md#request-mode; web/_direct.py).
MODES = ("task", "request")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
WILDCARD = "/..."
# Paths the node's own pages and API live under: a route may not shadow them.
RESERVED = ("/api", "/static", "/metrics", "/tasks", "/objects")
_PATH = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+(/\.\.\.)?$|^/\.\.\.$")


@dataclass(frozen=True, slots=True)
class Route:
    """One trigger. `public`: anyone may call it; otherwise a submitter token is needed."""

    path: str
    spec: FunctionSpec
    methods: tuple[str, ...] = ("GET", "POST")
    kind: str = "http"
    public: bool = False
    max_body_bytes: int = 1024**2
    timeout_s: float = 30.0
    concurrency: int = 16
    source: str = "api"  # "api" (the KV) or "config" (the settings file)
    mode: str = "task"

    def __post_init__(self) -> None:
        check_path(self.path)
        if self.kind not in KINDS:
            raise InvalidArgument(f"a route's kind is one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.mode not in MODES:
            raise InvalidArgument(f"a route's mode is one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mode == "request" and (self.kind != "http" or self.spec.runtime != "wasm"):
            raise InvalidArgument("request mode serves http routes of WASM agents only")
        for method in self.methods:
            if method not in METHODS:
                raise InvalidArgument(f"unknown HTTP method {method!r} ({', '.join(METHODS)})")
        if not self.methods:
            raise InvalidArgument("a route needs at least one method")
        if self.max_body_bytes < 0:
            raise InvalidArgument("a route's max body size must not be negative")
        if not self.timeout_s > 0:
            raise InvalidArgument("a route's timeout must be a positive number of seconds")
        if not 1 <= self.concurrency <= 10_000:
            raise InvalidArgument("a route's concurrency is between 1 and 10000")

    @property
    def prefix(self) -> bool:
        return self.path.endswith(WILDCARD)

    @property
    def base(self) -> str:
        """The path without its `/...` ("" for the catch-all `/...`)."""
        return self.path[: -len(WILDCARD)] if self.prefix else self.path

    def matches(self, path: str) -> str | None:
        """The rest of `path` below the route (PATH_INFO), or None if it does not match."""
        if not self.prefix:
            return "" if path == self.path else None
        base = self.base
        if path == base or path.startswith(base + "/"):
            return path[len(base) :]
        return None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spec"] = self.spec.to_json()
        data["methods"] = list(self.methods)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "api") -> Route:
        if not isinstance(data, dict):
            raise InvalidArgument("a route is a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise InvalidArgument(f"unknown route field {sorted(unknown)[0]!r}")
        try:
            spec = data["spec"]
            if not isinstance(spec, dict):
                raise InvalidArgument("a route's spec is a JSON object")
            methods = data.get("methods", ("GET", "POST"))
            if isinstance(methods, str):
                methods = [methods]
            return cls(
                path=str(data["path"]),
                spec=FunctionSpec.from_json(spec),
                methods=tuple(str(m).upper() for m in methods),
                kind=str(data.get("kind", "http")),
                public=_boolean(data.get("public", False)),
                max_body_bytes=parse_size(data.get("max_body_bytes", 1024**2)),
                timeout_s=float(data.get("timeout_s", 30.0)),
                concurrency=int(data.get("concurrency", 16)),
                source=source,
                mode=str(data.get("mode", "task")),
            )
        except KeyError as exc:
            raise InvalidArgument(f"a route needs {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed route: {exc}") from None


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidArgument(f"public must be true or false, not {value!r}")


def check_path(path: str) -> None:
    """Raise InvalidArgument, one line, unless `path` is a route path we serve."""
    if not isinstance(path, str) or not _PATH.fullmatch(path) or "//" in path:
        raise InvalidArgument(
            f"a route path is /-separated URL segments, optionally ending in /..., not {path!r}"
        )
    if any(seg in (".", "..") for seg in path.split("/")[1:-1]):
        raise InvalidArgument(f"a route path has no . or .. segments: {path!r}")
    base = path[: -len(WILDCARD)] if path.endswith(WILDCARD) else path
    for reserved in RESERVED:
        if base == reserved or base.startswith(reserved + "/") or base == "":
            raise InvalidArgument(f"{path} would shadow the node's own {reserved or '/'} pages")


def routes_from_settings(table: Mapping[str, Any]) -> list[Route]:
    """The settings' `routes` table: `[routes."/ask"]` with the route's fields (the spec's
    as `spec = {artifact = ...}`, or the spec's fields inline)."""
    out = []
    spec_fields = {f.name for f in dataclasses.fields(FunctionSpec)}
    for path, raw in table.items():
        if not isinstance(raw, dict):
            raise InvalidArgument(f"setting routes.{path!r} must be a table")
        data = {k: v for k, v in raw.items() if k not in spec_fields}
        if "spec" not in data:
            data["spec"] = {k: v for k, v in raw.items() if k in spec_fields}
        data["path"] = path
        try:
            out.append(Route.from_json(data, source="config"))
        except InvalidArgument as exc:
            raise InvalidArgument(f"setting routes.{path!r}: {exc}") from None
    return out


class RouteTable:
    """The node's routes, kept in memory for each request and written through to the KV."""

    def __init__(self, kv: KV, configured: Iterable[Route] = ()) -> None:
        self._kv = kv
        self._configured = {r.path: r for r in configured}
        self._added: dict[str, Route] = {}
        self._ordered: list[Route] = []
        self._order()

    async def load(self) -> None:
        """Read the routes added through the API (at start)."""
        for entry in await self._kv.scan(KV_PREFIX):
            try:
                route = Route.from_json(orjson.loads(entry.value))
            except (InvalidArgument, orjson.JSONDecodeError):
                continue  # written by another version: not ours to serve
            if route.path not in self._configured:
                self._added[route.path] = route
        self._order()

    def _order(self) -> None:
        # Exact paths first, then prefixes, longest first: the most specific wins.
        every = [*self._configured.values(), *self._added.values()]
        self._ordered = sorted(every, key=lambda r: (r.prefix, -len(r.base), r.path))

    def routes(self) -> list[Route]:
        return sorted(self._ordered, key=lambda r: r.path)

    def match(self, path: str) -> tuple[Route, str] | None:
        """The route serving `path` and the rest of the path below it."""
        for route in self._ordered:
            rest = route.matches(path)
            if rest is not None:
                return route, rest
        return None

    async def add(self, route: Route, *, replace: bool = False) -> Route:
        if route.path in self._configured:
            raise Unavailable(f"{route.path} is set in the config file: change it there")
        if route.path in self._added and not replace:
            raise Unavailable(f"a route for {route.path} exists (route rm it, or --replace)")
        route = dataclasses.replace(route, source="api")
        await self._kv.put(KV_PREFIX + route.path, orjson.dumps(route.to_json()))
        self._added[route.path] = route
        self._order()
        return route

    async def remove(self, path: str) -> Route:
        if path in self._configured:
            raise Unavailable(f"{path} is set in the config file: remove it there")
        route = self._added.pop(path, None)
        if route is None:
            raise NotFound(f"no route for {path}")
        await self._kv.delete(KV_PREFIX + path)
        self._order()
        return route
