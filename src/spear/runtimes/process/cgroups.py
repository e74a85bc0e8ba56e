"""cgroup v2 containment for process tasks, where the hierarchy is writable.

A process group holds what a task starts unless something leaves it (`setsid`, a
daemon). A cgroup holds it whatever it does: each task gets `spear-<pid>-<n>/<task id>`
under this process's own cgroup, its processes are moved in as they start, and when the
task ends `cgroup.kill` stops everything still in it. A node that died without cleaning
up (SIGKILL) leaves its `spear-<pid>-<n>` cgroup behind; the next node to start kills what is
in it and removes it.

Only containment: resource controllers (memory.max) are not enabled, since a cgroup that
enables them for its children may hold no processes itself and the node's own cgroup
does. Where cgroup v2 is missing or read-only, `NodeCgroup.create` returns None and
process groups alone apply.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import signal
import threading
import time
from pathlib import Path

_PREFIX = "spear-"


def _own_cgroup_dir() -> Path | None:
    """This process's cgroup v2 directory, if there is a cgroup2 mount."""
    found = _own_cgroup()
    return None if found is None else found[0]


def _own_cgroup() -> tuple[Path, str] | None:
    """(directory, path as /proc/<pid>/cgroup shows it) of this process's cgroup v2."""
    mount = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[sep + 1] == "cgroup2":
                    mount = fields[4]
                    break
        relative = None
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    relative = line[3:].strip()
    except (OSError, ValueError, IndexError):
        return None
    if mount is None or relative is None:
        return None
    return Path(mount) / relative.lstrip("/"), relative.rstrip("/")


def cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of a process, as /proc/<pid>/cgroup shows it."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_cgroup(directory: Path) -> None:
    """Kill every process in a cgroup (and below it)."""
    try:
        fd = os.open(directory / "cgroup.kill", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"1")
        finally:
            os.close(fd)
        return
    except OSError:
        pass
    for procs in directory.rglob("cgroup.procs"):  # kernels before 5.14
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)


def remove_cgroup(directory: Path, wait_s: float = 1.0) -> bool:
    """rmdir a cgroup tree once its processes are gone; False if they outlast `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(directory)  # the usual case: no processes, no cgroups below
            return True
        except FileNotFoundError:
            return True
        except OSError:
            pass
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                if entry.is_dir(follow_symlinks=False):
                    remove_cgroup(Path(entry.path), 0)
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


class NodeCgroup:
    """This node's cgroup for its process tasks."""

    def __init__(self, directory: Path, path: str) -> None:
        self.directory = directory
        self.path = path  # as /proc/<pid>/cgroup shows it
        self._retired: queue.SimpleQueue[TaskCgroup | None] = queue.SimpleQueue()
        self._remover: threading.Thread | None = None
        self._remover_lock = threading.Lock()

    @classmethod
    def create(cls) -> NodeCgroup | None:
        own = _own_cgroup()
        if own is None or not (own[0] / "cgroup.procs").exists():
            return None
        parent, parent_path = own
        cls._clean_dead_nodes(parent)
        # One per node, several nodes may share a process: `spear-<pid>-<random>`.
        name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        directory = parent / name
        try:
            directory.mkdir()
        except OSError:
            return None  # read-only, or not delegated to us
        return cls(directory, f"{parent_path}/{name}")

    @staticmethod
    def _clean_dead_nodes(parent: Path) -> None:
        with contextlib.suppress(OSError):
            for entry in parent.iterdir():
                pid = entry.name[len(_PREFIX) :].split("-")[0]
                if not entry.name.startswith(_PREFIX) or not pid.isdigit():
                    continue
                if _pid_alive(int(pid)):
                    continue
                kill_cgroup(entry)
                remove_cgroup(entry)

    def for_task(self, task_id: str) -> TaskCgroup | None:
        directory = self.directory / task_id
        try:
            directory.mkdir()
        except OSError:
            return None
        return TaskCgroup(directory, f"{self.path}/{task_id}")

    def retire(self, task: TaskCgroup) -> None:
        """Remove a task's cgroup, whose processes were killed: now if they are gone
        already, else on a thread once they are (a task's end does not wait for that)."""
        if remove_cgroup(task.directory, 0):
            return
        with self._remover_lock:
            if self._remover is None:
                self._remover = threading.Thread(
                    target=self._remove_retired, name="spear-cgroup-remover", daemon=True
                )
                self._remover.start()
        self._retired.put(task)

    def _remove_retired(self) -> None:
        while (task := self._retired.get()) is not None:
            task.kill()  # (again: what it forked while being killed)
            remove_cgroup(task.directory)

    def close(self) -> None:
        with self._remover_lock:
            remover, self._remover = self._remover, None
        if remover is not None:
            self._retired.put(None)
            remover.join()
        kill_cgroup(self.directory)
        remove_cgroup(self.directory)


class TaskCgroup:
    """One task's cgroup."""

    def __init__(self, directory: Path, path: str) -> None:
        self.directory = directory
        self.path = path  # as /proc/<pid>/cgroup shows it
        self.procs = str(directory / "cgroup.procs")

    def holds(self, pid: int) -> bool:
        """Whether process `pid` is in this cgroup (or below it)."""
        found = cgroup_of(pid)
        return found is not None and (found == self.path or found.startswith(self.path + "/"))

    def add(self, pid: int) -> None:
        with contextlib.suppress(OSError):  # the process may already be gone
            with open(self.procs, "w") as f:
                f.write(str(pid))

    def kill(self) -> None:
        kill_cgroup(self.directory)

    def remove(self) -> None:
        remove_cgroup(self.directory)
