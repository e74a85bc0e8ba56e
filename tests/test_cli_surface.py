"""The `spear` command as users of other CLIs expect it: --version, -h, completion, allowed
values in help and checked by the parser, SPEAR_* variables beside their flags, --json
everywhere with one shape, logs on a daemon's stderr, progress on a terminal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from conftest import Cli, cli_env, one_error_line

if TYPE_CHECKING:
    from pathlib import Path


def run_on_a_terminal(
    args: list[str], env: dict[str, str], *, until: bytes | None = None, timeout: float = 120
) -> tuple[subprocess.Popen[bytes], bytes]:
    """Run `spear ARGS` with stderr on a pseudo-terminal; what it showed there (all of it,
    or up to `until`, leaving the process running)."""
    import pty
    import select
    import time

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spear", *args], stdout=subprocess.PIPE, stderr=follower, env=env
    )
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not (until and until in shown):
            ready, _, _ = select.select([leader], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    return proc, shown


def test_version_and_help(cli: Cli) -> None:
    from spear import __version__

    for flag in ("--version", "-V"):
        proc = cli(flag)
        assert (proc.returncode, proc.stdout) == (0, f"spear {__version__}\n".encode())
    proc = cli("-h")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    # The terms are explained once, at the top.
    assert "A node that runs tasks is a SPEARlet" in text and "SMS (the metadata server" in text
    assert cli("tasks", "-h").stdout.decode().startswith("Usage: spear tasks")
    assert "\\[" not in cli("tasks", "-h").stdout.decode()  # no escapes meant for rich
    assert cli().returncode == 2  # no command: the help, as a usage error


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion(cli: Cli, data_dir: Path, tmp_path: Path) -> None:
    script = cli("completion", "bash").stdout.decode()
    assert "_SPEAR_COMPLETE" in script
    (tmp_path / "spear.bash").write_text(script)
    wrapper = tmp_path / "bin" / "spear"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m spear "$@"\n')
    wrapper.chmod(0o755)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        proc = subprocess.run(
            ["bash", "-c", f"source {tmp_path}/spear.bash; COMP_WORDS=({line}); "
             f"COMP_CWORD={len(words) - 1}; _spear_completion spear; "
             'printf "%s\\n" "${COMPREPLY[@]}"'],
            capture_output=True, timeout=60,
            env={**cli_env(data_dir), "PATH": f"{wrapper.parent}:{os.environ['PATH']}"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.decode().split()

    assert complete("spear", "ta") == ["tasks"]
    assert complete("spear", "obj", "g") == ["get", "gc"] or set(complete("spear", "obj", "g")) == {
        "get",
        "gc",
    }
    states = {s.upper() for s in complete("spear", "tasks", "--state", "''")}
    assert states == {"PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"}
    assert set(complete("spear", "serve", "--role", "''")) == {"spearlet", "sms"}


def test_zsh_and_fish_completion(cli: Cli) -> None:
    # (the scripts ask spear with these variables; zsh and fish need not be installed)
    zsh = cli("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith(b"#compdef spear")
    assert b"_SPEAR_COMPLETE=complete_zsh" in zsh.stdout
    asked = cli(_TYPER_COMPLETE_ARGS="spear ta", _SPEAR_COMPLETE="complete_zsh")
    assert b'"tasks":"List tasks, newest first."' in asked.stdout
    fish = cli("completion", "fish")
    assert fish.returncode == 0 and b"complete --command spear" in fish.stdout
    asked = cli(
        _SPEAR_COMPLETE="complete_fish",
        _TYPER_COMPLETE_FISH_ACTION="get-args",
        _TYPER_COMPLETE_ARGS="spear serve --role ",
    )
    assert asked.stdout.split() == [b"spearlet", b"sms"]
    assert cli("completion", "tcsh").returncode == 2


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (("tasks", "--state", "DONE"), "'PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED'"),
        (("run", "--runtime", "jvm", "x.wasm"), "'wasm', 'process'"),
        (("run", "--framing", "json", "x.wasm"), "'lines', 'length'"),
        (("logs", "--stream", "stdin", "0123"), "'stdout', 'stderr', 'agent'"),
        (("serve", "--role", "scheduler"), "'spearlet', 'sms'"),
        (("serve", "--log-level", "LOUD"), "'TRACE', 'DEBUG', 'INFO'"),
        (("serve", "--log-format", "xml"), "'text', 'json'"),
    ],
)
def test_choices_are_checked_by_the_parser(cli: Cli, args: tuple[str, ...], allowed: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    assert allowed.lower() in one_error_line(proc.stderr).lower()
    first = allowed.split(",")[0].strip("'")
    usage = cli(args[0], "-h").stdout.decode()
    assert f"[{first}|" in usage or f"[{first.lower()}|" in usage  # help lists the values
    assert cli("tasks", "--state", "completed").returncode == 0  # (states in any case)


def test_environment_variables_beside_their_flags(cli: Cli) -> None:
    expected = {
        ("tasks",): ("SPEAR_NODE", "SPEAR_HOME", "SPEAR_CONFIG"),
        ("serve",): ("SPEAR_LISTEN", "SPEAR_SMS", "SPEAR_LOG_LEVEL", "SPEAR_LOG_FORMAT",
                     "SPEAR_HOME", "SPEAR_CONFIG"),
        ("nodes",): ("SPEAR_SMS", "SPEAR_NODE"),
        ("cluster", "up"): ("SPEAR_CLUSTER_DIR",),
    }  # fmt: skip
    for command, names in expected.items():
        text = " ".join(cli(*command, "-h").stdout.decode().split())
        for name in names:
            assert f"env var: {name}]" in text, (command, name)


def _leaf_commands() -> list[tuple[str, ...]]:
    import click
    import typer.main

    from spear.cli.app import app

    root = typer.main.get_command(app)
    ctx = click.Context(root)
    out: list[tuple[str, ...]] = []

    def walk(group: Any, path: tuple[str, ...]) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                walk(command, (*path, name))
            else:
                out.append((*path, name))

    walk(root, ())
    return out


def test_every_command_takes_json() -> None:
    import warnings

    with warnings.catch_warnings():  # (typer building a command uses a click deprecation)
        warnings.simplefilter("ignore", DeprecationWarning)
        commands = _leaf_commands()
    assert len(commands) > 20
    commands.remove(("completion",))  # (it prints a script)
    import typer.main

    from spear.cli.app import app

    root = typer.main.get_command(app)
    for path in commands:
        command: Any = root
        for name in path:
            command = command.get_command(None, name)
        assert "--json" in [o for p in command.params for o in p.opts], path


def test_json_errors_and_obj_rm(cli: Cli) -> None:
    proc = cli("obj", "rm", "missing", "--json")
    assert proc.returncode == 66  # as in text mode
    assert json.loads(proc.stdout) == {
        "error": {"code": "not_found", "exit_code": 66, "message": "no such object: missing"}
    }
    assert one_error_line(proc.stderr) == "spear: error: no such object: missing"
    text = cli("obj", "rm", "missing")
    assert (text.returncode, text.stdout) == (66, b"")
    assert cli("obj", "put", "here", "-", input=b"x").returncode == 0
    assert cli.json("obj", "rm", "here") == {"deleted": True, "key": "here"}


def test_json_is_one_sorted_indented_document(cli: Cli, tmp_path: Path) -> None:
    from wat_tasks import hello

    proc = cli("run", "--json", str(hello(tmp_path)))
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["output"] == "hello\n" and doc["task"]["state"] == "COMPLETED"
    assert proc.stdout.decode() == json.dumps(doc, indent=2, sort_keys=True) + "\n"
    assert cli.json("status", doc["task"]["id"]) == doc["task"]  # one shape for a task
    listed = cli("tasks", "--json").stdout.decode()
    assert listed == json.dumps(json.loads(listed), indent=2, sort_keys=True) + "\n"


def test_node_without_a_daemon_is_not_running(cli: Cli) -> None:
    text = cli("node").stdout.decode()
    assert "state:    offline" in text and "running" not in text.split("running:")[0]
    assert cli.json("node")["state"] == "offline"


def test_daemon_logs_on_stderr(data_dir: Path) -> None:
    env = cli_env(data_dir)
    # Not a terminal: plain lines, no colour.
    proc = subprocess.Popen(
        [sys.executable, "-m", "spear", "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    address = proc.stdout.readline().decode().strip()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert f"serving spear.v1.Spearlet on {address}" in text
    assert "\x1b[" not in text
    assert text == (data_dir / "logs" / "spear.log").read_text()  # the same lines
    # A terminal: colour, unless NO_COLOR says not.
    for no_color, coloured in (("", True), ("1", False)):
        env = cli_env(data_dir, NO_COLOR=no_color)
        daemon, shown = run_on_a_terminal(
            ["serve", "--listen", "127.0.0.1:0"], env, until=b"serving spear.v1.Spearlet"
        )
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
        assert b"serving spear.v1.Spearlet" in shown
        assert (b"\x1b[" in shown) is coloured


def test_cluster_up_in_the_users_data_dir_with_progress(data_dir: Path) -> None:
    env = cli_env(data_dir)
    proc, shown = run_on_a_terminal(["cluster", "up", "--nodes", "1", "--json"], env)
    out, _ = proc.communicate(timeout=120)
    try:
        assert proc.returncode == 0, shown
        info = json.loads(out)
        assert info["dir"] == str(data_dir / "cluster")  # not a path shared by all users
        assert b"starting" not in shown  # --json: nothing for a person to watch
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "spear", "cluster", "down", "--json"],
            capture_output=True, env=env, timeout=120,
        )  # fmt: skip
    assert json.loads(down.stdout) == {"stopped": 2}
    proc, shown = run_on_a_terminal(["cluster", "up", "--nodes", "1"], env)
    proc.communicate(timeout=120)
    subprocess.run(
        [sys.executable, "-m", "spear", "cluster", "down"], capture_output=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0
    assert b"starting an SMS and 1 SPEARlet(s)" in shown and shown.endswith(b"\r\x1b[K")


def test_a_large_modules_first_compile_shows_progress(data_dir: Path, tmp_path: Path) -> None:
    import wasmtime

    from spear.cli._common import Progress

    body = " ".join(["(local.set 0 (i32.add (local.get 0) (i32.mul (local.get 0) (i32.const 7))))"]
                    * 40)  # fmt: skip
    # A module whose compile takes well past the spinner's delay on this machine, now:
    # wasmtime compiles in parallel, so a quiet machine needs more functions than a busy one.
    count = 4000
    while True:
        funcs = "\n".join(f"(func $f{i} (param i32) (result i32) {body} (local.get 0))"
                          for i in range(count))  # fmt: skip
        wasm = wasmtime.wat2wasm(f'(module {funcs} (func (export "_start")))')
        started = time.perf_counter()
        wasmtime.Module(wasmtime.Engine(), wasm)
        if time.perf_counter() - started > 4 * Progress.DELAY_S or count >= 64000:
            break
        count *= 2
    big = tmp_path / "big.wasm"
    big.write_bytes(wasm)
    env = cli_env(data_dir)
    proc, shown = run_on_a_terminal(["run", str(big)], env)
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert f"preparing {big}".encode() in shown and shown.endswith(b"\r\x1b[K")
    # Not on a terminal: nothing (the guest's own stderr is all there is).
    quiet = subprocess.run([sys.executable, "-m", "spear", "run", str(big)], env=env,
                           capture_output=True, timeout=120)  # fmt: skip
    assert (quiet.returncode, quiet.stderr) == (0, b"")
