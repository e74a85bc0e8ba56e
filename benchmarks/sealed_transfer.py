"""Encrypted object transfers: sealed records (transport/sealed.py) beside TLS's own records
(what Python's `ssl` moves, the way before) and the clear (`object_transfer_encrypt =
false`), one node's transfer service in a process of its own and a member's client in
this one, the arms alternating round by round on the same node and values.

    python -m benchmarks.sealed_transfer [--rounds 3]
    # benchmarks/results/sealed_transfer.json

Timed: a get and a put of 1 MiB and of 64 MiB (medians of each round's samples), and a
member's fetch of 1 GiB into a new file (what a node pulling a copy does), in GiB/s. The
data dirs are on tmpfs (/dev/shm), as the cluster benchmark's are. The cluster workload
beside Ray is `benchmarks/objects_cluster_bench.py --tls-records`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import ROOT, machine

RESULT_FILE = ROOT / "benchmarks" / "results" / "sealed_transfer.json"
MiB = 1 << 20
ARMS = ("sealed", "TLS records", "clear")

_SERVER = r"""
import sys, anyio
from pathlib import Path
from spear.store.leveldb import LevelDBKV
from spear.store.objects import ObjectStore
from spear.transport.object_transfer import ObjectTransferServer
from spear.transport.serving import Security
from spear.transport.tls import TlsFiles

async def main():
    home = Path(sys.argv[1])
    kv = LevelDBKV.open(str(home / "meta.ldb"))
    store = ObjectStore(kv, home / "objects")
    security = Security(authorizer=None, tls=TlsFiles(home / "tls"))
    server = ObjectTransferServer(store, security, allow_plain=True)
    print(await server.start("127.0.0.1:0"), flush=True)
    await anyio.to_thread.run_sync(sys.stdin.read)  # until the benchmark closes it
    await server.close()
    await kv.aclose()

anyio.run(main)
"""


def _client(tls_dir: Path, arm: str) -> Any:
    from spear.transport.channels import Credentials
    from spear.transport.object_transfer import ObjectTransferClient
    from spear.transport.tls import TlsFiles

    credentials = Credentials(tls=TlsFiles(tls_dir))
    return ObjectTransferClient(credentials, encrypt=arm != "clear", seal=arm == "sealed")


async def _round(address: str, tls_dir: Path, scratch: Path, arm: str) -> dict[str, float]:
    client = _client(tls_dir, arm)
    out: dict[str, float] = {}
    try:
        for label, size, samples in (("1 MiB", MiB, 30), ("64 MiB", 64 * MiB, 5)):
            value = os.urandom(size)
            await client.put(address, label, value)  # (connected, and the key there)
            puts, gets = [], []
            for _ in range(samples):
                t0 = time.perf_counter()
                await client.put(address, label, value)
                puts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                got, _ = await client.get(address, label)
                gets.append(time.perf_counter() - t0)
                assert len(got) == size
            out[f"put {label} (ms)"] = round(statistics.median(puts) * 1e3, 3)
            out[f"get {label} (ms)"] = round(statistics.median(gets) * 1e3, 3)
        version = await client.put_file(address, "gib", scratch / "one.gib")
        dest = scratch / "fetched"
        t0 = time.perf_counter()
        await client.fetch(address, "gib", version, dest)
        out["fetch 1 GiB (GiB/s)"] = round(1 / (time.perf_counter() - t0), 3)
        dest.unlink()
    finally:
        await client.aclose()
    return out


def run(rounds: int) -> dict[str, Any]:
    from spear.transport import tls

    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="spear-sealbench-", dir=shm) as tmp:
        root = Path(tmp)
        tls.create_ca(root / "ca")
        tls.issue(root / "ca", "node-1", root / "node" / "tls")
        tls.issue(root / "ca", "node-2", root / "member")
        with open(root / "one.gib", "wb") as f:  # sparse: read back as zeros
            f.truncate(1024 * MiB)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(root / "node")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert server.stdout is not None
            address = server.stdout.readline().strip()
            samples: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
            for _ in range(rounds):
                for arm in ARMS:
                    samples[arm].append(anyio.run(_round, address, root / "member", root, arm))
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(timeout=60)
    return {
        arm: {k: statistics.median(r[k] for r in rows) for k in rows[0]} | {"rounds": rows}
        for arm, rows in samples.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = {"machine": machine(), **run(args.rounds)}
    RESULT_FILE.write_text(json.dumps(result, indent=2) + "\n")
    for arm in ARMS:
        print(arm, {k: v for k, v in result[arm].items() if k != "rounds"})
    print(f"wrote {RESULT_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
