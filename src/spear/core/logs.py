"""Task logs (seed §7.2): each task's stdout, stderr and agent log in files of its own.

`logs/tasks/<task id>/{stdout,stderr,agent.log}` under the data dir. Files are created on
first write, so a task that prints nothing costs no file. Each file stops growing at a
cap (a marker line says so) while the caller's live stream, if any, still gets everything.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, BinaryIO

from spear.core.worker import TaskIO
from spear.errors import InvalidArgument, NotFound
from spear.store.diskspace import is_no_space

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

STREAMS = ("stdout", "stderr", "agent")
_FILES = {"stdout": "stdout", "stderr": "stderr", "agent": "agent.log"}


class _CappedFile:
    def __init__(
        self, directory: Path, name: str, cap: int, on_full: Callable[[], None] | None = None
    ) -> None:
        self._directory = directory
        self._name = name
        self._cap = cap
        self._file: BinaryIO | None = None
        self._written = 0
        self._truncated = False
        self._lock = threading.Lock()
        self._on_full = on_full

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._truncated:
                return
            try:
                self._write(data)
            except OSError as exc:
                if not is_no_space(exc):
                    raise
                self._release()
                if self._on_full is not None:
                    self._on_full()

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self._directory / self._name, "ab", buffering=0)
        room = self._cap - self._written
        if len(data) > room:
            self._file.write(data[: max(room, 0)])
            self._file.write(f"\n[spear: log truncated at {self._cap} bytes]\n".encode())
            self._truncated = True
            self._written = self._cap
            return
        self._file.write(data)
        self._written += len(data)

    def _release(self) -> None:
        """The disk is full: this log stops, and what it holds is given back (deleted),
        so that the node, and every other task, goes on."""
        self._truncated = True
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            (self._directory / self._name).unlink()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class TaskLogWriter:
    """The sinks for one task's output: its files, and a live tee for the caller."""

    def __init__(
        self,
        logs: TaskLogs,
        task_id: str,
        tee_stdout: Callable[[bytes], None] | None = None,
        tee_stderr: Callable[[bytes], None] | None = None,
    ) -> None:
        self._logs = logs
        self._task_id = task_id
        self._open = True
        self._files: dict[str, _CappedFile] = {}  # made on first write: most tasks print little
        self._tee_stdout = tee_stdout
        self._tee_stderr = tee_stderr
        # Called (from the writing thread) when the disk fills: the task is stopped.
        self.on_full: Callable[[], None] | None = None
        self.disk_full = False

    def _full(self) -> None:
        self.disk_full = True
        if self.on_full is not None:
            self.on_full()

    def _file(self, name: str) -> _CappedFile:
        f = self._files.get(name)
        if f is None:  # setdefault: two threads writing first at once share one file
            # The directory is joined on first write: most tasks never write.
            directory = self._logs.directory(self._task_id)
            made = _CappedFile(directory, _FILES[name], self._logs.cap, self._full)
            f = self._files.setdefault(name, made)
        return f

    @property
    def wrote_stdout(self) -> bool:
        return "stdout" in self._files

    def stdout(self, data: bytes) -> None:
        self._file("stdout").write(data)
        if self._tee_stdout is not None:
            self._tee_stdout(data)

    def stderr(self, data: bytes) -> None:
        self._file("stderr").write(data)
        if self._tee_stderr is not None:
            self._tee_stderr(data)

    def agent_log(self, level: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self._file("agent").write(f"{stamp} {level:<7} {message}\n".encode())

    def io(self, stdin: bytes | None | str = None) -> TaskIO:
        return TaskIO(stdout=self.stdout, stderr=self.stderr, stdin=stdin)  # type: ignore[arg-type]

    def close(self) -> None:
        for f in list(self._files.values()):
            f.close()
        if self._open:
            self._open = False
            self._logs._closed(self._task_id, "stdout" in self._files)


def _checked(task_id: str) -> str:
    if not task_id or "/" in task_id or task_id.startswith("."):
        raise InvalidArgument(f"not a task id: {task_id!r}")
    return task_id


class TaskLogs:
    """Where every task's logs live under one node's data dir."""

    def __init__(self, root: Path, cap: int) -> None:
        self._root = root
        self.cap = cap
        # Whether tasks whose writers closed lately wrote stdout: saves a stat per task.
        self._wrote_stdout: dict[str, bool] = {}

    def directory(self, task_id: str) -> Path:
        return self._root / _checked(task_id)

    def writer(
        self,
        task_id: str,
        tee_stdout: Callable[[bytes], None] | None = None,
        tee_stderr: Callable[[bytes], None] | None = None,
    ) -> TaskLogWriter:
        return TaskLogWriter(self, _checked(task_id), tee_stdout, tee_stderr)

    def _closed(self, task_id: str, wrote_stdout: bool) -> None:
        if len(self._wrote_stdout) >= 10_000:  # nobody asks (no object store): forget
            self._wrote_stdout.clear()
        self._wrote_stdout[task_id] = wrote_stdout

    def stdout_file(self, task_id: str) -> Path | None:
        """The task's stdout file if it wrote one, once its writer is closed."""
        wrote = self._wrote_stdout.pop(task_id, None)
        if wrote is False:
            return None
        path = self.path(task_id, "stdout")
        return path if wrote or path.is_file() else None

    def path(self, task_id: str, stream: str) -> Path:
        if stream not in _FILES:
            raise InvalidArgument(f"unknown log stream {stream!r} (one of {', '.join(STREAMS)})")
        return self.directory(task_id) / _FILES[stream]

    def read(self, task_id: str, stream: str, offset: int = 0) -> bytes:
        """What a task wrote to `stream` from `offset` on (empty if it wrote nothing)."""
        path = self.path(task_id, stream)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""
        except NotADirectoryError:  # pragma: no cover
            raise NotFound(f"no logs for task {task_id}") from None


def prune_task_logs(
    root: Path, *, max_age_s: float, max_total_bytes: int, keep: frozenset[str] = frozenset()
) -> list[str]:
    """Delete finished tasks' logs by policy: those untouched for `max_age_s` (0: no age
    limit), then the oldest while all together exceed `max_total_bytes` (0: no limit).
    Tasks in `keep` (running here) and logs written in the last minute are kept.
    Returns the task ids whose logs went."""
    import shutil

    now = time.time()
    found: list[tuple[float, int, str]] = []  # (last write, bytes, task id)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or entry.name in keep:
            continue
        newest, size = entry.stat().st_mtime, 0
        with contextlib.suppress(OSError):
            for f in os.scandir(entry.path):
                st = f.stat(follow_symlinks=False)
                newest, size = max(newest, st.st_mtime), size + st.st_size
        found.append((newest, size, entry.name))
    found.sort()
    total = sum(size for _, size, _ in found)
    gone: list[str] = []
    for newest, size, task_id in found:
        if now - newest < _RECENT_S:
            break  # sorted by age: every later one is recent too
        old = max_age_s > 0 and now - newest > max_age_s
        over = max_total_bytes > 0 and total > max_total_bytes
        if not (old or over):
            continue
        shutil.rmtree(root / task_id, ignore_errors=True)
        total -= size
        gone.append(task_id)
    return gone


_RECENT_S = 60.0
