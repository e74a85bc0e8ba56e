"""`spear serve` as a real daemon process on port 0, and the real CLI against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from conftest import (
    ROOT,
    Cli,
    assert_eventually,
    build_c,
    cli_env,
    fifo_giving,
    one_error_line,
    stop_process,
)
from wat_tasks import exits, hello, ticker

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Daemon:
    """A `spear serve --role spearlet` process on a free loopback port."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spear", "serve", "--role", "spearlet",
             "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(data_dir),
        )  # fmt: skip
        assert self.proc.stdout is not None
        # The first line on stdout is the bound address, printed once the node serves.
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            self.proc.wait(timeout=30)
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            pytest.fail(f"spear serve exited {self.proc.returncode}: {err}")
        self.address = line
        assert (data_dir / "spearlet.addr").read_text().strip() == line

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        return stop_process(self.proc, sig, timeout)


@pytest.fixture
def daemon(data_dir: Path) -> Iterator[Daemon]:
    d = Daemon(data_dir)
    try:
        yield d
    finally:
        d.stop()


def test_cli_against_a_daemon(daemon: Daemon, cli: Cli, tmp_path: Path) -> None:
    module = str(hello(tmp_path))
    # Explicit --node, and SPEAR_NODE.
    proc = cli("submit", "--node", daemon.address, module)
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.decode().strip()
    result = cli("result", "--node", daemon.address, task_id)
    assert (result.returncode, result.stdout) == (0, b"hello\n")
    proc = cli("status", task_id, "--json", SPEAR_NODE=daemon.address)
    status = json.loads(proc.stdout)
    assert status["state"] == "COMPLETED" and status["node"] == "local"
    # Without --node: found through DATA/spearlet.addr (the daemon holds the LevelDB lock).
    [listed] = cli.json("tasks")
    assert listed["id"] == task_id
    logs = cli("logs", task_id)
    assert (logs.stdout, logs.stderr) == (b"hello\n", b"oops\n")
    assert cli.json("logs", task_id) == {"stdout": "hello\n", "stderr": "oops\n", "agent": ""}
    node = cli.json("node")
    assert node["address"] == daemon.address and node["pid"] == daemon.proc.pid
    assert "wasm" in node["runtimes"]


def test_a_pipe_is_put_through_the_daemon(daemon: Daemon, cli: Cli, tmp_path: Path) -> None:
    with fifo_giving(tmp_path / "fifo", b"from a pipe") as fifo:
        put = cli("obj", "put", "piped", str(fifo), "--node", daemon.address)
    assert put.returncode == 0, put.stderr
    assert cli("obj", "get", "piped", "--node", daemon.address).stdout == b"from a pipe"


def test_submit_wait_exits_with_the_task_code(daemon: Daemon, cli: Cli, tmp_path: Path) -> None:
    proc = cli("submit", "--wait", str(exits(tmp_path, 3)))
    assert proc.returncode == 3
    assert proc.stderr == b""  # no progress spinner when stderr is not a terminal
    task = cli.json("status", proc.stdout.decode().strip())
    assert (task["state"], task["exit_code"]) == ("FAILED", 3)
    proc = cli("submit", "--wait", "--json", str(hello(tmp_path)), "--", "-x")
    assert proc.returncode == 0
    done = json.loads(proc.stdout)
    assert done["state"] == "COMPLETED" and done["spec"]["args"] == ["-x"]


def test_follow_logs_and_stop(daemon: Daemon, cli: Cli, tmp_path: Path) -> None:
    task_id = cli("submit", str(ticker(tmp_path, 4, 30))).stdout.decode().strip()
    follow = cli("logs", "-f", task_id, "--stream", "stdout")
    assert follow.returncode == 0 and follow.stdout == b"tick\n" * 4 + b"done\n"

    endless = cli("submit", str(ticker(tmp_path, 1_000_000, 20))).stdout.decode().strip()
    assert_eventually(lambda: cli.json("status", endless)["state"] == "RUNNING")
    stopped = cli.json("stop", endless, "--reason", "enough")
    assert stopped["state"] == "CANCELLED" and stopped["reason"] == "enough"
    assert cli("result", endless).returncode == 130


def test_errors_are_one_line_with_distinct_codes(daemon: Daemon, cli: Cli, tmp_path: Path) -> None:
    proc = cli("status", "0123456789")
    assert proc.returncode == 66 and "no such task" in one_error_line(proc.stderr)
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"junk")
    proc = cli("submit", str(junk))
    assert proc.returncode == 65 and "not a WebAssembly module" in one_error_line(proc.stderr)
    proc = cli("tasks", "--node", "127.0.0.1:1")
    assert proc.returncode == 76 and "cannot reach" in one_error_line(proc.stderr)
    proc = cli("tasks", "--node", "nonsense")
    assert proc.returncode == 64 and "HOST:PORT" in one_error_line(proc.stderr)
    proc = cli("serve", "--listen", "127.0.0.1:notaport")
    assert proc.returncode == 64 and "--listen" in one_error_line(proc.stderr)
    taken = daemon.address.rpartition(":")[2]
    proc = cli("serve", "--listen", f"127.0.0.1:{taken}", "--data-dir", str(tmp_path / "other"))
    assert proc.returncode == 64 and "cannot listen" in one_error_line(proc.stderr)


def test_restart_on_the_same_data_dir_knows_every_task_and_object(
    data_dir: Path, cli: Cli, tmp_path: Path
) -> None:
    first = Daemon(data_dir)
    try:
        ids = [
            cli("submit", "--wait", str(hello(tmp_path))).stdout.decode().strip() for _ in range(3)
        ]
        put = cli("obj", "put", "notes/a", "-", "--json", input=b"kept across restarts")
        assert put.returncode == 0, put.stderr
        version = json.loads(put.stdout)["version"]
    finally:
        assert first.stop() == 0
    assert not (data_dir / "spearlet.addr").exists()
    second = Daemon(data_dir)
    try:
        listed = cli.json("tasks", "--node", second.address)
        assert [t["id"] for t in listed] == ids[::-1]
        assert all(t["state"] == "COMPLETED" for t in listed)
        assert cli("result", ids[0]).stdout == b"hello\n"
        got = cli("obj", "get", "notes/a", "--json")
        assert json.loads(got.stdout)["data"] == "kept across restarts"
        assert json.loads(got.stdout)["version"] == version
        # The artifact uploaded to the first process is still there: nothing is re-sent.
        assert len(list((data_dir / "artifacts").iterdir())) == 1
    finally:
        second.stop()


def test_sigterm_drains_running_tasks(data_dir: Path, cli: Cli, tmp_path: Path) -> None:
    daemon = Daemon(data_dir, "--drain-timeout", "60")
    go = tmp_path / "go"
    try:
        # A task that runs until we say so.
        script = f"while [ ! -e {go} ]; do sleep 0.02; done; echo done"
        proc = cli("submit", "--runtime", "process", "--", "sh", "-c", script)
        task_id = proc.stdout.decode().strip()
        assert_eventually(lambda: cli.json("status", task_id)["state"] == "RUNNING")
        daemon.proc.send_signal(signal.SIGTERM)
        # Draining: the daemon still answers, but takes no new tasks.
        refused = assert_eventually(
            lambda: (p := cli("submit", str(hello(tmp_path)))).returncode == 76 and p
        )
        assert "draining" in one_error_line(refused.stderr)
        assert cli.json("status", task_id)["state"] == "RUNNING"
        go.touch()  # now the task may finish, and the daemon with it
        assert daemon.proc.wait(timeout=60) == 0
    finally:
        daemon.stop(signal.SIGKILL)
    task = cli.json("status", task_id)  # the data dir, in this process: the daemon is gone
    assert task["state"] == "COMPLETED"  # it was allowed to finish
    assert cli("logs", task_id, "--stream", "stdout").stdout == b"done\n"


def test_drain_timeout_marks_unfinished_tasks(data_dir: Path, cli: Cli, tmp_path: Path) -> None:
    daemon = Daemon(data_dir, "--drain-timeout", "0")
    try:
        endless = cli("submit", str(ticker(tmp_path, 1_000_000, 20))).stdout.decode().strip()
        assert_eventually(lambda: cli.json("status", endless)["state"] == "RUNNING")
        assert daemon.stop(signal.SIGINT) == 0
    finally:
        daemon.stop(signal.SIGKILL)
    task = cli.json("status", endless)
    assert task["state"] in ("CANCELLED", "FAILED")
    assert "shut down" in task["reason"]


def test_killed_daemon_leaves_a_stale_address_and_commands_still_work(
    data_dir: Path, cli: Cli, tmp_path: Path
) -> None:
    daemon = Daemon(data_dir)
    done = cli("submit", "--wait", str(hello(tmp_path))).stdout.decode().strip()
    daemon.stop(signal.SIGKILL)
    assert (data_dir / "spearlet.addr").exists()
    [task] = cli.json("tasks")  # falls back to the data dir itself
    assert task["id"] == done
    # Without a daemon, submit runs the task in this process and returns when it ends.
    proc = cli("submit", str(hello(tmp_path)))
    assert proc.returncode == 0
    assert cli.json("status", proc.stdout.decode().strip())["state"] == "COMPLETED"


def test_system_log_in_json(data_dir: Path, cli: Cli, tmp_path: Path) -> None:
    daemon = Daemon(data_dir, "--log-format", "json", "--log-level", "debug")
    try:
        cli("submit", "--wait", str(hello(tmp_path)))
    finally:
        daemon.stop()
    records = [
        json.loads(line)["record"]["message"]
        for line in (data_dir / "logs" / "spear.log").read_text().splitlines()
    ]
    assert any(m.startswith("serving spear.v1.Spearlet on") for m in records)
    assert any(m.startswith("rpc /spear.v1.Spearlet/SubmitTask OK") for m in records)
    assert any(" COMPLETED (exit code 0)" in m for m in records)
    assert any(m.startswith("resources: ") for m in records)


def test_a_batch_is_one_line_of_the_system_log_at_info(data_dir: Path, tmp_path: Path) -> None:
    """A wave of finished tasks is counted in one info line; each completed one is a debug
    line (a failed one stays an info line of its own)."""
    import anyio

    from spear.core.models import FunctionSpec
    from spear.node.client import Client
    from spear.transport.auth import read_owner_token

    daemon = Daemon(data_dir, "--log-format", "json")  # (the default level: info)
    try:

        async def batch() -> None:
            # A guest that touches nothing outside itself, run a few times first: a wave of
            # them then runs right on the event loop, and ends as one TasksFinished.
            trivial = tmp_path / "trivial.wat"
            trivial.write_text('(module (memory (export "memory") 1) (func (export "_start")))')
            spec = FunctionSpec(str(trivial))
            async with Client(daemon.address, token=read_owner_token(data_dir)) as client:
                for _ in range(4):
                    await client.call(spec)
                await client.submit_many([spec] * 20, wait=True)

        anyio.run(batch)
    finally:
        daemon.stop()
    records = [
        json.loads(line)["record"]
        for line in (data_dir / "logs" / "spear.log").read_text().splitlines()
    ]
    counts = [r["message"] for r in records if r["message"].endswith("completed")]
    assert counts and all(m.endswith(" tasks finished, " + m.split()[0] + " completed")
                          for m in counts)  # fmt: skip
    assert 2 <= sum(int(m.split()[0]) for m in counts) <= 20
    per_task = [r for r in records if " COMPLETED (exit code 0)" in r["message"]]
    assert 4 <= len(per_task) <= 24 - sum(int(m.split()[0]) for m in counts)


def test_long_waits_show_progress_on_a_terminal(daemon: Daemon, tmp_path: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "spear", "submit", "--wait", "--node", daemon.address,
             str(ticker(tmp_path, 12, 50))],
            stdout=subprocess.PIPE, stderr=follower, env=cli_env(daemon.data_dir), timeout=60,
        )  # fmt: skip
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    task_id = proc.stdout.decode().strip()
    assert f"task {task_id}".encode() in shown  # the spinner named the task ...
    assert shown.endswith(b"\r\x1b[K")  # ... and cleared its line at the end


def test_submit_a_process_task_to_the_daemon(daemon: Daemon, cli: Cli) -> None:
    proc = cli("submit", "--wait", "--runtime", "process", "--", "sh", "-c", "echo hi; exit 4")
    assert proc.returncode == 4, proc.stderr
    task_id = proc.stdout.decode().strip()
    assert cli("result", task_id).stdout == b"hi\n"
    task = cli.json("status", task_id)
    assert task["spec"]["runtime"] == "process" and task["exit_code"] == 4


def test_without_a_daemon_commands_use_the_data_dir(cli: Cli, tmp_path: Path) -> None:
    # A task run by another process (spear run) on the same data dir: visible, followable,
    # but only its own process can stop it.
    runner = cli.popen("run", str(ticker(tmp_path, 1_000_000, 20)))
    follower = None
    try:
        task_id = assert_eventually(
            lambda: next((t["id"] for t in cli.json("tasks") if t["state"] == "RUNNING"), None)
        )
        proc = cli("stop", task_id)
        assert proc.returncode == 76 and "another process" in one_error_line(proc.stderr)
        follower = cli.popen("logs", "-f", task_id, "--stream", "stdout")
        assert follower.stdout is not None
        assert follower.stdout.read(5) == b"tick\n"  # it follows while the task runs
        runner.send_signal(signal.SIGINT)  # its own process cancels it ...
        assert runner.wait(timeout=60) == 130
        out, _ = follower.communicate(timeout=60)  # ... and the follower ends with it
        assert follower.returncode == 0 and set(out.split(b"\n")) <= {b"tick", b""}
    finally:
        for proc_ in (runner, follower):
            if proc_ is not None and proc_.poll() is None:
                proc_.kill()
            if proc_ is not None:
                proc_.communicate()
    assert cli.json("status", task_id)["state"] == "CANCELLED"
    node = cli.json("node")
    assert node["address"] == "" and node["pid"] != runner.pid


def test_serve_json_announces_itself(data_dir: Path, cli: Cli) -> None:
    proc = cli.popen("serve", "--listen", "127.0.0.1:0", "--json")
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["pid"] == proc.pid and info["node"] == "local"
        assert info["data_dir"] == str(data_dir)
        assert (data_dir / "spearlet.addr").read_text().strip() == info["address"]
        assert cli.json("node", "--node", info["address"])["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_run_goes_through_the_daemon_holding_the_data_dir(
    daemon: Daemon, cli: Cli, conformance_wasm: Path
) -> None:
    """`spear run` on a data dir a daemon holds runs there instead of waiting for the lock."""
    proc = cli("run", str(conformance_wasm), "args", "x", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"argv[2]=x\n" in proc.stdout
    piped = cli("run", str(conformance_wasm), "stdin", input=b"through the daemon\n")
    assert piped.stdout == b"THROUGH THE DAEMON\n"
    assert cli("run", str(conformance_wasm), "exit", "9").returncode == 9
    tasks = cli.json("tasks")
    assert len(tasks) == 3 and tasks[-1]["state"] == "COMPLETED"
    # --stream too: the caller stream goes over the daemon's ExchangeStream call.
    transform = build_c(ROOT / "examples" / "stream_transform" / "transform.c")
    streamed = cli("run", "--stream", str(transform), input=b"one\ntwo", timeout=60)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == b"1: ONE\n2: TWO\n"
    assert len(cli.json("tasks")) == 4  # run by the daemon, in its data dir's records


def test_tokens_decide_who_may_use_the_daemon(daemon: Daemon, cli: Cli, tmp_path: Path) -> None:
    module = str(hello(tmp_path))
    # Someone else (another data dir, so not the owner's token) reaching the daemon.
    stranger = Cli(tmp_path / "elsewhere")
    refused = stranger("tasks", "--node", daemon.address)
    assert refused.returncode == 77
    assert "requires a credential" in one_error_line(refused.stderr)
    # The owner makes a reader token and a submitter token (each printed once).
    reader = cli("token", "create", "bob", "--role", "reader").stdout.decode().strip()
    made = cli.json("token", "create", "carol")
    assert made["role"] == "submitter" and made["token"].startswith("spear_")
    listed = {t["name"]: t for t in cli.json("token", "ls")}
    assert set(listed) == {"owner", "bob", "carol"}
    assert all("token" not in t and "sha256" not in t for t in listed.values())
    as_bob = {"SPEAR_TOKEN": reader}
    assert stranger("tasks", "--node", daemon.address, **as_bob).returncode == 0
    denied = stranger("submit", "--node", daemon.address, module, **as_bob)
    assert denied.returncode == 77 and "needs submitter" in one_error_line(denied.stderr)
    as_carol = {"SPEAR_TOKEN": made["token"]}
    ran = stranger("submit", "--wait", "--node", daemon.address, module, **as_carol)
    assert ran.returncode == 0, ran.stderr
    # Revoked: refused within the second the node takes to see it.
    gone = cli("token", "rm", "bob")
    assert gone.returncode == 0 and b"revoked" in gone.stdout
    assert_eventually(
        lambda: stranger("tasks", "--node", daemon.address, **as_bob).returncode == 77
    )
    assert cli("token", "rm", "bob").returncode == 66


def test_a_namespace_token_and_its_quota_on_the_command_line(
    daemon: Daemon, cli: Cli, tmp_path: Path
) -> None:
    slow = str(ticker(tmp_path, 400, 50))
    made = cli.json("token", "create", "alice", "--namespace", "team-a")
    assert made["namespace"] == "team-a"
    listed = {t["name"]: t for t in cli.json("token", "ls")}
    assert listed["alice"]["namespace"] == "team-a" and listed["owner"]["namespace"] is None
    assert cli("quota", "set", "team-a", "--tasks", "1").returncode == 0
    assert cli.json("quota", "ls") == [
        {"namespace": "team-a", "tasks": 1, "object_bytes": None, "log_bytes": None}
    ]
    alice = Cli(tmp_path / "elsewhere")
    as_alice = {"SPEAR_TOKEN": made["token"]}
    first = alice("submit", "--node", daemon.address, slow, **as_alice)
    assert first.returncode == 0, first.stderr
    over = alice("submit", "--node", daemon.address, slow, **as_alice)
    assert over.returncode == 71
    assert "quota of 1 unfinished tasks" in one_error_line(over.stderr)
    # The owner, in the default namespace, does not see alice's task; named, does.
    assert cli.json("tasks") == []
    task_id = first.stdout.decode().strip()
    named = cli("tasks", "--json", SPEAR_NAMESPACE="team-a")
    assert [t["id"] for t in json.loads(named.stdout)] == [task_id]
    # Nobody but the node writes results/: one line, exit 77.
    forged = tmp_path / "forged.txt"
    forged.write_bytes(b"forged")
    refused = cli("obj", "put", f"results/{task_id}", str(forged))
    assert refused.returncode == 77
    assert "written only by the node" in one_error_line(refused.stderr)
    assert alice("stop", "--node", daemon.address, task_id, **as_alice).returncode == 0
