"""`spear cluster up/down` and `spear nodes` as a user runs them."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest
from conftest import one_error_line
from helpers import spear

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


def test_cluster_up_nodes_down(tmp_path: Path) -> None:
    base = tmp_path / "dev"
    up = spear("cluster", "up", "--nodes", "2", "--dir", str(base), "--json")
    try:
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        assert set(info["nodes"]) == {"node-1", "node-2"}
        again = spear("cluster", "up", "--dir", str(base))
        assert again.returncode == 64 and "already up" in one_error_line(again.stderr.encode())
        # As `cluster up` tells a user: node-1's data dir holds the credentials to call with.
        stranger = spear("nodes", "--sms", info["sms"], env={"SPEAR_HOME": str(tmp_path / "x")})
        assert stranger.returncode != 0
        # A user outside: plain TCP to a TLS member is told how to give the CA ...
        outside = {"SPEAR_HOME": str(tmp_path / "x")}
        plain = spear("tasks", "--node", info["nodes"]["node-1"], env=outside)
        assert plain.returncode == 76 and "SPEAR_TLS_DIR" in one_error_line(plain.stderr.encode())
        # ... and with only the CA's certificate and a token it is served as that token.
        ca = tmp_path / "ca"
        ca.mkdir()
        (ca / "ca.crt").write_bytes((base / "node-1" / "tls" / "ca.crt").read_bytes())
        outside["SPEAR_TLS_DIR"] = str(ca)
        no_token = spear("tasks", "--node", info["nodes"]["node-1"], env=outside)
        assert no_token.returncode == 77, no_token.stderr
        outside["SPEAR_TOKEN"] = (base / "node-1" / "auth" / "owner.token").read_text().strip()
        served = spear("tasks", "--node", info["nodes"]["node-1"], env=outside)
        assert served.returncode == 0 and served.stdout.startswith("ID"), served.stderr
        member = {"SPEAR_HOME": str(base / "node-1")}
        listed = spear("nodes", "--sms", info["sms"], env=member)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split()[:2] == ["NAME", "HEALTH"]
        assert sorted(line.split()[0] for line in lines[1:]) == ["node-1", "node-2"]
        assert all(line.split()[1] == "healthy" for line in lines[1:])
        via_node = spear("nodes", "--node", info["nodes"]["node-2"], "--json", env=member)
        assert via_node.returncode == 0, via_node.stderr
        assert {n["name"] for n in json.loads(via_node.stdout)} == {"node-1", "node-2"}
        pids = [m["pid"] for m in json.loads((base / "cluster.json").read_text())["members"]]
    finally:
        down = spear("cluster", "down", "--dir", str(base))
    assert down.returncode == 0 and "stopped 3" in down.stdout, down.stderr
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    gone = spear("cluster", "down", "--dir", str(base))
    assert gone.returncode == 66 and "no cluster" in one_error_line(gone.stderr.encode())
