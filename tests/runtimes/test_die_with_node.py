"""A process task dies with the node that started it (runtimes/process/die_with_node.py):
a node killed outright leaves no task running on as an orphan."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spear.runtimes.process import die_with_node

# Run in a process of its own that adopts orphans (PR_SET_CHILD_SUBREAPER), so that what
# becomes of the task after its node's SIGKILL is seen here, not by whatever init this
# machine has (which may reap or kill orphans on its own). Prints {"died_after_s": ...}
# or {"alive_after_s": ...}; every wait is bounded.
# It also moves into a cgroup of its own first: a node that starts cleans up the cgroups of
# dead nodes beside its own (runtimes/process/cgroups.py), and another test's node doing
# so meanwhile would kill the orphan for it.
HARNESS = r"""
import ctypes, json, os, pathlib, secrets, signal, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
pidfile, argv = sys.argv[1], sys.argv[2:]
mounts = [line.split() for line in open("/proc/self/mounts")]
root = next((m[1] for m in mounts if m[2] == "cgroup2"), None)
own = open("/proc/self/cgroup").read().split("0::", 1)[-1].split("\n")[0].rstrip("/")
alone = None
if root is not None:  # (no cgroup v2 here: the node makes none either)
    alone = pathlib.Path(root + own) / f"die-with-node-{secrets.token_hex(4)}"
    try:
        alone.mkdir()
        (alone / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        alone = None  # (not ours to write)
print(json.dumps({"cgroup": str(alone) if alone else None}))
node = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 60
while not os.path.exists(pidfile):
    assert time.monotonic() < deadline and node.poll() is None, "the task never started"
    time.sleep(0.02)
task = int(open(pidfile).read())
os.kill(node.pid, signal.SIGKILL)
node.wait()
killed_at = time.monotonic()
while time.monotonic() - killed_at < 10:
    pid, _ = os.waitpid(task, os.WNOHANG)  # (adopted: a child of this process now)
    if pid == task:
        print(json.dumps({"died_after_s": time.monotonic() - killed_at}))
        break
    time.sleep(0.02)
else:
    os.killpg(task, signal.SIGKILL)
    os.waitpid(task, 0)
    print(json.dumps({"alive_after_s": 10}))
"""


@pytest.mark.parametrize("limited", [False, True], ids=["vfork", "with-limits"])
def test_a_task_dies_with_a_node_killed_outright(tmp_path: Path, limited: bool) -> None:
    pidfile = tmp_path / "pid"
    limits = ["--open-files", "256"] if limited else []
    script = f"echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; exec sleep 3600"
    node = [
        sys.executable, "-m", "spear", "run", "--data-dir", str(tmp_path / "home"),
        "--runtime", "process", *limits, "--", "/bin/sh", "-c", script,
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, str(pidfile), *node],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SPEAR_RUNNER_IDLE_S": "0"},  # (the node is that process)
    )
    assert done.returncode == 0, done.stderr
    made, outcome = (json.loads(line) for line in done.stdout.splitlines())
    if made["cgroup"] is not None:  # the harness's own, and the dead node's in it
        for cgroup in sorted(Path(made["cgroup"]).glob("**/"), reverse=True):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
    assert "died_after_s" in outcome, done.stdout


def test_only_programs_the_kernel_runs_itself_are_wrapped(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\ntrue\n")
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01 not a program")
    wrapped = die_with_node.wrapped(["/bin/true", "x"])
    assert wrapped[-2:] == ["/bin/true", "x"] and "--pdeathsig" in wrapped
    assert "--pdeathsig" in die_with_node.wrapped([str(script)])
    assert die_with_node.wrapped([str(junk)]) == [str(junk)]
    assert die_with_node.wrapped([str(tmp_path / "missing")]) == [str(tmp_path / "missing")]
