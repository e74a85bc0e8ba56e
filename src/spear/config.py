"""One settings object per process, built once: files < environment (`SPEAR_*`) < flags.

Only `Settings.load` reads the environment or a file; everything else takes a `Settings`.

The files, later ones winning: `$XDG_CONFIG_HOME/spear/config.toml` (default
`~/.config/spear/config.toml`: the user's), then `DATA/config.toml` (the data dir's own);
`--config FILE` or `SPEAR_CONFIG` names one file read instead of both. A key that is no
setting, or a value of the wrong kind, is refused with the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Mapping

_SIZE_SUFFIXES = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}


def parse_size(text: str | int) -> int:
    """'64M', '1GiB', '4096' -> bytes."""
    if isinstance(text, bool) or not isinstance(text, int | str):  # (a TOML float, array)
        raise InvalidArgument(f"not a size: {text!r} (try 64M or 1GiB)")
    if isinstance(text, int):
        if text < 0:
            raise InvalidArgument(f"not a size: {text!r} (a size is not negative)")
        return text
    s = text.strip().lower()
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num) :]
    try:
        value = float(num)
    except ValueError:
        raise InvalidArgument(f"not a size: {text!r} (try 64M or 1GiB)") from None
    if unit not in _SIZE_SUFFIXES or value < 0:
        raise InvalidArgument(f"not a size: {text!r} (try 64M or 1GiB)")
    return int(value * _SIZE_SUFFIXES[unit])


def default_data_dir(env: Mapping[str, str]) -> Path:
    if env.get("SPEAR_HOME"):
        return Path(env["SPEAR_HOME"])
    xdg = env.get("XDG_DATA_HOME") or str(_home(env) / ".local/share")
    return Path(xdg) / "spear"


def user_config_path(env: Mapping[str, str]) -> Path:
    """The user's settings file: `$XDG_CONFIG_HOME/spear/config.toml`."""
    xdg = env.get("XDG_CONFIG_HOME") or str(_home(env) / ".config")
    return Path(xdg) / "spear" / "config.toml"


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME", "~")).expanduser()


LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
# Keys a settings file may hold besides the fields, read by the parts that need them
# (core/cluster.py ClusterTimings, the node's labels): name -> the kind of value.
EXTRA_KEYS: dict[str, type] = {
    "heartbeat_s": float,
    "unhealthy_after_s": float,
    "dead_after_s": float,
    "labels": dict,
    # HTTP triggers (docs/triggers.md): [routes."/ask"] tables, served by `spear serve`.
    "routes": dict,
    # The SMS's leadership lease on etcd (core/sms_leader.py): a takeover within about it.
    "sms_lease_ttl_s": float,
    # How long a member may serve cached object versions unheard (core/object_leases.py).
    "object_lease_s": float,
    # Placement in a cluster (core/scheduler.py, docs/distributed.md).
    "view_refresh_s": float,
    "max_queued_tasks": float,
}
PEER_TRANSPORTS = ("grpc.aio", "node-port")
# The old name of "node-port", from when the node port was grpclib's: still read as it.
_PEER_TRANSPORT_ALIASES = {"grpclib": "node-port"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(raw: object) -> bool:
    """True/false from a TOML boolean, or 1/0, true/false, yes/no, on/off (any case)."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected a boolean (true/false, 1/0, yes/no, on/off)")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a node needs to know about where it lives and what it may use."""

    data_dir: Path
    node_name: str = "local"
    cpu_millis: int = 0  # 0: the machine's cores x 1000
    memory_bytes: int = 0  # 0: the machine's memory
    max_concurrent_tasks: int = 64
    kv_sync: bool = False
    busy_timeout_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"
    task_log_max_bytes: int = 64 * 1024 * 1024
    object_max_bytes: int = 1024**3
    object_store_capacity_bytes: int = 16 * 1024**3
    # Room kept in files of replaced values to write the next ones over (0: none;
    # store/spare_files.py, docs/objects.md "Spare files").
    object_spare_bytes: int = 1024**3
    object_gc_grace_s: float = 86400.0  # an unreferenced, unpinned object lives this long idle
    object_gc_interval_s: float = 60.0  # how often a node sweeps (0: never; `spear obj gc`)
    stream_queue_messages: int = 64  # per direction, per task: then -EAGAIN / backpressure
    stream_message_max_bytes: int = 1024**2
    process_kill_grace_s: float = 2.0  # SIGTERM to a process task's group, then SIGKILL
    process_warm_spares: int = 2  # warm Python children forked ahead of the tasks they run
    process_warm_idle_s: float = 300.0  # a fork server no warm task used this long stops
    runner_idle_s: float = 300.0  # the warm runner (cli/runner.py) stops this long idle; 0: none
    models_config: str | None = None  # a TOML routing file for AI models (docs/models.md)
    listen: str = "127.0.0.1:7070"
    # The dashboard and /metrics (docs/dashboard.md): loopback, a free port, unless set;
    # "off" serves no HTTP.
    http_listen: str = "127.0.0.1:0"
    sms: str | None = None
    # Credentials (docs/security.md): the token a client sends (default: the data dir's
    # owner token), where this process's TLS files are (default DATA/tls), and whether a
    # server may listen beyond loopback without TLS and authentication.
    token: str | None = dataclasses.field(default=None, repr=False)
    tls_dir: Path | None = None
    insecure: bool = False
    # Trust, part two (docs/security.md): the namespace a client acts in (None: its
    # token's own, else "default").
    namespace: str | None = None
    # Finished tasks' logs are deleted after this long (0: kept), and the oldest go while
    # all logs together exceed task_logs_max_bytes (0: no limit); a daemon looks every
    # task_log_prune_interval_s (0: never).
    task_log_retention_s: float = 7 * 86400.0
    task_logs_max_bytes: int = 0
    task_log_prune_interval_s: float = 300.0
    task_result_max_bytes: int = 64 * 1024 * 1024  # what a task may set with result_set
    # A wasm task's linear memory unless its spec says otherwise (0: wasm's own 4 GiB).
    wasm_memory_max_bytes: int = 1024**3
    # The agent toolkit (docs/toolkit.md): a TOML file of MCP servers and tool allow-lists.
    mcp_config: str | None = None
    # The object transfer service between members (docs/objects.md): false sends object
    # bytes in the clear once the two members authenticated each other by mutual TLS.
    object_transfer_encrypt: bool = True
    # Encrypted transfers are sealed after the TLS handshake (transport/sealed.py: AES-GCM
    # records of 1 MiB, keys sent through TLS); false keeps the bytes in TLS's own records,
    # here and for what this member serves (a member that must use TLS records only).
    object_transfer_seal: bool = True
    # Copies of each new value larger than 4 KiB kept on this many members (the writer and
    # others, chosen among the live ones), so it outlives its writer (docs/objects.md).
    object_replicas: int = 1
    # Retention of finished tasks' records, logs and results (core/retention.py): deleted
    # this long after they ended (0: kept), and beyond the newest task_retention_records
    # finished ones (0: no limit); a daemon looks every task_log_prune_interval_s.
    task_retention_s: float = 0.0
    task_retention_records: int = 0
    # OpenTelemetry traces (docs/observability.md): the OTLP/HTTP collector to export each
    # task's spans to (a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT, which is read when this
    # is unset); unset: tracing off.
    trace_otlp_endpoint: str | None = None
    # How members forward tasks to each other (node/peer_aio.py, docs/scheduling.md):
    # "grpc.aio" on a port of its own beside the node's, or "node-port" on the node's port
    # only ("grpclib", its old name, is read as "node-port"; both ports are grpc.aio).
    peer_transport: str = "grpc.aio"
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_concurrent_tasks < 1:
            raise InvalidArgument("max_concurrent_tasks must be at least 1")
        if self.log_format not in LOG_FORMATS:
            raise InvalidArgument(f"setting log_format must be one of {', '.join(LOG_FORMATS)}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise InvalidArgument(f"setting log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.busy_timeout_s < 0:
            raise InvalidArgument("busy_timeout_s must not be negative")
        if self.process_kill_grace_s < 0:
            raise InvalidArgument("process_kill_grace_s must not be negative")
        if not 1 <= self.process_warm_spares <= 64:
            raise InvalidArgument("process_warm_spares must be between 1 and 64")
        if self.process_warm_idle_s <= 0:
            raise InvalidArgument("process_warm_idle_s must be positive")
        if self.runner_idle_s < 0:
            raise InvalidArgument("runner_idle_s must be 0 (no runner) or positive")
        if not 1 <= self.object_replicas <= 16:
            raise InvalidArgument("object_replicas must be between 1 and 16")
        if self.object_spare_bytes < 0:
            raise InvalidArgument("object_spare_bytes must be 0 (no spare files) or positive")
        transport = _PEER_TRANSPORT_ALIASES.get(self.peer_transport, self.peer_transport)
        object.__setattr__(self, "peer_transport", transport)
        if self.peer_transport not in PEER_TRANSPORTS:
            raise InvalidArgument(
                f"setting peer_transport must be one of {', '.join(PEER_TRANSPORTS)}"
            )

    @property
    def tasks_log_dir(self) -> Path:
        return self.data_dir / "logs" / "tasks"

    @property
    def system_log_path(self) -> Path:
        return self.data_dir / "logs" / "spear.log"

    @property
    def kv_path(self) -> Path:
        return self.data_dir / "meta.ldb"

    @property
    def tls_files_dir(self) -> Path:
        return self.tls_dir or self.data_dir / "tls"

    @property
    def module_cache_dir(self) -> Path:
        return self.data_dir / "cache" / "modules"

    @classmethod
    def load(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        **flags: Any,
    ) -> Settings:
        """Merge the settings files, `SPEAR_*` variables and explicit flags (None = unset)."""
        env = os.environ if env is None else env
        files: dict[str, Any] = {}
        origin: dict[str, str] = {}  # key -> where its value came from, for errors
        explicit = config_file or (Path(env["SPEAR_CONFIG"]) if env.get("SPEAR_CONFIG") else None)
        if explicit is not None:
            _merge(files, origin, read_toml(Path(explicit), required=True), str(explicit))
        else:
            user = user_config_path(env)
            _merge(files, origin, read_toml(user), str(user))
        environment: dict[str, Any] = {}
        for name in _FIELD_NAMES - {"extra", "data_dir"}:
            raw = env.get("SPEAR_" + name.upper())
            if raw is not None:
                environment[name], origin[name] = raw, "SPEAR_" + name.upper()
        if env.get("SPEAR_HOME"):
            environment["data_dir"], origin["data_dir"] = env["SPEAR_HOME"], "SPEAR_HOME"
        given = {k: v for k, v in flags.items() if v is not None}
        for name in given:
            origin[name] = "--" + name.replace("_", "-")
        data_dir = given.get("data_dir") or environment.get("data_dir") or files.get("data_dir")
        if explicit is None:  # the data dir's own file, over the user's
            path = Path(data_dir or default_data_dir(env)).expanduser() / "config.toml"
            own = read_toml(path)
            if "data_dir" in own:
                raise InvalidArgument(f"{path}: data_dir cannot be set in the data dir's own file")
            _merge(files, origin, own, str(path))
        for name in environment:  # (a file does not say where its keys came from)
            origin[name] = "SPEAR_" + name.upper() if name != "data_dir" else "SPEAR_HOME"
        for name in given:
            origin[name] = "--" + name.replace("_", "-")
        values = {**files, **environment, **given}
        values.setdefault("data_dir", default_data_dir(env))
        if "trace_otlp_endpoint" not in values and env.get(_OTLP_ENV):  # below every setting
            values["trace_otlp_endpoint"], origin["trace_otlp_endpoint"] = env[_OTLP_ENV], _OTLP_ENV
        extra = {k: values.pop(k) for k in list(values) if k not in _FIELD_NAMES}
        for key, value in extra.items():
            _check_extra(key, value, origin[key])
        return cls(**_coerce(values, origin), extra=extra)


_OTLP_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"  # OpenTelemetry's own variable for the collector
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Settings))
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Settings)}


def read_toml(path: Path, what: str = "config file", *, required: bool = False) -> dict[str, Any]:
    """A TOML file's top table ({} for a missing file unless `required`); InvalidArgument
    in one line naming `what` and the path for a file missing, unreadable or not TOML.
    (Settings files, and the models' and MCP servers' files.)"""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        if required:
            raise InvalidArgument(f"{what} not found: {path}") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} {path} cannot be read: {exc}") from None
    import tomllib  # (only when there is a file: ~3 ms)

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{what} {path} is not valid TOML: {exc}") from None


def _merge(values: dict[str, Any], origin: dict[str, str], new: dict[str, Any], where: str) -> None:
    for key, value in new.items():
        if key not in _FIELD_NAMES or key == "extra":
            if key not in EXTRA_KEYS:
                import difflib

                close = difflib.get_close_matches(key, [*_FIELD_NAMES - {"extra"}, *EXTRA_KEYS], 1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise InvalidArgument(f"{where}: unknown setting {key!r}{hint}")
        values[key], origin[key] = value, where


def _check_extra(key: str, value: Any, where: str) -> None:
    kind = EXTRA_KEYS[key]
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if not ok:
            raise InvalidArgument(
                f"{where}: setting {key} must be a positive number, not {value!r}"
            )
    elif not isinstance(value, dict):
        raise InvalidArgument(f"{where}: setting {key} must be a table of name = value")


def _coerce(values: dict[str, Any], origin: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in values.items():
        kind = _FIELD_TYPES[name]
        try:
            if name in ("data_dir", "tls_dir"):
                out[name] = Path(raw).expanduser()
            elif name.endswith("_bytes"):
                out[name] = parse_size(raw)
            elif kind == "bool":
                out[name] = parse_bool(raw)
            elif kind == "int":
                if isinstance(raw, bool) or isinstance(raw, float):
                    raise ValueError("expected a whole number")
                out[name] = int(raw)
            elif kind == "float":
                if isinstance(raw, bool):
                    raise ValueError("expected a number")
                out[name] = float(raw)
            elif not isinstance(raw, str):
                raise ValueError("expected a string")
            else:
                out[name] = raw
        except (TypeError, ValueError, InvalidArgument) as exc:
            why = f": {exc}" if str(exc).startswith("expected") else ""
            raise InvalidArgument(
                f"{origin.get(name, 'settings')}: setting {name} has an invalid value {raw!r}{why}"
            ) from None
    return out
