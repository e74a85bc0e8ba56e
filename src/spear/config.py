"""One settings object per process, built once: file < environment (`SPEAR_*`) < flags.

Only `Settings.load` reads the environment or a file; everything else takes a `Settings`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
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
    if isinstance(text, int):
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
    xdg = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/share")
    return Path(xdg) / "spear"


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
    object_gc_grace_s: float = 86400.0  # an unreferenced, unpinned object lives this long idle
    object_gc_interval_s: float = 60.0  # how often a node sweeps (0: never; `spear obj gc`)
    stream_queue_messages: int = 64  # per direction, per task: then -EAGAIN / backpressure
    stream_message_max_bytes: int = 1024**2
    process_kill_grace_s: float = 2.0  # SIGTERM to a process task's group, then SIGKILL
    process_warm_spares: int = 2  # warm Python children forked ahead of the tasks they run
    process_warm_idle_s: float = 300.0  # a fork server no warm task used this long stops
    models_config: str | None = None  # a TOML routing file for AI models (docs/models.md)
    listen: str = "127.0.0.1:7070"
    # The dashboard and /metrics (docs/dashboard.md): loopback, a free port, unless set;
    # "off" serves no HTTP.
    http_listen: str = "127.0.0.1:0"
    sms: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_concurrent_tasks < 1:
            raise InvalidArgument("max_concurrent_tasks must be at least 1")
        if self.log_format not in ("text", "json"):
            raise InvalidArgument("log format must be 'text' or 'json'")
        if self.busy_timeout_s < 0:
            raise InvalidArgument("busy_timeout_s must not be negative")
        if self.process_kill_grace_s < 0:
            raise InvalidArgument("process_kill_grace_s must not be negative")
        if not 1 <= self.process_warm_spares <= 64:
            raise InvalidArgument("process_warm_spares must be between 1 and 64")
        if self.process_warm_idle_s <= 0:
            raise InvalidArgument("process_warm_idle_s must be positive")

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
        """Merge the config file, `SPEAR_*` variables and explicit flags (None = unset)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = config_file or (Path(env["SPEAR_CONFIG"]) if env.get("SPEAR_CONFIG") else None)
        if path is None:
            candidate = default_data_dir(env) / "config.toml"
            path = candidate if candidate.is_file() else None
        if path is not None:
            try:
                values.update(tomllib.loads(Path(path).read_text()))
            except FileNotFoundError:
                raise InvalidArgument(f"config file not found: {path}") from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise InvalidArgument(f"config file {path} is not valid TOML: {exc}") from None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in fields:
            raw = env.get("SPEAR_" + name.upper())
            if raw is not None and name != "extra":
                values[name] = raw
        if env.get("SPEAR_HOME") and "data_dir" not in flags:
            values["data_dir"] = env["SPEAR_HOME"]
        values.update({k: v for k, v in flags.items() if v is not None})
        unknown = set(values) - set(fields)
        extra = {k: values.pop(k) for k in unknown}
        values.setdefault("data_dir", default_data_dir(env))
        return cls(**_coerce(values, fields), extra=extra)


def _coerce(values: dict[str, Any], fields: dict[str, dataclasses.Field[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in values.items():
        kind = fields[name].type
        try:
            if name == "data_dir":
                out[name] = Path(raw).expanduser()
            elif name.endswith("_bytes"):
                out[name] = parse_size(raw)
            elif kind == "bool":
                out[name] = (
                    raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
                )
            elif kind == "int":
                out[name] = int(raw)
            elif kind == "float":
                out[name] = float(raw)
            else:
                out[name] = raw
        except (TypeError, ValueError):
            raise InvalidArgument(f"setting {name} has an invalid value {raw!r}") from None
    return out
