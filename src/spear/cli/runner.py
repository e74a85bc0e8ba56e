"""The warm runner: a process per data dir that has already imported what the `spear`
command needs, and forks a child for each command a client hands it.

A whole `spear run agent.wasm` is a new process each time, and most of its time went to
start-up (importing typer, anyio, wasmtime and spear's own modules: ~100 ms of the ~300).
As the Gradle daemon and Android's zygote do, the first command on a data dir starts this
runner in the background; later commands connect to its socket (`DATA/run.sock`, the
client side is `_runner_client.py`: stdlib only) and pass their stdin, stdout and stderr,
working directory, environment, umask and arguments. The runner forks; the child takes
all of those on and calls the same `main` the command would have, so everything the
command does (settings, errors, exit codes, signals, the terminal) is as without it. Its
exit status goes back over the socket.

- One thread, no event loop, nothing open but the socket and a lock: forking is safe.
- Only the user the runner runs as may connect (the socket is 0600 and the peer's uid is
  checked), and only a client importing the same spear from the same Python is served:
  a runner whose spear files changed since it started declines and stops.
- It stops after `runner_idle_s` seconds without a command (0: no runner at all).
- `spear runner stop` stops it; `SPEAR_RUNNER_IDLE_S=0` runs every command in its own
  process; `SPEAR_RUNNER=require` fails (69) where no runner serves.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import io
import json
import os
import signal
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spear.cli import _runner_client

if TYPE_CHECKING:
    from collections.abc import Iterator

# What the forwarded commands import (python -X importtime -m spear run hello.wasm, and
# the task commands): imported once here, shared by every child.
PRELOAD = (
    "spear.cli.app", "spear.cli.run", "spear.cli.stream", "spear.cli.tasks",
    "spear.cli.objects", "spear.cli.cluster", "spear.node.assembly", "spear.node.inprocess",
    "spear.node.client", "spear.runtimes.wasm.agent", "spear.runtimes.process.agent",
    "spear.runtimes.deferred", "spear.store.leveldb", "spear.models.router",
    "spear.core.task_ids", "spear._loopstate", "spear._version", "anyio._backends._asyncio",
    "spear.node.namespaced", "spear.toolkit.services", "spear.toolkit.subtasks",
    "spear.toolkit.vectors", "anyio._core._fileio", "anyio._core._signals", "plyvel",
    "tomllib", "json",
)  # fmt: skip
_HEADER = 4


def start(argv: list[str]) -> None:
    """After a forwardable command ran in its own process: start a runner for its data dir
    in the background, unless one serves it or the settings say not to."""
    if not argv or argv[0] not in _runner_client.FORWARDED or _runner_client.mode() == "off":
        return
    path = _runner_client.socket_path(argv)
    if path is None or not os.path.isdir(os.path.dirname(path)) or _runner_client.alive(path):
        return
    try:
        from spear.config import Settings

        config = _runner_client.option(argv, "--config")
        settings = Settings.load(config_file=Path(config) if config else None)
    except Exception:  # the command itself has reported bad settings
        return
    if settings.runner_idle_s <= 0 or Path(path).parent != settings.data_dir.absolute():
        return
    import subprocess

    env = dict(os.environ)
    if env.get("PYTHONPATH"):  # the runner starts in /: the same spear, found from there
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep)
        )
    subprocess.Popen(  # our own interpreter and module
        [sys.executable, "-m", "spear.cli.runner", os.path.dirname(path),
         str(settings.runner_idle_s)],
        cwd="/",
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )  # fmt: skip


def preload() -> None:
    """Import and build what the forwarded commands use, once for every child."""
    for name in PRELOAD:
        importlib.import_module(name)
    from spear._version import version
    from spear.cli.app import build_commands

    build_commands(_runner_client.FORWARDED)
    version()  # (cached: `spear node` prints it; importlib.metadata reads it slowly)


def serve(data_dir: Path, idle_s: float) -> None:
    """Serve `data_dir`'s socket until `idle_s` pass without a command."""
    lock = (data_dir / _runner_client.LOCK_NAME).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another runner serves this data dir
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    preload()
    own = _spear_files()
    path = data_dir / _runner_client.SOCKET_NAME
    ready = data_dir / f".{_runner_client.SOCKET_NAME}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(str(ready))
    finally:
        os.umask(old_umask)
    server.listen(64)
    ready.rename(path)  # a client finds the socket only once it listens
    server.settimeout(idle_s)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    inode = path.stat().st_ino
    gc.collect()
    gc.freeze()  # what the children share stays shared (no refcount-free page copies)
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                return
            with conn:
                if not _serve_one(conn, own):
                    return
    finally:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == inode:
                path.unlink()
        server.close()


def _serve_one(conn: socket.socket, own: dict[str, int]) -> bool:
    """Fork a child for one client; False when this runner should stop."""
    conn.settimeout(5)
    fds: list[int] = []
    try:
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != os.getuid():
            return True
        request, fds = _receive(conn)
    except (OSError, ValueError):
        _close(fds)
        return True
    if len(fds) != 3:
        _close(fds)
        return True
    keep = True
    if not _same_file(request.get("spear"), sys.modules["spear"].__file__) or not _same_file(
        request.get("python"), sys.executable
    ):
        reason = "another spear or Python"
    elif _spear_files() != own:
        reason, keep = "spear changed since the runner started", False
    elif threading.active_count() != 1:
        reason = "the runner is not single-threaded"
    else:
        reason = ""
    if reason:
        _close(fds)
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"fallback": reason}).encode() + b"\n")
        return keep
    pid = os.fork()
    if pid == 0:
        _child(conn, request, fds)  # never returns
    _close(fds)
    return True


def _same_file(a: object, b: str | None) -> bool:
    """Whether two paths name one file (a console script's python3.11 is our python3)."""
    return isinstance(a, str) and b is not None and os.path.realpath(a) == os.path.realpath(b)


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    fds = list(fds)
    if len(data) < _HEADER:
        raise ValueError("short request")
    size = int.from_bytes(data[:_HEADER], "big")
    body = bytearray(data[_HEADER:])
    while len(body) < size:
        chunk = conn.recv(min(1 << 20, size - len(body)))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    request = json.loads(bytes(body))
    if not isinstance(request, dict) or not isinstance(request.get("argv"), list):
        raise ValueError("not a request")
    return request, fds


def _child(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """Become the client's command; exit with its status, told over `conn` as well."""
    code = 70
    try:
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        _close(fds)
        os.environ.clear()
        os.environ.update(request["env"])
        os.umask(int(request["umask"]))
        import tempfile

        tempfile.tempdir = None  # found again from the client's environment
        _std_streams()
        os.chdir(request["cwd"])
        argv = [str(a) for a in request["argv"]]
        sys.argv = ["spear", *argv]
        conn.settimeout(None)
        threading.Thread(target=_relay_signals, args=(conn,), daemon=True).start()
        from spear.cli.app import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # one line, as the command would
        with contextlib.suppress(Exception):
            sys.stderr.write(f"spear: error: {exc}\n")
    finally:
        with contextlib.suppress(Exception):
            import atexit

            atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        os._exit(code)


def _relay_signals(conn: socket.socket) -> None:
    """A byte from the client is a signal it got; the end of the connection (the client
    is gone) is a SIGTERM: the command stops as it would if its own process were told."""
    for signum in _bytes(conn):
        os.kill(os.getpid(), signum)
    os.kill(os.getpid(), signal.SIGTERM)


def _bytes(conn: socket.socket) -> Iterator[int]:
    while True:
        try:
            data = conn.recv(64)
        except OSError:
            return
        if not data:
            return
        yield from data


def _std_streams() -> None:
    """sys.stdin/stdout/stderr anew on fds 0-2 (the client's), buffered as Python buffers
    them at start-up: line by line on a terminal, stderr always."""

    def text(fd: int, mode: str, like: Any, line_buffering: bool) -> io.TextIOWrapper:
        raw = open(fd, mode + "b", closefd=False)  # lives as long as sys
        return io.TextIOWrapper(
            raw,
            encoding=getattr(like, "encoding", None) or "utf-8",
            errors=getattr(like, "errors", None) or "strict",
            line_buffering=line_buffering,
        )

    sys.stdin = text(0, "r", sys.__stdin__, False)
    sys.stdout = text(1, "w", sys.__stdout__, os.isatty(1))
    sys.stderr = text(2, "w", sys.__stderr__, True)


def _spear_files() -> dict[str, int]:
    """Every loaded spear module's file and its modification time."""
    files: dict[str, int] = {}
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        path = getattr(module, "__file__", None)
        if path and (name == "spear" or name.startswith("spear.")):
            try:
                files[path] = os.stat(path).st_mtime_ns
            except OSError:
                files[path] = -1
    return files


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def main() -> None:
    """`python -m spear.cli.runner DATA_DIR IDLE_S` (as `start` runs it)."""
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # never import from the directory a child's command runs in
    serve(Path(sys.argv[1]), float(sys.argv[2]))


if __name__ == "__main__":
    main()
