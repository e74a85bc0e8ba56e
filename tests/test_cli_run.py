"""`spear run` as a user runs it: the real executable in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from conftest import Cli, assert_eventually, build_wat, one_error_line

if TYPE_CHECKING:
    from pathlib import Path


def test_hello_runs_and_is_recorded(cli: Cli, hello_wasm: Path) -> None:
    proc = cli("run", str(hello_wasm), "world", "x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"Hello, world!\narg[2] = x\n"
    [task] = cli.json("tasks")
    assert task["state"] == "COMPLETED"
    assert task["exit_code"] == 0
    assert [h[0] for h in task["history"]] == ["PENDING", "RUNNING", "COMPLETED"]
    assert cli("logs", task["id"], "--stream", "stdout").stdout == proc.stdout
    status = cli.json("status", task["id"])
    assert status["spec"]["args"] == ["world", "x"]


def test_env_and_dir_flags(cli: Cli, hello_wasm: Path, tmp_path: Path) -> None:
    data = tmp_path / "guest-data"
    data.mkdir()
    proc = cli("run", "--env", "GREETING=Hi", "--dir", f"{data}::/data", str(hello_wasm), "bob")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"Hi, bob!\n")
    assert (data / "visits.txt").read_text().startswith("bob visited at ")


def test_labels_are_kept_with_the_task(cli: Cli, hello_wasm: Path) -> None:
    """`spear run --label` (docs/toolkit.md: `--label mcp.allow=time/*` narrows the MCP tools
    a task may call): the labels are the task's, as `spear submit --label` makes them."""
    proc = cli("run", "--label", "mcp.allow=time/*", "--label", "team=a", str(hello_wasm))
    assert proc.returncode == 0, proc.stderr
    [task] = cli.json("tasks")
    labels = cli.json("status", task["id"])["spec"]["labels"]
    assert labels == [["mcp.allow", "time/*"], ["team", "a"]]
    proc = cli("run", "--label", "no-equals-sign", str(hello_wasm))
    assert proc.returncode == 64 and b"NAME=VALUE" in proc.stderr


def test_separator_before_guest_flags(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli("run", str(conformance_wasm), "--", "args", "--flag", "-x")
    assert proc.returncode == 0, proc.stderr
    assert b"argv[2]=--flag\nargv[3]=-x\n" in proc.stdout


def test_one_of_spears_options_after_the_module_is_the_guests_and_said_so(
    cli: Cli, conformance_wasm: Path
) -> None:
    proc = cli("run", str(conformance_wasm), "args", "--json", "--env=A=1")
    assert proc.returncode == 0, proc.stderr
    assert b"argv[2]=--json\nargv[3]=--env=A=1\n" in proc.stdout  # the guest's, as documented
    (line,) = proc.stderr.decode().splitlines()
    assert line.startswith("spear: warning: --json after the module is the agent's argument")
    quiet = cli("run", str(conformance_wasm), "--", "args", "--json")  # said to be its
    assert quiet.returncode == 0 and quiet.stderr == b"", quiet.stderr
    theirs = cli("run", str(conformance_wasm), "args", "--flag")  # not one of spear's
    assert theirs.returncode == 0 and theirs.stderr == b"", theirs.stderr
    submitted = cli("submit", "--wait", str(conformance_wasm), "args", "--node", "x")
    assert submitted.returncode == 0 and b"warning: --node after the module" in submitted.stderr


def test_guest_exit_code_is_spears(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli("run", str(conformance_wasm), "exit", "42")
    assert proc.returncode == 42
    assert proc.stderr == b""
    [task] = cli.json("tasks")
    assert (task["state"], task["exit_code"]) == ("FAILED", 42)


def test_trap_fails_task(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli("run", str(conformance_wasm), "trap")
    assert proc.returncode == 134
    assert b"trap" in proc.stderr and b"Traceback" not in proc.stderr
    [task] = cli.json("tasks", "--state", "failed")
    assert task["reason"].startswith("trap: ")


def test_timeout_stops_infinite_loop(cli: Cli, conformance_wasm: Path) -> None:
    start = time.monotonic()
    proc = cli("run", "--timeout", "0.5", str(conformance_wasm), "loop")
    assert proc.returncode == 124
    assert time.monotonic() - start < 30
    [task] = cli.json("tasks")
    assert (task["state"], task["reason"]) == ("FAILED", "timeout")


def test_fuel_limit(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli("run", "--fuel", "100000", str(conformance_wasm), "loop")
    assert proc.returncode == 134
    [task] = cli.json("tasks")
    assert task["reason"] == "fuel exhausted"


def test_memory_limit(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli("run", "--memory", "8M", str(conformance_wasm), "grow")
    assert proc.returncode == 0, proc.stderr
    mib = int(proc.stdout.split(b"after ")[1].split()[0])
    assert 0 < mib < 8


def test_stdin_is_the_callers(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli("run", str(conformance_wasm), "stdin", input=b"shout this\n")
    assert proc.stdout == b"SHOUT THIS\n"


def test_output_streams_while_running(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli.popen("run", str(conformance_wasm), "stream", "40")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == b"line 0\n"
        assert proc.poll() is None  # the first line arrived long before the end
    finally:
        proc.kill()
        proc.communicate()


def test_bad_inputs_are_one_line(cli: Cli, tmp_path: Path) -> None:
    missing = cli("run", str(tmp_path / "nope.wasm"))
    assert missing.returncode == 66
    assert "no such file" in one_error_line(missing.stderr)

    text = tmp_path / "notes.txt"
    text.write_text("not wasm")
    bad = cli("run", str(text))
    assert bad.returncode == 65
    assert "not a WebAssembly module" in one_error_line(bad.stderr)

    garbage = tmp_path / "garbage.wasm"
    garbage.write_bytes(b"\x00asm\x01\x00\x00\x00\xff\xff\xff")
    corrupt = cli("run", str(garbage))
    assert corrupt.returncode == 65
    one_error_line(corrupt.stderr)

    no_start = build_wat('(module (func (export "main")))', tmp_path, "nostart")
    proc = cli("run", str(no_start))
    assert proc.returncode == 65
    assert "_start" in one_error_line(proc.stderr)

    unknown_import = build_wat(
        '(module (import "env" "nope" (func)) (func (export "_start")))', tmp_path, "imp"
    )
    proc = cli("run", str(unknown_import))
    assert proc.returncode == 65
    assert "cannot be linked" in one_error_line(proc.stderr)

    flag = cli("run", "--bogus", str(no_start))
    assert flag.returncode == 2
    assert "--bogus" in one_error_line(flag.stderr)

    env = cli("run", "--env", "NOEQUALS", str(no_start))
    assert env.returncode == 64
    one_error_line(env.stderr)

    nodir = cli("run", "--dir", str(tmp_path / "absent"), str(no_start))
    assert nodir.returncode == 66
    one_error_line(nodir.stderr)

    # Every failed attempt is still a task, each with its reason; none was lost.
    failed = cli.json("tasks")
    assert len(failed) == 6 and all(t["state"] == "FAILED" and t["reason"] for t in failed)


def test_unwritable_data_dir(tmp_path: Path, hello_wasm: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cli = Cli(blocker / "sub")
    proc = cli("run", str(hello_wasm))
    assert proc.returncode == 73
    assert "not usable" in one_error_line(proc.stderr)


def test_unknown_task(cli: Cli) -> None:
    proc = cli("status", "0123")
    assert proc.returncode == 66
    one_error_line(proc.stderr)


def test_kill_9_mid_run_keeps_the_store(cli: Cli, hello_wasm: Path, conformance_wasm: Path) -> None:
    assert cli("run", str(hello_wasm)).returncode == 0
    proc = cli.popen("run", str(conformance_wasm), "loop")
    try:
        task = assert_eventually(
            lambda: next((t for t in cli.json("tasks") if t["state"] == "RUNNING"), None)
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    tasks = {t["id"]: t for t in cli.json("tasks")}
    assert len(tasks) == 2
    assert tasks[task["id"]]["state"] == "FAILED"
    assert tasks[task["id"]]["reason"].startswith("lost")
    assert any(t["state"] == "COMPLETED" for t in tasks.values())


def test_sigint_cancels_the_task(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli.popen("run", str(conformance_wasm), "loop")
    try:
        assert_eventually(lambda: any(t["state"] == "RUNNING" for t in cli.json("tasks")))
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        assert proc.returncode == 130
    finally:
        proc.kill()
        proc.communicate()
    [task] = cli.json("tasks")
    assert task["state"] == "CANCELLED"


def test_two_runs_share_a_data_dir(cli: Cli, conformance_wasm: Path) -> None:
    procs = [cli.popen("run", str(conformance_wasm), "stream", "10") for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    tasks = cli.json("tasks")
    assert [t["state"] for t in tasks] == ["COMPLETED", "COMPLETED"]


def test_wat_module_runs(cli: Cli, tmp_path: Path) -> None:
    wat = tmp_path / "exit7.wat"
    wat.write_text(
        '(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'
        ' (func (export "_start") (call $exit (i32.const 7))) (memory (export "memory") 1))'
    )
    assert cli("run", str(wat)).returncode == 7


def test_version_and_help(cli: Cli) -> None:
    proc = cli("version", "--json")
    assert proc.returncode == 0 and b"wasmtime" in proc.stdout
    assert (
        subprocess.run(
            [sys.executable, "-m", "spear", "--help"], capture_output=True, env={**os.environ}
        ).returncode
        == 0
    )


def test_bytes_that_are_not_utf8_are_refused_in_one_line(
    cli: Cli, hello_wasm: Path, data_dir: Path, tmp_path: Path
) -> None:
    from conftest import cli_env

    odd_path = tmp_path / os.fsdecode(b"\xff.wasm")
    odd_path.write_bytes(hello_wasm.read_bytes())
    spear = [sys.executable, "-m", "spear", "run"]
    cases = {
        "argument 1": [*spear, os.fsencode(hello_wasm), b"\xff"],
        "environment variable 'A'": [*spear, b"-e", b"A=\xff", os.fsencode(hello_wasm)],
        "the module path": [*spear, os.fsencode(odd_path)],
    }
    for what, argv in cases.items():
        proc = subprocess.run(argv, capture_output=True, env=cli_env(data_dir), timeout=60)
        assert proc.returncode == 64, proc.stderr
        line = one_error_line(proc.stderr)  # one line: no traceback
        assert f"{what} is not valid UTF-8" in line and "\\udcff" in line
    # Nothing was recorded, and the data dir still serves the next run.
    assert cli.json("tasks") == []
    assert cli("run", str(hello_wasm), "world").returncode == 0


def test_a_run_ends_without_interpreter_teardown_yet_as_a_normal_exit(
    cli: Cli, conformance_wasm: Path, data_dir: Path
) -> None:
    # `spear run` ends with os._exit after the atexit handlers and a flush (no teardown of
    # the interpreter under daemon threads still inside wasmtime): what a process ending
    # normally promises still holds: its handlers run, its output is all there, its code.
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', flush=False))\n"
        "sys.stdout.write('written before the command\\n')\n"
        f"sys.argv = ['spear', 'run', {str(conformance_wasm)!r}, 'exit', '42']\n"
        "from spear.cli import entry\n"
        "entry()\n"
        "print('not reached')\n"
    )
    from conftest import cli_env

    env = cli_env(data_dir, SPEAR_RUNNER_IDLE_S="0")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120, env=env)
    assert proc.returncode == 42, proc.stderr
    assert proc.stdout == b"written before the command\natexit ran\n"
