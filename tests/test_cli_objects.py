"""`spear obj ...` and `spear run --stream`, through the real executable."""

from __future__ import annotations

import json
import os
import struct
from typing import TYPE_CHECKING

import pytest
from conftest import ROOT, build_c, fifo_giving, one_error_line

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Cli


@pytest.fixture(scope="session")
def transform_wasm() -> Path:
    return build_c(ROOT / "examples" / "stream_transform" / "transform.c")


def test_put_get_ls_rm(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "value.bin"
    payload = os.urandom(3 * 1024**2)
    source.write_bytes(payload)
    put = cli.json("obj", "put", "data/big", str(source))
    assert put["size"] == len(payload) and put["version"] > 0
    proc = cli("obj", "put", "data/small", "-", input=b"from stdin")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out.bin"
    assert cli("obj", "get", "data/big", "-o", str(out)).returncode == 0
    assert out.read_bytes() == payload
    assert cli("obj", "get", "data/small").stdout == b"from stdin"
    listed = cli.json("obj", "ls", "data/")
    assert [(o["key"], o["size"], o["refs"], o["pinned"]) for o in listed] == [
        ("data/big", len(payload), 0, False),
        ("data/small", 10, 0, False),
    ]
    assert cli("obj", "rm", "data/small").returncode == 0
    assert [o["key"] for o in cli.json("obj", "ls")] == ["data/big"]


def test_if_version_is_a_conditional_put(cli: Cli) -> None:
    proc = cli("obj", "put", "k", "-", "--json", input=b"one")
    first = json.loads(proc.stdout)
    proc = cli("obj", "put", "k", "-", "--if-version", str(first["version"]), input=b"two")
    assert proc.returncode == 0, proc.stderr
    proc = cli("obj", "put", "k", "-", "--if-version", str(first["version"]), input=b"three")
    assert proc.returncode == 69
    assert "version" in one_error_line(proc.stderr)
    assert cli("obj", "get", "k").stdout == b"two"
    proc = cli("obj", "put", "k", "-", "--if-version", "0", input=b"new")
    assert proc.returncode == 69  # 0: only if absent


def test_concurrent_processes_never_both_win(cli: Cli) -> None:
    base = json.loads(cli("obj", "put", "race", "-", "--json", input=b"0").stdout)["version"]
    procs = [
        cli.popen("obj", "put", "race", "-", "--if-version", str(base), stdin=-1) for _ in range(6)
    ]
    for i, p in enumerate(procs):
        assert p.stdin is not None
        p.stdin.write(str(i).encode())
        p.stdin.close()
    codes = [p.wait(timeout=60) for p in procs]
    for p in procs:
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()
        p.stderr.close()
    assert sorted(codes) == [0, 69, 69, 69, 69, 69]
    winner = codes.index(0)
    assert cli("obj", "get", "race").stdout == str(winner).encode()


def test_pin_unpin_and_gc(cli: Cli) -> None:
    cli("obj", "put", "keep", "-", input=b"k")
    cli("obj", "put", "drop", "-", input=b"d")
    assert cli.json("obj", "pin", "keep")["pinned"] is True
    proc = cli("obj", "rm", "keep")
    assert proc.returncode == 69 and "pinned" in one_error_line(proc.stderr)
    assert cli.json("obj", "gc", "--grace", "0") == {"collected": ["drop"]}
    assert cli.json("obj", "unpin", "keep")["pinned"] is False
    assert cli.json("obj", "gc", "--grace", "0") == {"collected": ["keep"]}
    cli("obj", "put", "held", "-", input=b"h")
    cli("obj", "ref", "held")
    assert cli("obj", "rm", "held").returncode == 69
    assert cli.json("obj", "rm", "--force", "held") == {"key": "held", "deleted": True}
    assert cli("obj", "get", "held").returncode == 66


def test_unref_says_what_it_did(cli: Cli) -> None:
    cli("obj", "put", "shared", "-", input=b"s")
    assert cli.json("obj", "ref", "shared")["refs"] == 1
    assert cli.json("obj", "ref", "shared")["refs"] == 2
    one = cli("obj", "unref", "shared")
    assert one.returncode == 0 and b"1 refs" in one.stdout
    last = cli("obj", "unref", "shared")
    assert last.stdout == b"shared: last reference removed; deleted\n"
    gone = cli("obj", "get", "shared")
    assert gone.returncode == 66


def test_a_dir_that_is_a_file_is_one_clear_line(cli: Cli, tmp_path: Path, hello_wasm: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    proc = cli("run", "--dir", str(a_file), str(hello_wasm))
    assert proc.returncode == 64
    assert "is not a directory" in one_error_line(proc.stderr)


def test_a_pipe_or_a_device_is_read_through(cli: Cli, tmp_path: Path) -> None:
    # (what `spear obj put KEY <(command)` hands over: a pipe's /dev/fd path)
    with fifo_giving(tmp_path / "fifo", b"from a pipe") as fifo:
        put = cli("obj", "put", "piped", str(fifo))
    assert put.returncode == 0, put.stderr
    assert cli("obj", "get", "piped").stdout == b"from a pipe"
    put = cli("obj", "put", "empty", "/dev/null")
    assert put.returncode == 0, put.stderr
    assert cli("obj", "get", "empty").stdout == b""


def test_bad_input_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    proc = cli("obj", "get", "nope")
    assert proc.returncode == 66 and "no such object" in one_error_line(proc.stderr)
    proc = cli("obj", "put", "k", str(tmp_path / "missing"))
    assert proc.returncode == 66
    one_error_line(proc.stderr)
    proc = cli("obj", "put", "x" * 2000, "-", input=b"v")
    assert proc.returncode == 64 and "key" in one_error_line(proc.stderr)
    proc = cli("obj", "put", "k", "-", "--if-version", "abc", input=b"v")
    assert proc.returncode == 2
    proc = cli("obj", "put", "k", str(tmp_path))
    assert proc.returncode == 64 and "is a directory" in one_error_line(proc.stderr)
    assert cli("obj", "put", "k", "-", input=b"kept").returncode == 0
    nowhere = tmp_path / "missing" / "out.bin"
    proc = cli("obj", "get", "k", "-o", str(nowhere))
    assert proc.returncode == 74 and str(nowhere) in one_error_line(proc.stderr)


def test_run_stream_lines(cli: Cli, transform_wasm: Path) -> None:
    proc = cli("run", "--stream", str(transform_wasm), input=b"hello\nworld\nlast")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"1: HELLO\n2: WORLD\n3: LAST\n"


def test_run_stream_length_framing(cli: Cli, transform_wasm: Path) -> None:
    messages = [b"a\nb", b"", b"\x00bin"]
    data = b"".join(struct.pack(">I", len(m)) + m for m in messages)
    proc = cli("run", "--stream", "--framing", "length", str(transform_wasm), input=data)
    assert proc.returncode == 0, proc.stderr
    out, got = proc.stdout, []
    while out:
        (n,) = struct.unpack(">I", out[:4])
        got.append(out[4 : 4 + n])
        out = out[4 + n :]
    assert got == [b"1: A\nB", b"2: ", b"3: \x00BIN"]
    proc = cli("run", "--stream", "--framing", "json", str(transform_wasm))
    assert proc.returncode == 2  # the parser's: a usage error naming lines and length
    assert "'lines', 'length'" in one_error_line(proc.stderr)


def test_a_runs_result_is_an_object(cli: Cli, hello_wasm: Path) -> None:
    proc = cli("run", str(hello_wasm), "objects")
    assert proc.returncode == 0, proc.stderr
    task_id = cli.json("tasks")[0]["id"]
    assert cli("obj", "get", f"results/{task_id}").stdout == b"Hello, objects!\n"


def test_control_characters_in_keys_are_printed_escaped(cli: Cli) -> None:
    key = "red\x1b[31mtext\nnext"
    assert cli("obj", "put", key, "-", input=b"v").returncode == 0
    listed = cli("obj", "ls")
    assert listed.returncode == 0
    assert b"\x1b" not in listed.stdout and listed.stdout.count(b"\n") == 1
    assert listed.stdout.startswith(b"red\\x1b[31mtext\\nnext version 1 1 bytes")
    # The key itself is unchanged: JSON has it exactly, and a get by it finds it.
    [info] = cli.json("obj", "ls")
    assert info["key"] == key
    assert cli("obj", "get", key).stdout == b"v"
