"""Warm Python workers: a pre-started interpreter that forks one child per warm `.py` task.

A new interpreter costs milliseconds (`python -c pass`) plus whatever the agent imports
(`from spear import agent` loads the SDK); a fork of an interpreter that has all of that
loaded already costs a fraction of one. `ForkServer` (node side) starts
`python -m spear.runtimes.process.forkserver`, which imports the SDK, then waits on a
SOCK_SEQPACKET control socket. Each request carries the command and four descriptors
(a status socket for this task, the child's stdin, stdout and stderr); the server forks,
the child makes its own process group, applies its rlimits, takes the descriptors as
0/1/2, and runs the script as `__main__` with `runpy`. The server sends the child's pid on
the task's status socket and, once it has ended (its group killed, the child reaped), its
wait status and CPU time. The node supervises the child exactly as it does a process it
spawned itself (`process.Supervisor`), killing its group by pid.

When the node goes away (its end of the control socket closes, even on SIGKILL), the
server kills the process group of every child it still has, reaps them and exits. A task
whose status socket the node closes early is killed the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spear.runtimes.process.command import Command

_MAX_MESSAGE = 1024 * 1024
_START_TIMEOUT_S = 30.0


class ForkServer:
    """The node's handle on one fork server process."""

    def __init__(self) -> None:
        self._popen: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self) -> None:
        """Start the server and wait until it has loaded the SDK (blocking)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (env.get("PYTHONPATH", ""), package_root) if p
        )
        try:
            self._popen = subprocess.Popen(
                [sys.executable, "-m", "spear.runtimes.process.forkserver", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a Ctrl-C at the terminal is the node's to handle
            )
        finally:
            theirs.close()
        ours.settimeout(_START_TIMEOUT_S)
        try:
            ready = ours.recv(_MAX_MESSAGE)
        except OSError:
            ready = b""
        ours.settimeout(None)
        if not ready:
            self.stop()
            raise OSError("the warm Python worker did not start")
        self._control = ours

    def spawn(
        self,
        command: Command,
        stdin: int | None,
        stdout: int,
        stderr: int,
        cgroup_procs: str | None = None,
    ) -> WarmChild:
        """Fork a child running `command` (a `.py` agent), in the cgroup whose
        `cgroup.procs` is `cgroup_procs` if given; OSError if that fails."""
        if self._control is None:
            raise OSError("the warm Python worker is not running")
        status_ours, status_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) if stdin is None else None
        stdin_fd = stdin if stdin is not None else devnull
        assert stdin_fd is not None
        request = {
            "argv": list(command.argv[1:]),  # the script and its arguments
            "env": command.env,
            "cwd": command.cwd or os.getcwd(),
            "rlimits": command.limits.as_rlimits() if command.limits else [],
            "cgroup_procs": cgroup_procs,
        }
        try:
            fds = [status_theirs.fileno(), stdin_fd, stdout, stderr]
            with self._lock:
                socket.send_fds(self._control, [json.dumps(request).encode()], fds)
            reply = status_ours.recv(_MAX_MESSAGE)
        except OSError:
            status_ours.close()
            raise
        finally:
            status_theirs.close()
            if devnull is not None:
                os.close(devnull)
        message = json.loads(reply) if reply else {"error": "the warm Python worker exited"}
        if "pid" not in message:
            status_ours.close()
            raise OSError(message.get("errno", 0), message.get("error", "fork failed"))
        return WarmChild(int(message["pid"]), status_ours)

    def stop(self) -> None:
        """Stop the server; it kills the children it still has. Safe to call twice."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._popen is not None:
            try:
                self._popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()


class WarmChild:
    """A child of the fork server, watched through its status socket."""

    def __init__(self, pid: int, status: socket.socket) -> None:
        self.pid = pid
        self._status = status

    @property
    def exit_fd(self) -> int:
        return self._status.fileno()

    def collect(self) -> tuple[int, float]:
        reply = b""
        with contextlib.suppress(OSError):
            reply = self._status.recv(_MAX_MESSAGE)
        if not reply:  # the server died: make sure the child's group did too
            from spear.runtimes.process.supervisor import kill_group

            kill_group(self.pid, signal.SIGKILL)
            return signal.SIGKILL, 0.0  # a wait status meaning "killed by SIGKILL"
        message = json.loads(reply)
        return int(message["status"]), float(message["cpu"])

    def close(self) -> None:
        self._status.close()


# -- the server process ---------------------------------------------------------------


def _run_script(script: str) -> None:
    """Run a file as `__main__`, as `python script` would (runpy costs ~3 ms more)."""
    import builtins
    import types

    with open(script, "rb") as f:
        code = compile(f.read(), script, "exec")
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def _run_child(request: dict[str, Any], fds: list[int], closing: list[int]) -> None:
    """In the forked child: become the task's process, run the script, never return."""
    import atexit
    import io
    import traceback

    code = 1
    try:
        if request.get("cgroup_procs"):  # first, before it can start anything
            with contextlib.suppress(OSError), open(request["cgroup_procs"], "w") as f:
                f.write(str(os.getpid()))
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in closing:
            with contextlib.suppress(OSError):
                os.close(fd)
        for res, soft, hard in request["rlimits"]:
            import resource

            resource.setrlimit(res, (soft, hard))
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        script = request["argv"][0]
        sys.argv = list(request["argv"])
        sys.path[:] = [os.path.dirname(script), *extra, *sys.path[1:]]
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace"
        )
        atexit._clear()
        try:
            _run_script(script)
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code & 0xFF
            else:
                sys.stderr.write(f"{exc.code}\n")
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    except BaseException:  # noqa: B036 - the child must end here, whatever happened
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _serve(control_fd: int) -> None:
    control = socket.socket(fileno=control_fd)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What warm children get for free: the SDK, and what running a script takes.
    import atexit  # noqa: F401
    import io  # noqa: F401
    import resource  # noqa: F401
    import traceback  # noqa: F401

    import spear.agent  # noqa: F401

    children: dict[int, socket.socket] = {}
    by_fd: dict[int, int] = {}
    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    control.send(json.dumps({"ready": True, "pid": os.getpid()}).encode())

    def finish(pid: int, status: int, cpu: float) -> None:
        sock = children.pop(pid)
        by_fd.pop(sock.fileno(), None)
        sel.unregister(sock)
        with contextlib.suppress(OSError):
            sock.send(json.dumps({"status": status, "cpu": cpu}).encode())
        sock.close()

    def reap(pid: int, block: bool) -> None:
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        try:
            if os.waitid(os.P_PID, pid, flags) is None:
                return
        except ChildProcessError:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # what the task left in its group
        _, status, usage = os.wait4(pid, 0)
        finish(pid, status, usage.ru_utime + usage.ru_stime)

    running = True
    while running or children:
        for key, _ in sel.select(None if running else 1.0):
            if key.fileobj is control:
                try:
                    data, fds, _, _ = socket.recv_fds(control, _MAX_MESSAGE, 4)
                except OSError:
                    data, fds = b"", []
                if not data:  # the node is gone: stop every task
                    running = False
                    sel.unregister(control)
                    for pid in list(children):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pid, signal.SIGKILL)
                    continue
                status_sock = socket.socket(fileno=fds[0])
                closing = [control.fileno(), wake_r, wake_w, *by_fd]
                try:
                    pid = os.fork()
                except OSError as exc:
                    status_sock.send(json.dumps({"error": str(exc), "errno": exc.errno}).encode())
                    status_sock.close()
                    for fd in fds[1:]:
                        os.close(fd)
                    continue
                if pid == 0:
                    _run_child(json.loads(data), [*fds[1:]], [*closing, fds[0]])
                with contextlib.suppress(OSError):
                    os.setpgid(pid, pid)  # also here, so the node can kill the group at once
                for fd in fds[1:]:
                    os.close(fd)
                children[pid] = status_sock
                by_fd[status_sock.fileno()] = pid
                sel.register(status_sock, selectors.EVENT_READ)
                status_sock.send(json.dumps({"pid": pid}).encode())
            elif key.fileobj == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            else:  # the node closed a task's status socket: that task is abandoned
                pid = by_fd[key.fd]
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                reap(pid, block=True)
        for pid in list(children):
            reap(pid, block=False)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
