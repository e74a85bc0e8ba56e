"""The `spear` command's first step: hand the whole command to the warm runner, if one
serves this data dir (cli/runner.py). Standard library only, and little of it: this
module is all a forwarded command imports in its own process.

The runner forks a child that becomes this command: it takes our stdin, stdout and stderr
(passed over the socket), our working directory, environment and umask, and runs the
same `main` on the same arguments. What we do is wait for its exit status, and pass on the
signals we get (Ctrl-C cancels a run the same way). `None` means "run it here": no runner,
switched off, or the runner declined (it is not the spear this process would import).
"""

from __future__ import annotations

import os
import socket
import sys

# The commands worth forwarding: short ones on a node, whose start-up is most of their
# time. Daemons (`serve`, `cluster up`), help and completion always run here.
FORWARDED = frozenset({"run", "submit", "tasks", "status", "logs", "stop", "result", "node",
                       "obj", "nodes"})  # fmt: skip
SOCKET_NAME = "run.sock"
LOCK_NAME = "run.lock"  # held by the runner, with its pid in it
_MAX_PATH = 100  # sun_path holds 108 bytes
_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")


def mode() -> str:
    """ "off" (SPEAR_RUNNER_IDLE_S=0), "require" (SPEAR_RUNNER=require: fail rather than
    run here, for benchmarks and tests) or "auto"."""
    if os.environ.get("SPEAR_RUNNER", "").lower() == "require":
        return "require"
    idle = os.environ.get("SPEAR_RUNNER_IDLE_S", "").strip()
    try:
        return "off" if idle and float(idle) <= 0 else "auto"
    except ValueError:
        return "off"  # the settings report the bad value, in the slow path


# `run` and `submit` pass what follows their module to the agent: spear's own options are
# those before it. Their options that take no value (a test keeps this the commands' own).
PASS_THROUGH_FLAGS = {
    "run": frozenset({"--json", "--reuse", "--stream", "--warm"}),
    "submit": frozenset({"--json", "--reuse", "--wait", "--warm"}),
}


def options_of(argv: list[str]) -> list[str]:
    """The command's own options in `argv` (the command's name first): for `run` and
    `submit`, what comes before the module (the agent's arguments follow it); for the
    others, what comes before a `--`."""
    flags = PASS_THROUGH_FLAGS.get(argv[0]) if argv else None
    if flags is None:
        return argv[: argv.index("--")] if "--" in argv else argv
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break  # the module (or the end of spear's options)
        i += 1 if arg in flags or "=" in arg else 2  # (an option and its value)
    return argv[:i]


def option(argv: list[str], name: str) -> str | None:
    """The value of `--name X` / `--name=X` among the command's own options."""
    own = options_of(argv)
    for i, arg in enumerate(own):
        if arg == name and i + 1 < len(own):
            return own[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def data_dir(argv: list[str]) -> str:
    """The data dir as the settings find it, short of reading a config file."""
    env = os.environ
    given = option(argv, "--data-dir") or env.get("SPEAR_HOME")
    if given:
        return os.path.abspath(os.path.expanduser(given))
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(env.get("XDG_DATA_HOME") or os.path.join(home, ".local/share"), "spear")


def socket_path(argv: list[str]) -> str | None:
    path = os.path.join(data_dir(argv), SOCKET_NAME)
    return path if len(os.fsencode(path)) <= _MAX_PATH else None


def forward(argv: list[str]) -> int | None:
    """Run the command in the warm runner and return its exit status, or None."""
    if not argv or argv[0] not in FORWARDED or "-h" in argv or "--help" in argv:
        return None
    how = mode()
    if how == "off":
        return None
    path = socket_path(argv)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if path is None:
            raise FileNotFoundError
        conn.connect(path)
    except OSError:
        conn.close()
        if how == "require":
            sys.stderr.write(
                "spear: error: no warm runner serves this data dir (SPEAR_RUNNER=require)\n"
            )
            return 69
        return None
    with conn:
        return _converse(conn, argv, how)


def _converse(conn: socket.socket, argv: list[str], how: str) -> int | None:
    import json  # (only here: ~1 ms)

    import spear

    umask = os.umask(0)
    os.umask(umask)
    request = json.dumps(
        {
            "argv": argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "umask": umask,
            "spear": spear.__file__,
            "python": sys.executable,
        }
    ).encode()
    try:
        socket.send_fds(conn, [len(request).to_bytes(4, "big") + request], [0, 1, 2])
    except OSError:
        return None  # a runner on its way out: nothing has run
    previous = _pass_signals(conn)
    try:
        reply = _read_line(conn)
    finally:
        for signum, handler in previous.items():
            _restore(signum, handler)
    if reply is None:  # the child died without a word: its command may have run
        sys.stderr.write("spear: error: the warm runner's child ended without an exit status\n")
        return 70
    answer = json.loads(reply)
    if "exit" in answer:
        return int(answer["exit"])
    if how == "require":
        sys.stderr.write(f"spear: error: the warm runner declined: {answer.get('fallback')}\n")
        return 69
    return None


def _read_line(conn: socket.socket) -> bytes | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)  # (retried after a signal handler runs: PEP 475)
        if not chunk:
            return None
        data += chunk
    return data


def _pass_signals(conn: socket.socket) -> dict[int, object]:
    """Each signal we get goes to the child as one byte: the runner's child raises it on
    itself, so Ctrl-C cancels a run there as it would here."""
    import signal

    def send(signum: int, _frame: object) -> None:
        try:
            conn.sendall(bytes([signum]))
        except OSError:
            pass

    previous: dict[int, object] = {}
    for name in _SIGNALS:
        signum = int(getattr(signal, name))
        previous[signum] = signal.signal(signum, send)
    return previous


def _restore(signum: int, handler: object) -> None:
    import signal

    signal.signal(signum, handler)  # type: ignore[arg-type]


def alive(path: str) -> bool:
    """Whether a runner listens on `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def running(data_dir: os.PathLike[str] | str) -> int | None:
    """The pid of the runner serving `data_dir`, if one does (it holds LOCK_NAME's lock)."""
    import fcntl

    try:
        with open(os.path.join(data_dir, LOCK_NAME), "r+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = f.read().strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(f, fcntl.LOCK_UN)
    except FileNotFoundError:
        pass
    return None


def stop(data_dir: os.PathLike[str] | str) -> int | None:
    """Stop the runner serving `data_dir` (it removes its socket); its pid, if one did."""
    import signal

    pid = running(data_dir)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return None
    return pid
