"""Fixtures of the toolkit's tests: MCP servers (the reference `mcp-server-time` from
PyPI, and our test server over stdio and streamable HTTP)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

HERE = Path(__file__).resolve().parent
TEST_SERVER = HERE / "mcp_test_server.py"


@pytest.fixture(scope="session")
def time_server() -> list[str]:
    """The reference MCP time server (PyPI `mcp-server-time`, nobody here wrote it)."""
    exe = shutil.which("mcp-server-time")
    if exe is None:
        pytest.fail("mcp-server-time missing: pip install '.[toolkit]'")
    return [exe]


@pytest.fixture(scope="session")
def test_server() -> list[str]:
    return [sys.executable, str(TEST_SERVER)]


@pytest.fixture
def http_server() -> Iterator[str]:
    """Our test server over streamable HTTP: its URL."""
    proc = subprocess.Popen(
        [sys.executable, str(TEST_SERVER), "--http"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())  # the port it bound (it serves once printed)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
