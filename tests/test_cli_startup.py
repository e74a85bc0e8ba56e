"""A light command imports only what it needs: start-up time is most of a short command.

Each case runs the real `spear` (python -X importtime -m spear ...) and reads the modules
the process imported from the interpreter's own report.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from conftest import cli_env
from wat_tasks import hello

if TYPE_CHECKING:
    from pathlib import Path

# What a start can do without: the gRPC stack (only with a daemon to talk to), the system
# log's library (only once a message is written), rich (typer's, for help we do not use).
REMOTE = ("grpc", "grpclib", "google.protobuf", "h2")
NEVER = ("loguru", "rich", *REMOTE)
NODE = ("asyncio", "anyio", "plyvel", "spear.node.assembly")
WASM = ("wasmtime", "spear.runtimes.wasm.agent")
PROCESS = ("spear.runtimes.process.agent",)


def imported(data_dir: Path, *args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "spear", *args],
        capture_output=True,
        env=cli_env(data_dir),
        timeout=60,
    )
    report = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("import time:")]
    rest = [ln for ln in proc.stderr.decode().splitlines() if not ln.startswith("import time:")]
    assert proc.returncode in (0, 66), rest
    return {ln.rsplit("|", 1)[1].strip() for ln in report[1:]}


def _missing(modules: set[str], names: tuple[str, ...]) -> set[str]:
    return {m for m in modules if any(m == n or m.startswith(n + ".") for n in names)}


@pytest.mark.parametrize(
    "args",
    [("--version",), ("-h",), ("tasks", "--help"), ("obj", "get", "--help"), ("run", "-h")],
)
def test_help_and_version_start_no_node(data_dir: Path, args: tuple[str, ...]) -> None:
    modules = imported(data_dir, *args)
    # (typer escapes option help with rich when it is installed: only help pays that)
    assert _missing(modules, ("loguru", *REMOTE, *NODE, *WASM, *PROCESS)) == set()


@pytest.mark.parametrize(
    "args", [("tasks",), ("status", "0123456789ab"), ("obj", "get", "nokey"), ("node",)]
)
def test_reading_the_data_dir_needs_no_runtime(data_dir: Path, args: tuple[str, ...]) -> None:
    modules = imported(data_dir, *args)
    assert "plyvel" in modules  # (it did open the data dir)
    assert _missing(modules, (*NEVER, *WASM, *PROCESS)) == set()


def test_running_a_module_needs_only_its_runtime(data_dir: Path, tmp_path: Path) -> None:
    modules = imported(data_dir, "run", str(hello(tmp_path)))
    assert "wasmtime" in modules
    assert _missing(modules, (*NEVER, *PROCESS)) == set()


def test_running_a_program_needs_no_wasmtime(data_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text("print('hi')\n")
    modules = imported(data_dir, "run", str(script))
    assert "spear.runtimes.process.agent" in modules
    assert _missing(modules, (*NEVER, *WASM)) == set()
