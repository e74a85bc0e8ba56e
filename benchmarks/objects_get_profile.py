"""Where the time of one small cross-node get goes (docs/objects.md, "Profile of a get").

`python -m benchmarks.objects_get_profile [--quick]` starts spear's SMS and three
SPEARlets (TLS, data dirs on tmpfs, as objects_cluster_bench does) and times, from a
client, the parts a cross-node get is made of, each on its own:

- `SMS lookup`: one LookupObject round trip (what node-1 asks before every get);
- `holder hop`: a get of a given version straight from node-3's transfer service (what
  node-1 does to fetch a copy);
- `get, current copy here`: a client's get through node-1 of a key whose current version
  node-1 already holds (client hop + lookup + local read);
- `cross-node get`: a client's get through node-1 of a new version written on node-3.

Writes benchmarks/results/objects_get_profile.json. Medians say where to cut; the
difference of the last two is what fetching a copy costs node-1 (hop, keep, hold).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import ROOT, standalone, summarize
from benchmarks.objects_cluster_bench import _transfer_address

RESULT_FILE = ROOT / "benchmarks" / "results" / "objects_get_profile.json"


async def _profile(n1: str, n3: str, sms_address: str, credentials: Any, n: int) -> Any:
    from spear.transport.object_transfer import ObjectTransferClient
    from spear.transport.sms_client import SmsClient

    client = ObjectTransferClient(credentials)
    sms = SmsClient(sms_address, credentials=credentials)
    out: dict[str, Any] = {}
    try:
        for size in (1024, 1024 * 1024):
            label = "1KiB" if size == 1024 else "1MiB"
            payload = os.urandom(size)
            parts: dict[str, list[float]] = {}
            for i in range(n + 1):
                key = f"profile/{label}"
                version = await client.put(n3, key, payload)  # a new version, on node-3
                t0 = time.perf_counter()
                await sms.lookup_object(key)
                t1 = time.perf_counter()
                await client.get(n3, key)  # (the holder's own copy, one hop)
                t2 = time.perf_counter()
                data, got = await client.get(n1, key)
                t3 = time.perf_counter()
                await client.get(n1, key)
                t4 = time.perf_counter()
                assert len(data) == size and got == version
                if i:  # the first warms connections
                    for name, took in (
                        ("SMS lookup", t1 - t0),
                        ("holder hop", t2 - t1),
                        ("cross-node get", t3 - t2),
                        ("get, current copy here", t4 - t3),
                    ):
                        parts.setdefault(name, []).append(took)
            out[label] = {name: summarize(samples) for name, samples in parts.items()}
    finally:
        await client.aclose()
        await sms.aclose()
    return out


def run(quick: bool) -> dict[str, Any]:
    from spear.node.local_cluster import LocalCluster

    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="spear-objprof-", dir=shm) as tmp:
        with LocalCluster(Path(tmp) / "cluster", nodes=3) as cluster:
            credentials = cluster.credentials()
            n1, n3 = _transfer_address(cluster, "node-1"), _transfer_address(cluster, "node-3")
            sms = cluster.sms.address
            return {"spear": anyio.run(_profile, n1, n3, sms, credentials, 20 if quick else 60)}


def main(argv: list[str] | None = None) -> int:
    standalone(__doc__, run, RESULT_FILE, list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
