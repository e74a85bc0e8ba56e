"""Supervision of one process task, on a worker thread, from spawn to reap.

A selector over the child's stdout and stderr pipes, its exit descriptor (a pidfd, or the
fork server's status socket for warm children) and a wake-up pipe: output goes to the
task's `TaskIO` sinks 64 KiB at a time; a cancel or the deadline sends SIGTERM to the
process group and SIGKILL after the grace period; once the leader has exited, what it
left in its group (and its cgroup) is killed before it is reaped.
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from spear.core.models import TaskState
from spear.core.worker import (
    EXIT_CANCELLED,
    EXIT_TIMEOUT,
    Outcome,
    TaskContext,
)
from spear.runtimes.process import die_with_node

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spear.runtimes.process.cgroups import TaskCgroup
    from spear.runtimes.process.command import Command

CHUNK = 64 * 1024
DRAIN_S = 0.5  # after the leader exits, how long pipes held open elsewhere are still read
EXIT_NOT_EXECUTABLE = 126  # like a shell
EXIT_NOT_FOUND = 127


# -- one child, however it was started ------------------------------------------------


class Child(Protocol):
    """A started process the supervisor watches: its pid (also its process group id)."""

    in_cgroup: bool  # it joined the task's cgroup itself, before it ran anything
    kept: bool  # a reused warm worker that ended its task cleanly: alive, not to be killed

    @property
    def pid(self) -> int | None:
        """None until a child started elsewhere says it has (see `collect`)."""

    @property
    def exit_fd(self) -> int:
        """A file descriptor that becomes readable once the process has ended."""

    def collect(self) -> tuple[int, float] | None:
        """Kill what the process left in its group, reap it: (wait status, CPU seconds);
        None if `exit_fd` only told of its start (its pid is known from then on)."""

    def task_cgroup(self) -> TaskCgroup | None:
        """The cgroup it made for itself, once started (a warm child's, or None)."""

    def close(self) -> None: ...


class SpawnedChild:
    """A child of this process, started with subprocess (a new process group)."""

    kept = False

    def __init__(self, popen: subprocess.Popen[bytes], in_cgroup: bool = False) -> None:
        self.popen = popen
        self.pid: int = popen.pid
        self.in_cgroup = in_cgroup
        try:
            self._pidfd = os.pidfd_open(popen.pid)
        except OSError:  # out of descriptors: a child nobody watches must not run on
            kill_group(popen.pid, signal.SIGKILL)
            popen.wait()
            raise

    @property
    def exit_fd(self) -> int:
        return self._pidfd

    def collect(self) -> tuple[int, float]:
        # Wait without reaping first: while the leader is a zombie its pid (= the group id)
        # cannot be reused, so killing the group hits only what the task left behind.
        os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOWAIT)
        kill_group(self.pid, signal.SIGKILL)
        _, status, usage = os.wait4(self.pid, 0)
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        return status, usage.ru_utime + usage.ru_stime

    def task_cgroup(self) -> None:
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._pidfd)


def kill_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def spawn(
    command: Command,
    stdin: int | None,
    stdout: int,
    stderr: int,
    cgroup: TaskCgroup | None = None,
) -> SpawnedChild:
    """fork+exec `command` in a new process group; OSError if it cannot be executed.

    With limits, the child sets them (and joins `cgroup`) between fork and exec, which
    costs subprocess its vfork fast path (measured: 2 ms -> 28 ms per spawn from a node
    with wasmtime loaded); without, the caller moves it into `cgroup` after exec.
    """
    limits = command.limits
    setup = None
    argv: Sequence[str] = command.argv
    if limits:
        procs = cgroup.procs if cgroup is not None else None
        die_with_parent = die_with_node.in_child()

        def setup() -> None:
            if die_with_parent is not None:
                die_with_parent()
            if procs is not None:
                with contextlib.suppress(OSError), open(procs, "w") as f:
                    f.write(str(os.getpid()))
            limits.apply()

    else:
        argv = die_with_node.wrapped(argv)
    popen = subprocess.Popen(
        argv,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=command.env,
        cwd=command.cwd,
        close_fds=True,
        process_group=0,
        # Without a setup, subprocess can use vfork; preexec_fn forces a plain fork.
        preexec_fn=setup,
    )
    return SpawnedChild(popen, in_cgroup=setup is not None and cgroup is not None)


# -- supervision ----------------------------------------------------------------------


@dataclass(slots=True)
class _Stop:
    kind: str | None = None  # "cancel" or "timeout": why the node signalled the group
    term_at: float | None = None
    killed: bool = False


@dataclass(slots=True)
class _Pump:
    """Bytes for the child's stdin, written as the pipe accepts them."""

    fd: int
    data: memoryview | None = None  # a fixed input; None: copy from `source`
    source: int | None = None
    pending: bytes = b""


@dataclass(slots=True)
class Started:
    """A child `Supervisor.begin` started, with the read ends of its output pipes."""

    child: Child
    out_r: int  # -1 once read to its end and closed
    err_r: int
    pump: _Pump | None
    watched: bool = False
    ended: tuple[int, float] | None = None  # (wait status, CPU s), once collected


class Supervisor:
    """Runs one task's process from start to end on a worker thread."""

    def __init__(self, ctx: TaskContext, grace_s: float, cgroup: TaskCgroup | None = None) -> None:
        self.ctx = ctx
        self.grace_s = grace_s
        self.cgroup = cgroup
        self.pid: int | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = _Stop()
        self._cgroup_killed = False
        self.protocol_error: str | None = None  # set by the hostcall channel, for the reason

    @property
    def wake_fd(self) -> int:
        """Readable once `wake` was called (a cancel to act on)."""
        return self._wake_r

    def child_started(self, child: Child) -> None:
        """Its pid is known (and, for a warm child in a cgroup of its own, its cgroup)."""
        self.pid = child.pid
        if self.cgroup is None:
            self.cgroup = child.task_cgroup()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def run(self, start: Any) -> Outcome:
        """`start(stdin_fd, stdout_fd, stderr_fd) -> Child`; then watch it to its end."""
        started = self.begin(start)
        return started if isinstance(started, Outcome) else self.watch(started)

    def begin(self, start: Any, reraise: tuple[type[BaseException], ...] = ()) -> Started | Outcome:
        """Make the child's pipes and start it: what `watch` then follows, or the outcome
        of a task that never started. Exceptions in `reraise` from `start` propagate (the
        caller starts the task another way)."""
        ctx = self.ctx
        if ctx.control.cancelled:
            return Outcome(TaskState.CANCELLED, EXIT_CANCELLED, ctx.control.cancel_reason)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        stdin_fd, pump = self._stdin()
        try:
            child: Child = start(stdin_fd, out_w, err_w)
        except reraise:
            for fd in (out_r, err_r, *((pump.fd,) if pump else ())):
                os.close(fd)
            raise
        except (OSError, ValueError) as exc:
            for fd in (out_r, err_r, *((pump.fd,) if pump else ())):
                os.close(fd)
            return _exec_failure(exc, ctx.task.spec.artifact)
        finally:
            os.close(out_w)
            os.close(err_w)
            if stdin_fd is not None and (pump is not None or stdin_fd != 0):
                os.close(stdin_fd)
        self.pid = child.pid
        if self.cgroup is not None and not child.in_cgroup and child.pid is not None:
            self.cgroup.add(child.pid)
        return Started(child, out_r, err_r, pump)

    def watch(self, started: Started) -> Outcome:
        """Follow a started child to its end (blocking: on a worker thread)."""
        started.watched = True
        try:
            started.ended = self._watch(started)
        finally:
            self._release(started)
        return self._outcome(*started.ended)

    def finish(self, started: Started) -> Outcome:
        """The outcome of a child whose end was collected elsewhere (`started.ended`, its
        pipes read to their end): what `watch` returns once it has followed it."""
        assert started.ended is not None
        self._release(started)
        return self._outcome(*started.ended)

    def _release(self, started: Started) -> None:
        started.watched = True
        started.child.close()
        if self.cgroup is not None and not self._cgroup_killed and not started.child.kept:
            self.cgroup.kill()  # what left the group is still in the cgroup
            self._cgroup_killed = True

    def abandon(self, started: Started) -> None:
        """Kill a started child nobody will watch (its watch was cancelled before it ran)."""
        if started.watched:
            return
        started.watched = True
        child = started.child
        if child.pid is not None:
            kill_group(child.pid, signal.SIGKILL)
        child.close()  # (a warm child's server kills it when its status socket closes)
        for fd in (started.out_r, started.err_r, *((started.pump.fd,) if started.pump else ())):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.cgroup is not None:
            self.cgroup.kill()

    def _stdin(self) -> tuple[int | None, _Pump | None]:
        stdin = self.ctx.io.stdin
        if stdin is None:
            return None, None
        if stdin == "inherit":
            try:
                if not os.isatty(0):
                    return os.dup(0), None  # a file or pipe: the child reads it directly
            except OSError:  # no stdin at all (a daemon): like None
                return None, None
            # A terminal: the child's group is not the foreground one (reading would stop
            # it with SIGTTIN), so its input is copied through a pipe.
            r, w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(w, False)
            return r, _Pump(w, source=0)
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(w, False)
        return r, _Pump(w, data=memoryview(bytes(stdin)))

    def _watch(self, started: Started) -> tuple[int, float]:
        """Follow the child to its end (or, if `started.ended` already, its pipes for
        `DRAIN_S` at most); its wait status and CPU seconds."""
        child, pump = started.child, started.pump
        io = self.ctx.io
        pipes = ((started.out_r, io.stdout), (started.err_r, io.stderr))
        sinks = {fd: sink for fd, sink in pipes if fd >= 0}  # (-1: read to its end already)
        result = started.ended
        drain_until = math.inf
        if result is not None:  # it ended; something outside its group holds a pipe
            drain_until = time.monotonic() + DRAIN_S
            if self.cgroup is not None and not self._cgroup_killed and not child.kept:
                self.cgroup.kill()
                self._cgroup_killed = True
        sel = selectors.DefaultSelector()
        try:
            for fd in sinks:
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ)
            if result is None:
                sel.register(child.exit_fd, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            if pump is not None:
                self._register_pump(sel, pump)
            while sinks or result is None:
                now = time.monotonic()
                if result is not None and now >= drain_until:
                    break  # something outside the group holds the pipes: stop reading
                self._check_stop(child.pid, now)
                timeout = self._next_timeout(now, drain_until)
                for key, _ in sel.select(timeout):
                    fd = key.fd
                    if fd in sinks:
                        if not self._read(fd, sinks[fd]):
                            sel.unregister(fd)
                            os.close(fd)
                            del sinks[fd]
                    elif fd == child.exit_fd and result is None:
                        ended = child.collect()
                        if ended is None:  # it started: its pid is known now
                            self.child_started(child)
                            continue
                        sel.unregister(fd)
                        result = ended
                        if self.cgroup is not None and not child.kept:
                            self.cgroup.kill()
                            self._cgroup_killed = True
                        drain_until = time.monotonic() + DRAIN_S
                        if pump is not None:
                            self._close_pump(sel, pump)
                            pump = None
                    elif fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 512)
                    elif pump is not None and not self._feed(sel, pump, fd):
                        self._close_pump(sel, pump)
                        pump = None
            return result
        finally:
            for fd in sinks:
                os.close(fd)
            if pump is not None:
                self._close_pump(sel, pump)
            sel.close()

    def _check_stop(self, pgid: int | None, now: float) -> None:
        if pgid is None:  # not started yet: decided once it has (its pid comes first)
            return
        stop = self._stop
        control = self.ctx.control
        if stop.kind is None:
            if control.cancelled:
                stop.kind = "cancel"
            elif control.deadline is not None and now >= control.deadline:
                stop.kind = "timeout"
            if stop.kind is not None:
                kill_group(pgid, signal.SIGTERM)
                stop.term_at = now
        elif not stop.killed and stop.term_at is not None and now >= stop.term_at + self.grace_s:
            kill_group(pgid, signal.SIGKILL)
            stop.killed = True

    def _next_timeout(self, now: float, drain_until: float) -> float | None:
        times = [drain_until]
        stop = self._stop
        if stop.kind is None and self.ctx.control.deadline is not None:
            times.append(self.ctx.control.deadline)
        if stop.term_at is not None and not stop.killed:
            times.append(stop.term_at + self.grace_s)
        if stop.kind is None:
            times.append(now + 0.25)  # a cancel set without a wake-up is still seen
        nearest = min(times)
        return None if nearest == math.inf else max(0.0, nearest - now)

    @staticmethod
    def _read(fd: int, sink: Any) -> bool:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return True
        if not data:
            return False
        sink(data)
        return True

    @staticmethod
    def _register_pump(sel: selectors.BaseSelector, pump: _Pump) -> None:
        if pump.source is not None:
            sel.register(pump.source, selectors.EVENT_READ)
        elif pump.data is not None and len(pump.data):
            sel.register(pump.fd, selectors.EVENT_WRITE)
        else:
            os.close(pump.fd)
            pump.fd = -1

    def _feed(self, sel: selectors.BaseSelector, pump: _Pump, fd: int) -> bool:
        """Move stdin bytes along; False once the child's input is finished."""
        try:
            if pump.source is not None and fd == pump.source:
                data = os.read(pump.source, CHUNK)
                if not data:
                    return False
                pump.pending += data
                sel.unregister(pump.source)
                sel.register(pump.fd, selectors.EVENT_WRITE)
                return True
            if pump.data is not None:
                sent = os.write(pump.fd, pump.data[:CHUNK])
                pump.data = pump.data[sent:]
                return len(pump.data) > 0
            sent = os.write(pump.fd, pump.pending)
            pump.pending = pump.pending[sent:]
            if not pump.pending and pump.source is not None:
                sel.unregister(pump.fd)
                sel.register(pump.source, selectors.EVENT_READ)
            return True
        except BlockingIOError:
            return True
        except OSError:  # EPIPE: the child closed its stdin
            return False

    @staticmethod
    def _close_pump(sel: selectors.BaseSelector, pump: _Pump) -> None:
        for fd in (pump.fd, pump.source):
            if fd is not None and fd >= 0:
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(fd)
        if pump.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(pump.fd)
            pump.fd = -1

    def _outcome(self, status: int, cpu: float) -> Outcome:
        control = self.ctx.control
        stop = self._stop
        if stop.kind == "cancel":
            return Outcome(TaskState.CANCELLED, EXIT_CANCELLED, control.cancel_reason)
        if stop.kind == "timeout":
            return Outcome(TaskState.FAILED, EXIT_TIMEOUT, "timeout")
        note = f" ({self.protocol_error})" if self.protocol_error else ""
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            if code == 0:
                return Outcome(TaskState.COMPLETED, 0)
            return Outcome(TaskState.FAILED, code, f"exit status {code}{note}")
        sig = os.WTERMSIG(status)
        limit = self.ctx.task.spec.cpu_time_s
        if sig == signal.SIGXCPU or (
            sig == signal.SIGKILL and limit is not None and cpu >= math.ceil(limit)
        ):
            return Outcome(TaskState.FAILED, 128 + sig, f"CPU time limit exceeded ({limit} s)")
        name = _signal_name(sig)
        return Outcome(TaskState.FAILED, 128 + sig, f"killed by signal {name}{note}")


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _exec_failure(exc: OSError | ValueError, artifact: str) -> Outcome:
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
    return Outcome(TaskState.FAILED, code, f"cannot execute {artifact}: {reason}")
