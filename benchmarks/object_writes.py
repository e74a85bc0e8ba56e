"""Two versions of spear side by side on a client's puts of one key again and again
(issue 15: "a client's 1 MiB put ... within 2x Ray's"), over the node's object socket and
its transfer port: what writing each value into a new file costs against writing it over
a spare (store/spare_files.py).

    python -m benchmarks.object_writes <before src> <after src> [--rounds 4] [--puts 300]
    # benchmarks/results/object_writes.json

Each round starts, for each version in turn (alternating which goes first), a `spear serve`
daemon of that version with its data dir on tmpfs (as `objects_cluster_bench` and Ray's
object store are), and times `--puts` puts of 1 MiB and `--puts`/10 of 64 MiB over each
path, each followed by a get; medians in ms.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks import versions
from benchmarks.common import ROOT, machine
from benchmarks.versions import alternate, measure_in

RESULT_FILE = ROOT / "benchmarks" / "results" / "object_writes.json"

_ROUND = r"""
import json, os, statistics, sys, tempfile, time
from pathlib import Path
import anyio
from benchmarks.grpc_bench import _Daemon
from spear.node.client import Client
from spear.transport.auth import read_owner_token
from spear.transport.channels import Credentials
from spear.transport.object_socket import ObjectSocketClient
from spear.transport.object_transfer import ObjectTransferClient

puts = int(sys.argv[1])
MiB = 1 << 20
shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
with tempfile.TemporaryDirectory(prefix="spear-writes-", dir=shm) as tmp:
    home = Path(tmp) / "home"
    daemon = _Daemon(home)
    try:
        address = daemon.address

        async def main():
            owner = Credentials(token=read_owner_token(home))
            async with Client(address, credentials=owner) as client:
                info = await client.node_info()
            local = ObjectSocketClient(info.object_socket, owner)
            transfer = ObjectTransferClient(owner)
            where = info.object_transfer_address
            paths = {
                "object socket": (lambda v: local.put("k", v), lambda: local.get("k")),
                "transfer": (
                    lambda v: transfer.put(where, "t", v),
                    lambda: transfer.get(where, "t"),
                ),
            }
            out = {}
            try:
                for label, size, count in (("1MiB", MiB, puts), ("64MiB", 64 * MiB, puts // 10)):
                    value = os.urandom(size)
                    for name, (put, get) in paths.items():
                        await put(value)
                        p, g = [], []
                        for _ in range(count):
                            t0 = time.perf_counter()
                            await put(value)
                            t1 = time.perf_counter()
                            got, _ = await get()
                            g.append((time.perf_counter() - t1) * 1e3)
                            p.append((t1 - t0) * 1e3)
                            assert len(got) == size
                        out[f"put {label} ({name})"] = round(statistics.median(p), 3)
                        out[f"get {label} ({name})"] = round(statistics.median(g), 3)
            finally:
                await local.aclose()
                await transfer.aclose()
            return out

        print(json.dumps(anyio.run(main)))
    finally:
        daemon.stop()
"""


def run(before: str, after: str, rounds: int, counts: dict[str, int]) -> dict[str, Any]:
    result = alternate(
        before, after, rounds, lambda src: measure_in(src, _ROUND, str(counts["puts"]))
    )
    result["machine"] = machine()
    return result


def main(argv: list[str] | None = None) -> int:
    return versions.main(argv, __doc__, RESULT_FILE, {"puts": 300}, run)


if __name__ == "__main__":
    sys.exit(main())
