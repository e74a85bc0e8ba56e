"""The `peer_transport` setting (docs/scheduling.md): two values ("grpclib" read as its old
name for "node-port"), anything else refused in one line by any command that reads the
settings."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from spear.config import Settings
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from pathlib import Path


def test_grpc_aio_is_the_default_and_node_port_the_other_choice(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).peer_transport == "grpc.aio"
    assert Settings(data_dir=tmp_path, peer_transport="node-port").peer_transport == "node-port"
    with pytest.raises(InvalidArgument, match="peer_transport must be one of grpc.aio, node-port"):
        Settings(data_dir=tmp_path, peer_transport="h2")


def test_grpclib_is_read_as_the_old_name_of_node_port(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path, peer_transport="grpclib").peer_transport == "node-port"


def test_a_wrong_value_in_the_settings_file_is_one_line_and_exit_64(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('peer_transport = "grpc"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
    env.update(SPEAR_HOME=str(tmp_path / "home"), SPEAR_CONFIG=str(config))
    proc = subprocess.run(
        [sys.executable, "-m", "spear", "node", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 64, proc.stderr
    assert proc.stderr.count("\n") == 1 and "peer_transport" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
