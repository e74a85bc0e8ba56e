"""spear's system log (seed §7.2): the `logger` every module uses, and its setup.

`logger` is loguru's, reached through a thin front that imports loguru on the first message
that will be written. Importing loguru costs ~20 ms (it pulls in multiprocessing, sysconfig
and asyncio's machinery at import), more than the rest of a short `spear tasks`; most CLI
commands write no message at the configured level and never pay it.

- Library use: nothing is configured; a message goes to loguru only if loguru is already
  imported by the program (where `spear` is disabled unless its user enables it).
- The CLI calls `configure` once: the sinks are added on the first message at or above the
  level, and messages below it are dropped without importing loguru.

Only the CLI entry point calls `configure`; a library stays quiet.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from loguru import Logger

    from spear.config import Settings

_SEVERITY = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40,
             "CRITICAL": 50}  # fmt: skip


class _Setup:
    """What `configure` asked for, applied when loguru is first needed."""

    def __init__(self, settings: Settings, console: bool, color: bool) -> None:
        self.settings = settings
        self.console = console
        self.color = color
        self.threshold = _SEVERITY.get(settings.log_level.upper(), 0)
        self.applied = False

    def apply(self, logger: Logger) -> None:
        self.applied = True
        settings = self.settings
        level = settings.log_level.upper()
        serialize = settings.log_format == "json"
        logger.remove()
        logger.enable("spear")
        try:
            settings.system_log_path.parent.mkdir(parents=True, exist_ok=True)
            logger.add(
                settings.system_log_path,
                level=level,
                rotation="10 MB",
                retention=5,
                serialize=serialize,
                enqueue=False,
            )
        except (OSError, ValueError):
            pass  # an unusable data dir is reported by the command itself, in one line
        if self.console:
            logger.add(sys.stderr, level=level, serialize=serialize, colorize=self.color)


_setup: _Setup | None = None


def configure(settings: Settings, *, console: bool = False, color: bool = False) -> None:
    """Send spear's system log to a rotating file under the data dir, and to stderr if
    `console` (with colours if `color`: the caller checks NO_COLOR and the terminal)."""
    global _setup
    _setup = _Setup(settings, console, color)
    if "loguru" in sys.modules:  # already paid for: set up now, as before
        from loguru import logger

        _setup.apply(logger)


def _loguru(level: str) -> Logger | None:
    """loguru's logger if a message at `level` may be written, else None."""
    setup = _setup
    if "loguru" not in sys.modules and (setup is None or _SEVERITY[level] < setup.threshold):
        return None
    from loguru import logger

    if setup is not None and not setup.applied:
        setup.apply(logger)
    return logger


def _lowest_handler_level(logger: Logger) -> float:
    """The lowest level any of loguru's handlers writes (none: infinity). A message below
    it is dropped before `opt()` and `log()` build anything: a node's per-call debug lines
    cost ~7 us each on the way to loguru's own check (loguru keeps this as `_core.min_level`
    and returns on it first thing in `_log`; 0, every message, if that ever moves)."""
    return getattr(getattr(logger, "_core", None), "min_level", 0)


_context_extras: list[Callable[[], dict[str, Any]]] = []


def add_context_extra(extra: Callable[[], dict[str, Any]]) -> None:
    """Have every message written from now on carry `extra()` in its loguru `extra` (what
    the context it is written in says: spear/tracing adds the current trace id when a
    node traces). Once per function, however often it is added."""
    if extra not in _context_extras:
        _context_extras.append(extra)


class _DeferredLogger:
    """The part of loguru's `Logger` spear uses, forwarding to loguru when it may write."""

    __slots__ = ("_exception", "_extra")

    def __init__(self, extra: dict[str, Any] | None = None, exception: Any = None) -> None:
        self._extra = extra or {}
        self._exception = exception

    def _log(self, level: str, message: str, args: Any, kwargs: Any, exception: Any) -> None:
        real = _loguru(level)
        if real is None or _SEVERITY.get(level, 0) < _lowest_handler_level(real):
            return
        extra = self._extra
        for more in _context_extras:  # (e.g. the current trace id, spear/tracing)
            extra = {**extra, **more()}
        if extra:
            real = real.bind(**extra)
        # depth=2: the record names the caller of debug()/info()/..., not this front.
        real.opt(depth=2, exception=exception).log(level, message, *args, **kwargs)

    def bind(self, **extra: Any) -> _DeferredLogger:
        return _DeferredLogger({**self._extra, **extra}, self._exception)

    def opt(self, *, exception: Any = None) -> _DeferredLogger:
        return _DeferredLogger(self._extra, exception)

    def trace(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log("TRACE", message, args, kwargs, self._exception)

    def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log("DEBUG", message, args, kwargs, self._exception)

    def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log("INFO", message, args, kwargs, self._exception)

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log("WARNING", message, args, kwargs, self._exception)

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log("ERROR", message, args, kwargs, self._exception)

    def critical(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log("CRITICAL", message, args, kwargs, self._exception)

    def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        """An ERROR with the exception being handled."""
        self._log("ERROR", message, args, kwargs, self._exception or True)


logger = _DeferredLogger()
