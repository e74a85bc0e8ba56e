"""Warm Python workers: a pre-started interpreter whose children run warm `.py` tasks.

A new interpreter costs milliseconds (`python -c pass`) plus whatever the agent imports;
a fork of an interpreter that has all of that loaded costs a fraction of one, and a child
forked *before* its task arrives costs the task nothing. `ForkServer` (node side) starts
`python -m spear.runtimes.process.forkserver`, which imports the SDK, freezes its heap
(`gc.freeze`, so a child's collector does not copy it page by page), empties its
environment and keeps `spares` children forked ahead.

A spare rehearses a task's start on harmless inputs (/dev/null, an empty script), so the
pages of the server's memory a start writes to are copied before a task comes, then
waits on the SOCK_SEQPACKET control socket itself. A request carries the command and four
descriptors (a status socket for this task, the child's stdin, stdout and stderr); the
spare that takes it sends the node its pid on the status socket, passes the server its
pid and a copy of the status socket (`report`; the server forks the next spare), joins
the task's cgroup, applies its rlimits, takes the descriptors as 0/1/2 and runs the
script as `__main__`. Given the node's cgroup directory, each spare instead makes a
cgroup of its own there and moves in while it waits (`spare_cgroups.py`): its task runs
in it, and no move into a cgroup is left on the task's path. The server does not read
requests; it forks, reaps and reports.

How a task ends, on the status socket, after the pid:
- the script returned (or raised SystemExit): the child flushes and closes 0/1/2, sends
  `{"exit": code}` and waits, alive, for the node to kill its process group. The node
  has the outcome without waiting for the child's address space to be torn down and
  reaped; since the child is alive when the node kills the group, its pid (the group id)
  cannot have been reused.
- anything else (a signal, `os._exit`): the server reaps the child (its group killed
  first) and sends `{"status": wait status, "cpu": seconds}`.

When the node goes away (its end of the control socket closes, even on SIGKILL), the
spares' reads end and the server, seeing the hang-up, kills the process group of every
child it has, reaps them and exits; children die with their server (PR_SET_PDEATHSIG). A
task whose status socket the node closes is killed the same way (the node closes it
after every task). A server whose spares keep dying before any task gives up.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spear.runtimes.process.cgroups import TaskCgroup
    from spear.runtimes.process.command import Command
    from spear.runtimes.process.spare_cgroups import ChildCgroup

_MAX_MESSAGE = 1024 * 1024
_START_TIMEOUT_S = 30.0
DEFAULT_SPARES = 2
_MAX_LOST_SPARES = 16  # spares in a row dead before taking a task: the server gives up


class WarmUnavailable(OSError):
    """The fork server could not start the task (it is gone): nothing of it ran."""


class ForkServer:
    """The node's handle on one fork server process."""

    def __init__(self, spares: int = DEFAULT_SPARES, cgroup_dir: str | None = None) -> None:
        if spares < 1:
            raise ValueError("a fork server keeps at least one spare (it takes the requests)")
        self.spares = spares
        self.cgroup_dir = cgroup_dir  # each spare makes its own cgroup here (spare_cgroups.py)
        self._popen: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lock = threading.Lock()
        self._devnull: int | None = None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def devnull(self) -> int:
        """/dev/null, open for reading: a task's stdin when it has none."""
        if self._devnull is None:
            raise WarmUnavailable("the warm Python worker is not running")
        return self._devnull

    def start(self) -> None:
        """Start the server and wait until it has loaded the SDK (blocking)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (env.get("PYTHONPATH", ""), package_root) if p
        )
        argv = [sys.executable, "-m", "spear.runtimes.process.forkserver"]
        try:
            self._popen = subprocess.Popen(
                [*argv, str(theirs.fileno()), str(self.spares), self.cgroup_dir or ""],
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
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def spawn(
        self,
        command: Command,
        stdin: int | None,
        stdout: int,
        stderr: int,
        cgroup_procs: str | None = None,
        *,
        block: bool = True,
        cgroup: ChildCgroup | None = None,
        reuse: bool = False,
    ) -> WarmChild:
        """Start a child running `command` (a `.py` agent), in the cgroup whose
        `cgroup.procs` is `cgroup_procs` if given, else (with `cgroup_dir`) in the one
        its spare made, which `cgroup` learns. `WarmUnavailable` if the server is gone
        before the task started (it may run cold instead); with `block=False`,
        BlockingIOError if the control socket's queue is full (nothing was sent). With
        `reuse`, a child that ends the task cleanly stays, for the next task of the same
        function (`WarmChild.kept`, `reuse.py`)."""
        control, devnull = self._control, self._devnull
        if control is None or devnull is None:
            raise WarmUnavailable("the warm Python worker is not running")
        status_ours, status_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if cgroup is not None:
            cgroup.watch(status_ours)
        request = {
            "argv": command.argv[1:],  # the script and its arguments
            "env": command.env,
            "cwd": command.cwd or os.getcwd(),
            "rlimits": command.limits.as_rlimits() if command.limits else [],
            "cgroup_procs": cgroup_procs,
            **({"reuse": True} if reuse else {}),
        }
        try:
            fds = [status_theirs.fileno(), devnull if stdin is None else stdin, stdout, stderr]
            flags = 0 if block else socket.MSG_DONTWAIT
            with self._lock:
                socket.send_fds(control, [json.dumps(request).encode()], fds, flags)
        except BlockingIOError:
            status_ours.close()
            raise
        except OSError as exc:  # nobody holds the other end: the server and its spares died
            status_ours.close()
            raise WarmUnavailable(exc.errno, f"the warm Python worker is gone: {exc}") from None
        finally:
            status_theirs.close()
        # Not waiting for the child's pid here: it is the first message on the status
        # socket, read with the others (one wake-up of the supervising thread fewer).
        return WarmChild(status_ours, cgroup, keep=reuse)

    def stop(self) -> None:
        """Stop the server; it kills the children it still has. Safe to call twice."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None
        if self._popen is not None:
            try:
                self._popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()


class WarmChild:
    """A child of the fork server, watched through its status socket: first its pid,
    then how it ended (from the child itself, or from the server that reaped it)."""

    in_cgroup = True  # it joins the task's cgroup itself, before it runs anything

    def __init__(
        self,
        status: socket.socket,
        cgroup: ChildCgroup | None = None,
        *,
        keep: bool = False,
        pid: int | None = None,
    ) -> None:
        self.pid: int | None = pid  # known once the child has taken the task
        self._status = status
        self.cgroup = cgroup  # the cgroup its spare made, if it made one
        self.keep = keep  # a reused worker: kept if it ends cleanly and alone
        self.kept = False  # it did: alive, waiting for its next task on `status`

    @property
    def status(self) -> socket.socket:
        return self._status

    @property
    def exit_fd(self) -> int:
        return self._status.fileno()

    def collect(self) -> tuple[int, float] | None:
        from spear.runtimes.process.supervisor import kill_group

        reply = b""
        with contextlib.nullcontext() if self.cgroup is None else self.cgroup.lock:
            with contextlib.suppress(OSError):
                reply = self._status.recv(_MAX_MESSAGE)
            message = json.loads(reply) if reply else {}
            if "pid" in message:  # it started
                self.pid = int(message["pid"])
                if self.cgroup is not None:
                    self.cgroup.started(message)
                return None
        if not reply:  # the server died: make sure the child's group did too
            if self.pid is not None:
                kill_group(self.pid, signal.SIGKILL)
            return signal.SIGKILL, 0.0  # a wait status meaning "killed by SIGKILL"
        if "exit" in message:
            if self.keep and message.get("reusable") and not message["exit"]:
                self.kept = True  # nothing left in its group: it waits for another task
            elif self.pid is not None:
                # The child waits for this: what the task left in its group ends with it.
                kill_group(self.pid, signal.SIGKILL)
            return (int(message["exit"]) & 0xFF) << 8, float(message["cpu"])
        return int(message["status"]), float(message["cpu"])

    def task_cgroup(self) -> TaskCgroup | None:
        return self.cgroup.task_cgroup() if self.cgroup is not None else None

    def close(self) -> None:
        if not self.kept:  # (a kept worker's socket is its pool's now)
            self._status.close()


# -- the server process ---------------------------------------------------------------


def _run_script(script: str, keep: bool = False) -> None:
    """Run a file as `__main__`, as `python script` would (runpy costs ~3 ms more). With
    `keep` (a reused worker), the same `__main__` module and compiled code as the last
    task of this script: its globals are still there."""
    import builtins
    import types

    global _MAIN, _CODE
    code = None
    if keep:
        stat = os.stat(script)
        version = (script, stat.st_mtime_ns, stat.st_size)
        if _CODE is not None and _CODE[0] == version:
            code = _CODE[1]
    if code is None:
        with open(script, "rb") as f:
            code = compile(f.read(), script, "exec")
        if keep:
            _CODE = (version, code)
    main = _MAIN if keep and _MAIN is not None and _MAIN.__file__ == script else None
    if main is None:
        main = types.ModuleType("__main__")
        main.__file__ = script
        main.__dict__["__builtins__"] = builtins
        if keep:
            _MAIN = main
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


# In a reused worker: its script's `__main__` module and compiled code, kept between tasks.
_MAIN: Any = None
_CODE: tuple[tuple[str, int, int], Any] | None = None


def _spare(control: socket.socket, report: socket.socket) -> None:
    """In a pre-forked child: take the next task from the control socket, run it, never
    return. The server learns of it through `report` (this pid and a copy of the task's
    status socket, for an end the child cannot report itself) and forks the next spare."""
    try:
        try:  # a task waiting already (many at once) is taken at once, unrehearsed
            data, fds = _recv_request(control, socket.MSG_DONTWAIT)
        except BlockingIOError:
            _rehearse()
            data, fds = _recv_request(control)
    except (OSError, KeyboardInterrupt):
        data, fds = b"", []
    if not data or len(fds) != 4:  # the node is gone, or stopped its warm workers
        os._exit(0)
    control.close()
    me = os.getpid()
    status = socket.socket(fileno=fds[0])
    joined = b"true" if _SPARE_CGROUP and _SPARE_UNJOINED is None else b"false"
    with contextlib.suppress(OSError):
        status.send(b'{"pid": %d, "cgroup": %s}' % (me, joined))
        socket.send_fds(report, [b"%d" % me], [fds[0]])
    report.close()
    _run_child(json.loads(data), status, fds[1:])


# In a spare: the node's cgroup directory its own cgroup is made in, if any, and why the
# spare could not move into it (spare_cgroups.py).
_SPARE_CGROUP = ""
_SPARE_UNJOINED: OSError | None = None

_PATH_BASE: list[str] | None = None  # in a child: `sys.path` after its script's directory

_REQUEST = bytearray()  # the server's: a spare reads its request into it, no new buffer


def _recv_request(control: socket.socket, flags: int = 0) -> tuple[bytes, list[int]]:
    """`socket.recv_fds(control, _MAX_MESSAGE, 4)` without allocating (and, in a child,
    faulting in) a new megabyte for each request."""
    import array

    fds = array.array("i")
    ancsize = socket.CMSG_LEN(4 * fds.itemsize)
    size, ancdata, _, _ = control.recvmsg_into([_REQUEST], ancsize, flags)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return bytes(memoryview(_REQUEST)[:size]), list(fds)


def _rehearse() -> None:
    """Do, before a task comes, what starting one does, on harmless inputs: become a
    process whose stdio is /dev/null and run an empty script. A forked child copies each
    page of the server's memory it first writes to (a reference count is a write); done
    here while it waits, most of that costs the task nothing."""
    null = os.open(os.devnull, os.O_RDWR)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:  # what taking a task does: its pid to the node, the report to the server
        socket.send_fds(a, [b"%d" % os.getpid()], [a.fileno()])
        _, fds = _recv_request(b)
        with socket.socket(fileno=fds[0]) as status:
            status.send(b'{"pid": %d}' % os.getpid())
        b.recv(64)
    request = json.loads(_REHEARSAL)
    request["cwd"] = os.getcwd()
    request["argv"] = [os.devnull]
    _become(request, [null, os.dup(null), os.dup(null)])
    _execute(os.devnull)
    import atexit

    atexit._run_exitfuncs()
    os.environ.clear()


_REHEARSAL = json.dumps(
    {
        "argv": [],
        "env": {"PATH": "/usr/bin", "SPEAR_AGENT_TOKEN": "t", "PYTHONUNBUFFERED": "1"},
        "rlimits": [],
        "cgroup_procs": None,
    }
).encode()


def _become(request: dict[str, Any], fds: list[int]) -> None:
    """Become the task's process: its cgroup, rlimits, stdio, directory, environment,
    argv and `sys.path`."""
    import atexit
    import io

    unjoined = None
    if request.get("cgroup_procs"):  # first, before it can start anything
        try:
            fd = os.open(request["cgroup_procs"], os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"%d" % os.getpid())
            finally:
                os.close(fd)
        except OSError as exc:
            unjoined = exc
    elif _SPARE_CGROUP:
        unjoined = _SPARE_UNJOINED  # (the spare's own cgroup, made while it waited)
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
    global _PATH_BASE
    if _PATH_BASE is None:  # (the first task of this process: the server's own path)
        _PATH_BASE = sys.path[1:]
    sys.path[:] = [os.path.dirname(script), *extra, *_PATH_BASE]
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace"
    )
    atexit._clear()
    if unjoined is not None:  # contained by its process group only; hostcalls refused
        sys.stderr.write(f"spear: the task's cgroup could not be joined: {unjoined}\n")


def _execute(script: str, keep: bool = False) -> int:
    """Run the script as `python script` would; its exit code."""
    import traceback

    try:
        _run_script(script, keep)
        return 0
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code & 0xFF
        sys.stderr.write(f"{exc.code}\n")
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def _run_child(request: dict[str, Any], status: socket.socket, fds: list[int]) -> None:
    """In the child: become the task's process, run the script, never return. A reused
    worker (`"reuse"` in its first request) that ran a task cleanly and is alone again
    takes the next task of the same function from the node, on the same status socket."""
    import atexit
    import traceback

    me = os.getpid()
    reuse = bool(request.get("reuse"))
    if reuse:  # what its tasks leave behind, even orphaned, stays its children: seen
        _subreaper()
    while True:
        code = 1
        cpu = _cpu_seconds()
        try:
            _become(request, fds)
            code = _execute(request["argv"][0], keep=reuse)
            atexit._run_exitfuncs()
        except BaseException:  # noqa: B036 - the child must end here, whatever happened
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            if os.getpid() != me:  # a process the script forked, returning here
                os._exit(code)
        kept = reuse and code == 0 and _alone()
        try:
            _report_exit(status, code, _cpu_seconds() - cpu, kept)
            if not kept:
                os._exit(code)
            _forget_task()
            request, fds = _next_request(status)
        except BaseException:  # noqa: B036 - the node is gone, or sent nonsense
            os._exit(code)


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _report_exit(status: socket.socket, code: int, cpu: float, reusable: bool = False) -> None:
    """Tell the node how the task ended; unless `reusable`, wait, alive, for it to kill
    the group."""
    for fd in (0, 1, 2):  # the node's pipes see their end now, not after teardown
        with contextlib.suppress(OSError):
            os.close(fd)
    message = {"exit": code, "cpu": cpu}
    if reusable:
        message["reusable"] = True
    status.send(json.dumps(message).encode())
    if not reusable:
        status.recv(1)  # the node's SIGKILL ends this; an empty read: the node is gone


def _next_request(status: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """A reused worker's next task (its stdin, stdout and stderr with it); the node
    closing the status socket ends the worker."""
    # 0, 1 and 2 (closed at the task's end) become /dev/null: the next task's descriptors
    # arrive above them, and a stale handle on sys.stdout writes nowhere meanwhile.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)
    data, fds = _recv_request(status)
    if not data or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        os._exit(0)
    return json.loads(data), fds


def _alone() -> bool:
    """Whether this process is as it was before its task: one thread, no child process
    (those ended are reaped here). Read from /proc; if it cannot be, not alone."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    try:
        threads = os.listdir("/proc/self/task")
        if len(threads) != 1:
            return False
        with open(f"/proc/self/task/{threads[0]}/children", "rb") as f:
            return not f.read().strip()
    except OSError:
        return False


def _forget_task() -> None:
    """Between two tasks of a reused worker: what tied it to the last one. The SDK's
    shared connection carried that task's credential (revoked now)."""
    agent = sys.modules.get("spear.agent")
    default = getattr(agent, "_default", None)
    if default is not None:
        with contextlib.suppress(Exception):
            default.close()
        agent._default = None  # type: ignore[union-attr]


def _subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): an orphaned grandchild becomes this process's
    child, not init's, so `_alone` sees it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def _pdeathsig() -> Any:
    """prctl(PR_SET_PDEATHSIG, SIGKILL) for a child to call, so no spare, nor task,
    outlives its fork server (None where libc has no prctl). Made before forking: a child
    does as little as it can between fork and waiting for a task."""
    import ctypes
    import functools

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return functools.partial(prctl, 1, signal.SIGKILL)


class _Server:
    """The fork server: its spares, the children running tasks, their status sockets."""

    def __init__(self, control: socket.socket, spares: int, cgroup_dir: str = "") -> None:
        self.control = control
        self.cgroup_dir = cgroup_dir
        self.target = max(1, spares)  # a spare is what takes requests
        self.children: set[int] = set()  # every child not reaped yet
        self.spares: set[int] = set()  # forked, waiting on the control socket
        self.running: dict[int, socket.socket] = {}  # pid -> its task's status socket
        self.ended: dict[int, tuple[int, float]] = {}  # reaped before their report came
        self.lost_spares = 0  # spares in a row that died before taking a task
        self.pid = os.getpid()
        self.by_fd: dict[int, int] = {}  # status socket fd -> pid
        self.report, self.report_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller = select.poll()
        self.die_with_parent = _pdeathsig()

    def fork_spare(self) -> None:
        import gc

        gc.freeze()  # what the server made since: the children's collector leaves it be
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)
                if self.die_with_parent is not None:
                    self.die_with_parent()
                if os.getppid() != self.pid:  # it died before that took effect
                    os._exit(0)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for sock in (self.report, *self.running.values()):
                    sock.close()
                os.close(self.wake_r)
                os.close(self.wake_w)
                if self.cgroup_dir:
                    from spear.runtimes.process.spare_cgroups import join_own

                    global _SPARE_CGROUP, _SPARE_UNJOINED
                    _SPARE_CGROUP, _SPARE_UNJOINED = self.cgroup_dir, join_own(self.cgroup_dir)
                _spare(self.control, self.report_child)
            finally:  # never return into the server's loop, whatever happened
                os._exit(1)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also here, so the node can kill the group at once
        self.children.add(pid)
        self.spares.add(pid)

    def refill(self) -> None:
        while len(self.spares) < self.target:
            try:
                self.fork_spare()
            except OSError:
                return  # out of processes or memory: tried again on the next event

    def take_report(self) -> None:
        """A spare took a task: watch its status socket; its replacement is forked next."""
        try:
            data, fds, _, _ = socket.recv_fds(self.report, 64, 1)
        except OSError:
            return
        if not fds:
            return
        status = socket.socket(fileno=fds[0])
        pid = int(data)
        self.spares.discard(pid)
        ended = self.ended.pop(pid, None)
        if ended is not None:  # it was reaped before its report came: say how it ended
            with contextlib.suppress(OSError):
                status.send(json.dumps({"status": ended[0], "cpu": ended[1]}).encode())
            status.close()
            return
        self.running[pid] = status
        self.by_fd[status.fileno()] = pid
        # A hang-up only: the node sends a reused worker its next task on this socket.
        self.poller.register(status.fileno(), 0)

    def finish(self, pid: int, wait_status: int, cpu: float) -> None:
        self.children.discard(pid)
        if pid in self.spares and self.target:  # it died unused (not stopped by us)
            self.lost_spares += 1
        elif pid in self.running:
            self.lost_spares = 0
        self.spares.discard(pid)
        status = self.running.pop(pid, None)
        if status is None and self.cgroup_dir:  # a spare: its cgroup, now empty
            from spear.runtimes.process.spare_cgroups import remove_unused

            remove_unused(self.cgroup_dir, pid)  # (a task's is the node's, gone already)
        if status is None:  # a spare, or a child whose report is still on its way
            if len(self.ended) >= 1024:  # spares that died unused never report
                self.ended.pop(next(iter(self.ended)))
            self.ended[pid] = (wait_status, cpu)
            return
        if self.by_fd.pop(status.fileno(), None) is not None:
            self.poller.unregister(status.fileno())
        with contextlib.suppress(OSError):
            status.send(json.dumps({"status": wait_status, "cpu": cpu}).encode())
        status.close()

    def reap(self, pid: int, block: bool) -> None:
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        try:
            if os.waitid(os.P_PID, pid, flags) is None:
                return
        except ChildProcessError:  # (not ours, or reaped already)
            self.finish(pid, signal.SIGKILL, 0.0)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # what the task left in its group
        _, wait_status, usage = os.wait4(pid, 0)
        self.finish(pid, wait_status, usage.ru_utime + usage.ru_stime)

    def kill_all(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def serve(self) -> None:
        control, poller = self.control, self.poller
        # Not POLLIN: requests are for the spares. A hang-up is the node gone (or stopping).
        poller.register(control.fileno(), 0)
        poller.register(self.report.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        running = True
        while running or self.children:
            for fd, _ in poller.poll(None if running else 1000):
                if fd == control.fileno():
                    running = False
                    poller.unregister(fd)
                    self.target = 0
                    self.kill_all()
                elif fd == self.report.fileno():
                    self.take_report()
                elif fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                elif fd in self.by_fd:  # the node closed a task's status socket: done with
                    pid = self.by_fd.pop(fd)  # it (after every task), or abandoned it
                    poller.unregister(fd)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)  # (reaped below, or on its SIGCHLD)
            for pid in list(self.children):
                self.reap(pid, block=False)
            if running and self.lost_spares >= _MAX_LOST_SPARES:  # broken: stop forking
                running = False
                self.target = 0
                self.kill_all()
            if running:
                self.refill()


def _serve(control_fd: int, spares: int, cgroup_dir: str = "") -> None:
    control = socket.socket(fileno=control_fd)
    server = _Server(control, spares, cgroup_dir)
    signal.set_wakeup_fd(server.wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What warm children get for free: the SDK, and what running a script takes.
    import atexit  # noqa: F401
    import builtins  # noqa: F401
    import ctypes  # noqa: F401
    import gc
    import io  # noqa: F401
    import resource  # noqa: F401
    import traceback  # noqa: F401
    import types  # noqa: F401

    import spear.agent

    if cgroup_dir:
        import spear.runtimes.process.spare_cgroups  # noqa: F401

    os.environ.clear()  # each task brings its own: a child then has nothing to remove
    # Everything loaded so far is shared with the children; a collection in a child would
    # write to (and so copy) every page of it.
    _REQUEST.extend(bytes(_MAX_MESSAGE))
    gc.freeze()
    server.refill()
    control.send(json.dumps({"ready": True, "pid": os.getpid()}).encode())
    server.serve()


if __name__ == "__main__":
    _serve(
        int(sys.argv[1]),
        int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_SPARES,
        sys.argv[3] if len(sys.argv) > 3 else "",
    )
