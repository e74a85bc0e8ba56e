"""Children on a daemon hold slots of their namespace's task quota, like any task
submitted there: a namespace at its quota cannot grow past it through subtasks."""

from __future__ import annotations

import errno
import json
from typing import TYPE_CHECKING

from conftest import ROOT, Cli, build_c
from test_cli_client import daemon  # noqa: F401 - the fixture
from wat_tasks import hello

from spear.runtimes.wasm.hostcalls.abi import wasi_errno

if TYPE_CHECKING:
    from pathlib import Path

    from test_cli_client import Daemon


def test_children_count_against_the_namespace_quota(
    daemon: Daemon,  # noqa: F811 - the fixture
    cli: Cli,
    tmp_path: Path,
) -> None:
    parent = str(build_c(ROOT / "tests" / "wasm" / "subtask_agent.c"))
    child = json.dumps({"artifact": str(hello(tmp_path))})
    alice = Cli(tmp_path / "elsewhere", SPEAR_NODE=daemon.address)
    token = cli.json("token", "create", "alice", "--namespace", "team-a")["token"]

    def run_parent() -> str:
        ran = alice("submit", "--wait", parent, "spawn", child, SPEAR_TOKEN=token)
        out = alice("logs", ran.stdout.decode().split()[0], SPEAR_TOKEN=token)
        return out.stdout.decode().strip()

    # Room for two: the parent and its child both run.
    assert cli("quota", "set", "team-a", "--tasks", "2").returncode == 0
    ended = json.loads(run_parent())
    assert ended["state"] == "COMPLETED" and ended["output"] == "hello\n"
    # Room for one: the parent holds it, its child is refused (EMFILE), not run.
    assert cli("quota", "set", "team-a", "--tasks", "1").returncode == 0
    assert run_parent() == f"ERR {wasi_errno(errno.EMFILE)}"
    # The default namespace has no quota: the owner's parent still starts its child.
    mine = cli("submit", "--wait", parent, "spawn", child)
    assert mine.returncode == 0, mine.stderr
    logs = cli("logs", mine.stdout.decode().split()[0]).stdout.decode()
    assert json.loads(logs)["state"] == "COMPLETED"
