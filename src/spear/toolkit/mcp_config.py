"""What MCP servers a node connects to, and which of their tools each task may call.

The file named by the `mcp_config` setting (TOML, docs/toolkit.md):

    allow = ["*"]                       # tools every task may call: "server/tool" globs
    call_timeout_s = 30                 # a tool call's limit unless the call asks less

    [servers.time]                      # a stdio server: a command the node starts
    command = ["mcp-server-time"]
    env = { TZ = "UTC" }                # added to a small inherited environment

    [servers.search]                    # a streamable-HTTP server
    url = "http://127.0.0.1:8000/mcp"

    [[rules]]                           # first match wins, else `allow`
    label = "team=research"             # or artifact = "*/agents/*.py", or
    allow = ["time/*"]                  # namespace = "team-a" (every key given must match)

A task can narrow what it may call (never widen it) with its label `mcp.allow`, a
comma-separated list of the same globs.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spear.core.cluster import MCP_ALLOW_LABEL
from spear.core.namespaces import check_name as check_namespace
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from spear.core.models import Task

TASK_ALLOW_LABEL = MCP_ALLOW_LABEL  # (a label of the task, never a node selector)
DEFAULT_CALL_TIMEOUT_S = 30.0
DEFAULT_CONNECT_TIMEOUT_S = 20.0
DEFAULT_MAX_RESTARTS = 3
_RULE_KEYS = {"allow", "artifact", "label", "namespace"}


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    """One server: a command to start (stdio) or a URL (streamable HTTP)."""

    name: str
    command: tuple[str, ...] = ()
    url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    max_restarts: int = DEFAULT_MAX_RESTARTS  # in a row, before the server is reported down

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise InvalidArgument(f"mcp config: servers.{self.name} needs a command or a url")
        if "/" in self.name or not self.name:
            raise InvalidArgument(f"mcp config: server name {self.name!r} may not contain '/'")


@dataclass(frozen=True, slots=True)
class ToolRule:
    allow: tuple[str, ...]
    artifact: str | None = None
    label: tuple[str, str] | None = None
    namespace: str | None = None

    def matches(self, task: Task) -> bool:
        if self.namespace is not None and task.spec.namespace != self.namespace:
            return False
        if self.artifact is not None and not fnmatch.fnmatchcase(task.spec.artifact, self.artifact):
            return False
        return self.label is None or self.label in task.spec.labels


@dataclass(frozen=True, slots=True)
class McpConfig:
    servers: Mapping[str, McpServerConfig] = field(default_factory=dict)
    allow: tuple[str, ...] = ("*",)
    rules: tuple[ToolRule, ...] = ()
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S

    @classmethod
    def load(cls, path: Path) -> McpConfig:
        from spear.config import read_toml

        return cls.from_mapping(read_toml(path, "mcp config", required=True))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> McpConfig:
        unknown = set(data) - {"servers", "allow", "rules", "call_timeout_s"}
        if unknown:
            raise InvalidArgument(f"mcp config: unknown key(s) {', '.join(sorted(unknown))}")
        servers = {
            name: _server(name, table) for name, table in (data.get("servers") or {}).items()
        }
        rules = []
        for i, rule in enumerate(data.get("rules") or []):
            where = f"rules[{i}]"
            if not isinstance(rule, dict) or set(rule) - _RULE_KEYS:
                raise InvalidArgument(
                    f"mcp config: {where} takes allow, artifact, label and namespace"
                )
            label = None
            if rule.get("label") is not None:
                key, sep, value = str(rule["label"]).partition("=")
                if not sep:
                    raise InvalidArgument(f"mcp config: {where}.label must be KEY=VALUE")
                label = (key, value)
            namespace = rule.get("namespace")
            if namespace is not None:
                try:
                    check_namespace(namespace)
                except InvalidArgument as exc:
                    raise InvalidArgument(f"mcp config: {where}.namespace: {exc}") from None
            rules.append(
                ToolRule(
                    allow=_patterns(rule.get("allow"), where),
                    artifact=rule.get("artifact"),
                    label=label,
                    namespace=namespace,
                )
            )
        timeout = data.get("call_timeout_s", DEFAULT_CALL_TIMEOUT_S)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise InvalidArgument("mcp config: call_timeout_s must be a positive number")
        return cls(
            servers=servers,
            allow=_patterns(data.get("allow", ["*"]), "allow"),
            rules=tuple(rules),
            call_timeout_s=float(timeout),
        )

    def allowed(self, task: Task | None) -> tuple[str, ...]:
        """The node's globs for `task`: the first rule it matches, else `allow`."""
        if task is not None:
            for rule in self.rules:
                if rule.matches(task):
                    return rule.allow
        return self.allow

    def may_call(self, tool: str, task: Task | None) -> bool:
        """Whether `task` may call `tool` ("server/name"): the node's globs, narrowed by
        the task's own `mcp.allow` label when it has one."""
        if not any(fnmatch.fnmatchcase(tool, p) for p in self.allowed(task)):
            return False
        if task is None:
            return True
        own = dict(task.spec.labels).get(TASK_ALLOW_LABEL)
        if own is None:
            return True
        return any(fnmatch.fnmatchcase(tool, p.strip()) for p in own.split(",") if p.strip())


def _patterns(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise InvalidArgument(f"mcp config: {where} must be a list of strings")
    return tuple(raw)


def _server(name: str, table: Any) -> McpServerConfig:
    where = f"servers.{name}"
    if not isinstance(table, dict):
        raise InvalidArgument(f"mcp config: {where} must be a table")
    unknown = set(table) - {"command", "url", "env", "cwd", "connect_timeout_s", "max_restarts"}
    if unknown:
        raise InvalidArgument(f"mcp config: {where}: unknown key(s) {', '.join(sorted(unknown))}")
    command = table.get("command", [])
    if isinstance(command, str):
        command = [command]
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise InvalidArgument(f"mcp config: {where}.command must be a list of strings")
    env = table.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise InvalidArgument(f"mcp config: {where}.env must be a table of strings")
    url = table.get("url")
    if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        raise InvalidArgument(f"mcp config: {where}.url must be an http(s) URL")
    timeout = table.get("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S)
    restarts = table.get("max_restarts", DEFAULT_MAX_RESTARTS)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidArgument(f"mcp config: {where}.connect_timeout_s must be positive")
    if not isinstance(restarts, int) or restarts < 0:
        raise InvalidArgument(f"mcp config: {where}.max_restarts must be >= 0")
    return McpServerConfig(
        name=name,
        command=tuple(command),
        url=url,
        env=dict(env),
        cwd=table.get("cwd"),
        connect_timeout_s=float(timeout),
        max_restarts=restarts,
    )
