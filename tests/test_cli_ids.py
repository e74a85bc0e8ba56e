"""A unique prefix of a task id is taken wherever an id is (as docker and git take them)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from conftest import Cli, one_error_line
from test_cli_client import Daemon
from wat_tasks import hello

if TYPE_CHECKING:
    from pathlib import Path


def _two_tasks(cli: Cli, tmp_path: Path) -> tuple[str, str, str]:
    """Two finished tasks' ids and the longest prefix they share."""
    module = str(hello(tmp_path))
    ids = []
    for _ in range(2):
        proc = cli("submit", module)
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.decode().strip())
    common = os.path.commonprefix(ids)
    assert common, ids  # created within the same second: they share the time digits
    return ids[0], ids[1], common


def _check_prefixes(cli: Cli, first: str, second: str, common: str, *node: str) -> None:
    for task_id in (first, second):
        unique = task_id[: len(common) + 1]
        assert cli.json("status", unique, *node)["id"] == task_id
    stop = cli("stop", first[: len(common) + 1], *node)  # finished: stop says so
    assert stop.returncode == 0 and stop.stdout.decode().startswith(first), stop.stderr
    result = cli("result", second[: len(common) + 1], *node)
    assert (result.returncode, result.stdout) == (0, b"hello\n")
    logs = cli("logs", second[: len(common) + 1], "--stream", "stdout", *node)
    assert logs.stdout == b"hello\n"
    ambiguous = cli("status", common, *node)
    assert ambiguous.returncode == 64
    line = one_error_line(ambiguous.stderr)
    assert f"prefix {common} is ambiguous" in line and first in line and second in line
    missing = cli("status", "fff", *node)
    assert missing.returncode == 66
    assert "no such task: fff" in one_error_line(missing.stderr)


def test_prefixes_in_this_process(cli: Cli, tmp_path: Path) -> None:
    first, second, common = _two_tasks(cli, tmp_path)
    _check_prefixes(cli, first, second, common)


def test_prefixes_through_a_daemon(cli: Cli, data_dir: Path, tmp_path: Path) -> None:
    first, second, common = _two_tasks(cli, tmp_path)
    daemon = Daemon(data_dir)  # resolves on its side: spear.Client gets prefixes too
    try:
        _check_prefixes(cli, first, second, common, "--node", daemon.address)
    finally:
        daemon.stop()
