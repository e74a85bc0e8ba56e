"""Multi-process clusters on loopback: an SMS and SPEARlets as real `spear serve` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import wasmtime
from conftest import assert_eventually

from spear.errors import NotFound
from spear.node.local_cluster import LocalCluster
from spear.transport.channels import Credentials
from spear.transport.sms_client import SmsClient
from spear.transport.tls import TlsFiles

if TYPE_CHECKING:
    from collections.abc import Iterator

# Short periods so a silent node is unhealthy within 0.6 s and dead within 1.5 s.
FAST = {"heartbeat_s": 0.2, "unhealthy_after_s": 0.6, "dead_after_s": 1.5}

LOOP_WAT = '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'


@pytest.fixture
def loop_wasm(tmp_path: Path) -> Path:
    path = tmp_path / "loop.wasm"
    path.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    return path


@pytest.fixture
def make_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Clusters of real processes; the test's `spear` commands and SMS calls present the
    launcher's certificate from their CA (SPEAR_TLS_DIR), as a member would."""
    made: list[LocalCluster] = []

    def make(nodes: int = 2, **kw: Any) -> LocalCluster:
        kw.setdefault("timings", FAST)
        kw.setdefault("ca", tmp_path / "ca")
        cluster = LocalCluster(tmp_path / f"cluster{len(made)}", nodes=nodes, **kw)
        made.append(cluster)
        credentials = cluster.credentials()
        assert credentials.tls is not None
        monkeypatch.setenv("SPEAR_TLS_DIR", str(credentials.tls.directory))
        return cluster.start()

    yield make
    for cluster in made:
        stop_quickly(cluster)


def stop_quickly(cluster: LocalCluster, say_s: float = 10.0) -> None:
    """Stop a test's cluster without waiting out a task that never ends. SIGTERM drains a
    SPEARlet for up to 30 s (`--drain-timeout`): a loop task left running made
    LocalCluster.stop wait 15 s for each such member before its SIGKILL. Every SPEARlet is
    signalled at once; one that logs it is draining gets a second SIGTERM, which stops it
    without waiting (cli/serve.py); then stop() does the rest as before (the SMS, etcd, and
    SIGKILL for a member still there after 15 s)."""
    members = [m for m in cluster.members if m.proc is not None and m.proc.poll() is None]
    for member in members:
        assert member.proc is not None
        member.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + say_s
    for member in members:
        assert member.proc is not None
        log = member.data_dir / "stderr.log"
        while member.proc.poll() is None and time.monotonic() < deadline:
            if "draining" in log.read_text(errors="replace"):
                member.proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)  # polling the member's log for its answer, with a deadline
    cluster.stop()


def spear(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real `spear` command (`env`: variables to set for it)."""
    return subprocess.run(
        [sys.executable, "-m", "spear", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def submit(node: str, module: Path, *flags: str) -> str:
    """`spear submit` of `module` to `node` (with `flags`); the task's id."""
    proc = spear("submit", "--node", node, *flags, str(module))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[0]


def sms_state(address: str, task_id: str) -> Any:
    """The task's state as the SMS has it, None while no report of it arrived yet."""
    try:
        return sms_call(address, "task", task_id).state
    except NotFound:
        return None


def sms_call(address: str, method: str, *args: Any, tls_dir: Path | None = None, **kw: Any) -> Any:
    """One call on the SMS client, from a test's synchronous code (as the launcher, or as
    the member whose TLS files are in `tls_dir`)."""
    credentials = Credentials(tls=TlsFiles(tls_dir)) if tls_dir else cluster_credentials()

    async def call() -> Any:
        client = SmsClient(address, timeout_s=5, credentials=credentials)
        try:
            return await getattr(client, method)(*args, **kw)
        finally:
            await client.aclose()

    return anyio.run(call)


def cluster_credentials() -> Credentials:
    """What the test presents: the certificate SPEAR_TLS_DIR names (see make_cluster)."""
    return Credentials(tls=TlsFiles(Path(os.environ["SPEAR_TLS_DIR"])))


def nodes_json(address: str) -> dict[str, dict[str, Any]]:
    proc = spear("nodes", "--sms", address, "--json")
    assert proc.returncode == 0, proc.stderr
    return {n["name"]: n for n in json.loads(proc.stdout)}


__all__ = [
    "FAST", "assert_eventually", "loop_wasm", "make_cluster", "nodes_json", "sms_call", "spear",
    "cluster_credentials",
]  # fmt: skip
