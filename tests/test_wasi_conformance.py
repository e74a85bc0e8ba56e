"""WASI preview 1 behaviour of the wasm worker agent: args, env, files, clocks, exit codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Cli


def test_args_start_with_the_module_name(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli("run", str(conformance_wasm), "args", "two words", "ünïcode")
    assert proc.returncode == 0
    lines = proc.stdout.decode().splitlines()
    assert lines == [
        "argc=4",
        f"argv[0]={conformance_wasm.name}",
        "argv[1]=args",
        "argv[2]=two words",
        "argv[3]=ünïcode",
    ]


def test_environment_is_only_what_was_given(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli("run", "-e", "A=1", "-e", "B=x=y", "-e", "EMPTY=", str(conformance_wasm), "env")
    assert proc.returncode == 0
    assert proc.stdout.decode().splitlines() == ["A=1", "B=x=y", "EMPTY="]


def test_preopened_directory_file_io(cli: Cli, conformance_wasm: Path, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "in.txt").write_text("from the host\n")
    proc = cli("run", "--dir", f"{host}::/data", str(conformance_wasm), "files", "/data")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert b"in.txt: from the host\n" in proc.stdout and b"files ok" in proc.stdout
    assert (host / "sub" / "moved.txt").read_text() == "written by the guest\n"


def test_dir_without_guest_path_maps_to_itself(
    cli: Cli, conformance_wasm: Path, tmp_path: Path
) -> None:
    host = tmp_path / "same"
    host.mkdir()
    (host / "in.txt").write_text("same path\n")
    proc = cli("run", "--dir", str(host), str(conformance_wasm), "files", str(host))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert b"files ok" in proc.stdout


def test_no_preopen_means_no_files(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli("run", str(conformance_wasm), "files", "/data")
    assert proc.returncode == 10


def test_clocks(cli: Cli, conformance_wasm: Path) -> None:
    proc = cli("run", str(conformance_wasm), "clocks")
    assert proc.returncode == 0, proc.returncode
    assert proc.stdout == b"clocks ok\n"


def test_exit_codes_pass_through(cli: Cli, conformance_wasm: Path) -> None:
    for code in (0, 1, 3, 99, 125):
        assert cli("run", str(conformance_wasm), "exit", str(code)).returncode == code


def test_wasi_testsuite_adapter(conformance_wasm: Path, tmp_path: Path) -> None:
    """The adapter the public WASI test suite's runner calls behaves as the runner expects."""
    import subprocess
    import sys

    from conftest import ROOT

    adapter = [sys.executable, str(ROOT / "tools" / "wasi_testsuite_adapter.py")]
    version = subprocess.run([*adapter, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("spear ")
    host = tmp_path / "fixture"
    host.mkdir()
    (host / "in.txt").write_text("adapter\n")
    run = subprocess.run(
        [
            *adapter,
            "--test-file",
            str(conformance_wasm),
            "--dir",
            str(host),
            "--env",
            "K=V",
            "--arg",
            "files",
            "--arg",
            str(host),
        ],
        capture_output=True,
    )
    assert run.returncode == 0, run.stderr
    assert b"in.txt: adapter" in run.stdout
    code = subprocess.run(
        [*adapter, "--test-file", str(conformance_wasm), "--arg", "exit", "--arg", "17"],
        capture_output=True,
    )
    assert code.returncode == 17
