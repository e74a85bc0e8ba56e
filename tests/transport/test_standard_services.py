"""Stock gRPC tooling talks to a node: health and reflection, checked with grpcio's own
blocking client in a process of its own, and calls built from reflection alone."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio

import spear
from spear.node.server import serve_spearlet
from spear.transport.auth import read_owner_token

PROBE = Path(__file__).with_name("grpcio_probe.py")


async def _probe(address: str, *args: str, token: str | None = None) -> Any:
    env = {**os.environ, **({"SPEAR_TOKEN": token} if token else {})}
    env.pop("SPEAR_TOKEN", None) if token is None else None
    proc = await anyio.run_process(
        [sys.executable, str(PROBE), address, *args], check=False, env=env
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


async def test_health_and_reflection_with_grpcio(tmp_path: Path) -> None:
    async with spear.LocalNode(tmp_path / "home") as node:
        server = await serve_spearlet(node, "127.0.0.1:0")
        try:
            address = server.address
            assert address is not None
            assert await _probe(address, "health") == {"status": "SERVING"}
            assert await _probe(address, "health", "spear.v1.Spearlet") == {"status": "SERVING"}

            token = read_owner_token(tmp_path / "home")
            assert token is not None
            seen = await _probe(address, "reflect", token=token)
            assert {"spear.v1.Spearlet", "grpc.health.v1.Health"} <= set(seen["services"])
            assert {"SubmitTask", "WatchTask", "StreamLogs", "GetNodeInfo", "PutObject"} <= set(
                seen["methods"]
            )
            assert seen["node"] == node.name and "wasm" in seen["runtimes"]
            assert seen["error"] == {
                "status": "NOT_FOUND",
                "message": "no such task: nope",
                "metadata": {"spear-error-code": "not_found"},
            }

            server.set_serving(False)  # what a draining node answers
            assert await _probe(address, "health", "spear.v1.Spearlet") == {"status": "NOT_SERVING"}
        finally:
            await server.close()
