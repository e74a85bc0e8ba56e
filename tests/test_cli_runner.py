"""The warm runner (cli/runner.py): a command handed to it does what it does in its own
process. The whole of test_cli_run.py runs again here with every command forwarded
(SPEAR_RUNNER=require fails a command the runner did not run), then the runner's own rules:
how it starts and stops, Ctrl-C and a vanished client, who it serves.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import ROOT, Cli, assert_eventually, cli_env, stop_process
from test_cli_run import *  # noqa: F403 - the same tests, through the runner
from test_cli_run import test_kill_9_mid_run_keeps_the_store as _in_process_only

if TYPE_CHECKING:
    from collections.abc import Iterator

# A SIGKILLed `spear run` leaves its task to the next command to find lost (test_cli_run);
# through the runner, the child sees its client go and cancels the task (below).
del _in_process_only
globals().pop("test_kill_9_mid_run_keeps_the_store", None)


def start_runner(data_dir: Path, idle_s: float = 120) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "spear.cli.runner", str(data_dir), str(idle_s)],
        env=cli_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:  # (60 s: a runner's start took over 10 on a machine at load 20)
        assert_eventually(
            lambda: (data_dir / "run.sock").exists() or proc.poll() is not None, timeout=60
        )
    except AssertionError:
        stop_process(proc)  # not left running for a later test to find (ResourceWarning)
        raise
    assert proc.poll() is None, proc.communicate()
    return proc


@pytest.fixture
def runner(data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_runner(data_dir)
    yield proc
    assert stop_process(proc) == 0


@pytest.fixture
def cli(data_dir: Path, runner: subprocess.Popen[bytes]) -> Cli:
    return Cli(data_dir, SPEAR_RUNNER="require", SPEAR_RUNNER_IDLE_S="120")


def test_a_command_starts_a_runner_and_the_next_uses_it(data_dir: Path, hello_wasm: Path) -> None:
    cli = Cli(data_dir, SPEAR_RUNNER_IDLE_S="60")
    assert cli("run", str(hello_wasm)).returncode == 0
    assert_eventually(lambda: (data_dir / "run.sock").exists())
    try:
        proc = cli("run", str(hello_wasm), "runner", SPEAR_RUNNER="require")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"Hello, runner!\n"
        status = cli.json("runner", "status")
        assert status["running"] and status["pid"] > 0
    finally:
        assert cli("runner", "stop").returncode == 0
    assert_eventually(lambda: not (data_dir / "run.sock").exists())
    gone = cli("tasks", SPEAR_RUNNER="require")
    assert gone.returncode == 69
    assert b"no warm runner" in gone.stderr
    assert cli.json("runner", "status")["running"] is False


def test_no_runner_when_switched_off(data_dir: Path, hello_wasm: Path) -> None:
    cli = Cli(data_dir)  # SPEAR_RUNNER_IDLE_S=0, as every other test runs
    assert cli("run", str(hello_wasm)).returncode == 0
    assert cli("tasks").returncode == 0
    assert not (data_dir / "run.sock").exists()
    assert cli.json("runner", "status")["running"] is False


def test_an_idle_runner_stops_and_removes_its_socket(data_dir: Path) -> None:
    proc = start_runner(data_dir, idle_s=0.5)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not (data_dir / "run.sock").exists()


def test_the_socket_is_its_users_only(cli: Cli, data_dir: Path) -> None:
    mode = (data_dir / "run.sock").stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_a_client_that_vanishes_cancels_its_run(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli.popen("run", str(conformance_wasm), "loop")
    try:
        assert_eventually(lambda: any(t["state"] == "RUNNING" for t in cli.json("tasks")))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    task = assert_eventually(
        lambda: next((t for t in cli.json("tasks") if t["state"] == "CANCELLED"), None)
    )
    assert "signal" in task["reason"]


def test_another_spear_is_not_served(cli: Cli, tmp_path: Path, hello_wasm: Path) -> None:
    import spear

    other = tmp_path / "other"
    shutil.copytree(Path(spear.__file__).parent, other / "spear")
    env = cli_env(cli.data_dir, SPEAR_RUNNER="require", PYTHONPATH=str(other))
    proc = subprocess.run(
        [sys.executable, "-m", "spear", "run", str(hello_wasm)], capture_output=True, env=env
    )
    assert proc.returncode == 69
    assert b"declined: another spear or Python" in proc.stderr
    env["SPEAR_RUNNER"] = ""
    proc = subprocess.run(
        [sys.executable, "-m", "spear", "run", str(hello_wasm)], capture_output=True, env=env
    )
    assert (proc.returncode, proc.stdout) == (0, b"Hello, spear!\n")  # in its own process


def test_the_same_python_by_another_path_is_served(
    cli: Cli, tmp_path: Path, hello_wasm: Path
) -> None:
    same = tmp_path / "python3"  # as a console script's shebang names python3.11
    same.symlink_to(sys.executable)
    env = cli_env(cli.data_dir, SPEAR_RUNNER="require")
    proc = subprocess.run(
        [str(same), "-m", "spear", "run", str(hello_wasm)], capture_output=True, env=env
    )
    assert (proc.returncode, proc.stdout) == (0, b"Hello, spear!\n"), proc.stderr


def test_a_runner_whose_spear_changed_declines_and_stops(
    cli: Cli, runner: subprocess.Popen[bytes], hello_wasm: Path
) -> None:
    source = ROOT / "src" / "spear" / "cli" / "stream.py"
    import spear.cli.stream

    if spear.cli.stream.__file__ != str(source):
        pytest.skip("spear is not imported from this checkout")
    before = source.stat()
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    try:
        proc = cli("run", str(hello_wasm))
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert proc.returncode == 69
    assert b"spear changed" in proc.stderr
    runner.communicate(timeout=30)
    assert runner.returncode == 0
    assert not (cli.data_dir / "run.sock").exists()


def test_a_stranger_on_the_socket_is_ignored(cli: Cli, data_dir: Path, hello_wasm: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(data_dir / "run.sock"))
        s.sendall(b"\x00\x00\x00\x05junk!")  # no fds, not a request
        assert s.recv(100) == b""  # closed without a word
    proc = cli("run", str(hello_wasm))  # the runner goes on serving
    assert proc.returncode == 0, proc.stderr


WARM_CHECK = """
import os, sys
from spear.cli import runner
runner.preload()
from spear.cli.app import main
before = set(sys.modules)
for argv in ({commands}):
    main(list(argv))
print(sorted(m for m in set(sys.modules) - before if not m.startswith("encodings.")))
"""


def test_a_child_has_nothing_left_to_import(data_dir: Path, hello_wasm: Path) -> None:
    """What the runner preloads covers the short commands: a child imports nothing."""
    commands = [("run", str(hello_wasm)), ("tasks",), ("status", "nosuch"), ("obj", "ls"),
                ("logs", "nosuch"), ("node",)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", WARM_CHECK.format(commands=repr(commands)[1:-1] + ",")],
        capture_output=True,
        env=cli_env(data_dir),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines()[-1] == "[]"


def test_a_data_dir_after_the_module_is_the_agents_not_the_runners(
    data_dir: Path, runner: subprocess.Popen[bytes], tmp_path: Path, hello_wasm: Path
) -> None:
    # A runner serves `data_dir`; a command in another data dir that passes
    # `--data-dir <data_dir>` to its agent is not the runner's to run.
    elsewhere = Cli(tmp_path / "elsewhere", SPEAR_RUNNER="require")
    given = ("run", str(hello_wasm), "--data-dir", str(data_dir))
    refused = elsewhere(*given)
    assert refused.returncode == 69, refused.stderr
    assert b"no warm runner" in refused.stderr
    # Before the module, it is spear's: the runner runs it.
    proc = elsewhere("run", "--data-dir", str(data_dir), str(hello_wasm), "there")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"Hello, there!\n"


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (["run", "--data-dir", "/a", "m.wasm"], "/a"),
        (["run", "--data-dir=/a", "m.wasm", "--data-dir", "/b"], "/a"),
        (["run", "m.wasm", "--data-dir", "/b"], None),
        (["run", "--warm", "m.wasm", "--data-dir", "/b"], None),
        (["run", "--timeout", "5", "--json", "--data-dir", "/a", "m.wasm"], "/a"),
        (["run", "-e", "K=V", "--data-dir", "/a", "m.wasm"], "/a"),
        (["run", "--", "--data-dir", "/b"], None),
        (["submit", "--wait", "--data-dir", "/a", "m.wasm", "--data-dir", "/b"], "/a"),
        (["tasks", "--json", "--data-dir", "/a"], "/a"),
        (["tasks", "--", "--data-dir", "/a"], None),
        (["run", "--data-dir"], None),
    ],
)
def test_the_runner_reads_only_spears_own_options(argv: list[str], found: str | None) -> None:
    from spear.cli import _runner_client

    assert _runner_client.option(argv, "--data-dir") == found


def test_the_runners_flags_are_the_commands_own() -> None:
    import click
    import typer.main

    from spear.cli import _runner_client
    from spear.cli.app import app

    group = typer.main.get_command(app)
    context = click.Context(group)
    assert isinstance(group, click.Group)
    for name, flags in _runner_client.PASS_THROUGH_FLAGS.items():
        command = group.get_command(context, name)
        assert command is not None
        own = {
            opt
            for p in command.params
            if isinstance(p, click.Option) and (p.is_flag or p.count)
            for opt in (*p.opts, *p.secondary_opts)
        }
        assert own == flags, name
