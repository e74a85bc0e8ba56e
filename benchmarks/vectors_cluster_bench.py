"""A vector query at a collection's home node beside the same query through another
member, which forwards it there (docs/toolkit.md, "On a cluster"), in one run.

`python -m benchmarks.vectors_cluster_bench [--quick]` writes
benchmarks/results/vectors_cluster.json. Real processes on loopback: an SMS and two
SPEARlets with the cluster's TLS (`LocalCluster`). A collection of 384-dimensional
vectors is made on node-1 (its home); a client (the cluster's certificate) then asks
node-1 and node-2 the same k=10 queries over spear.v1.SpearletVectors, interleaved one by
one, with a `count` at node-1 beside them (the floor: a SpearletVectors call that does
almost nothing). at_home - count_at_home is the query's own work; forwarded - at_home is
the forwarding hop (node-2 to node-1, mutual TLS, one call).
Nothing here asserts a timing.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import ROOT, standalone, summarize

RESULT_FILE = ROOT / "benchmarks" / "results" / "vectors_cluster.json"
DIM = 384


async def _queries(home: str, other: str, credentials: Any, size: int, n: int) -> dict[str, Any]:
    import numpy as np

    from spear.node.vector_peers import call_vectors, vectors_stub
    from spear.transport.aio_client import AioChannel

    channels = [AioChannel.to(a, credentials) for a in (home, other)]
    stubs = [vectors_stub(c) for c in channels]
    try:
        await call_vectors(stubs[0], home, {"op": "create", "collection": "bench", "dim": DIM})
        rng = np.random.default_rng(7)
        vectors = rng.standard_normal((size, DIM), dtype=np.float32)
        for start in range(0, size, 500):
            records = [
                {"id": str(i), "vector": vectors[i].tolist(), "metadata": {"half": i % 2}}
                for i in range(start, min(size, start + 500))
            ]
            upsert = {"op": "upsert", "collection": "bench", "records": records}
            await call_vectors(stubs[0], home, upsert)
        queries = rng.standard_normal((n + 5, DIM), dtype=np.float32)
        samples: dict[str, list[float]] = {"at_home": [], "forwarded": [], "count_at_home": []}
        count = {"op": "count", "collection": "bench"}
        for i, q in enumerate(queries):
            query = {"op": "query", "collection": "bench", "vector": q.tolist(), "k": 10}
            order = [
                ("at_home", stubs[0], home, query),
                ("forwarded", stubs[1], other, query),
                ("count_at_home", stubs[0], home, count),
            ]
            for name, stub, address, request in order[i % 3 :] + order[: i % 3]:
                t0 = time.perf_counter()
                await call_vectors(stub, address, request)
                if i >= 5:  # (warm-up: channels, the home's cache on node-2)
                    samples[name].append(time.perf_counter() - t0)
    finally:
        for channel in channels:
            await channel.aclose()
    return {
        "vectors": size,
        "at_home": summarize(samples["at_home"]),
        "forwarded": summarize(samples["forwarded"]),
        "count_at_home": summarize(samples["count_at_home"]),
    }


def run(quick: bool) -> dict[str, Any]:
    from spear.node.local_cluster import LocalCluster

    size, n = (1000, 100) if quick else (10_000, 500)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", nodes=2)
        with cluster:
            home, other = cluster.member("node-1").address, cluster.member("node-2").address
            return {"query": anyio.run(_queries, home, other, cluster.credentials(), size, n)}


if __name__ == "__main__":
    standalone(__doc__, run, RESULT_FILE, sys.argv[1:])
