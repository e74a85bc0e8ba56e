"""ForwardTasks on the members' port against the node port, side by side (issue 17;
docs/scheduling.md).

    nice -n 10 python -m benchmarks.forward_aio [--quick]   # benchmarks/results/forward_aio.json

Two clusters of 3 SPEARlets on LevelDB run at once, alike but for `peer_transport`
("grpc.aio" and "node-port"); rounds alternate between them, so both see the same
machine. Each round, through node-1, of a trivial WASM task only node-2 may run:

- call: `client.call` one at a time (CallTask, forwarded; median and p99), with the CPU
  every process of that cluster and the client spent per task;
- at_once: N in one SubmitTasks call, waited (forwarded as batches), tasks/s and CPU.

Both ports are grpc.aio servers now (grpclib is gone: docs/scheduling.md), so what
differs is the port: the members' own (a certificate at the handshake) or the node port
(which takes users too). Results from before name "node-port" "grpclib" (then the node
port's grpclib server).

The CPU per task is the steadier reading on a shared machine; the whole cluster benchmark
beside Ray is `python -m benchmarks --only cluster` (it measures both transports too).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from benchmarks import cluster_bench
from benchmarks.common import ROOT, standalone

RESULT_FILE = ROOT / "benchmarks" / "results" / "forward_aio.json"
TRANSPORTS = ("grpc.aio", "node-port")


def counts(quick: bool) -> dict[str, int]:
    if quick:
        return {"rounds": 2, "calls": 40, "at_once": 100}
    return {"rounds": 4, "calls": 150, "at_once": 300}


def _round(cluster: Any, module: Path, n: dict[str, int]) -> dict[str, Any]:
    n1 = cluster.member("node-1").address
    pids = [m.pid for m in cluster.members] + ([cluster.sms.pid] if cluster.sms else [])
    before = cluster_bench.cpu_s(pids)
    call = anyio.run(cluster_bench._calls, n1, str(module), n["calls"], cluster_bench.FAR)
    call["cpu_ms_per_task"] = round((cluster_bench.cpu_s(pids) - before) / call["n"] * 1e3, 3)
    before = cluster_bench.cpu_s(pids)
    batch = anyio.run(cluster_bench._at_once, n1, str(module), n["at_once"], cluster_bench.FAR)
    spent = cluster_bench.cpu_s(pids) - before
    batch["cpu_ms_per_task"] = round(spent / batch["tasks"] * 1e3, 3)
    return {"call": call, "at_once": batch}


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(part: str, key: str) -> float:
        return round(statistics.median(r[part][key] for r in rounds), 3)

    return {
        "call_median_ms": med("call", "median_ms"),
        "call_p99_ms": med("call", "p99_ms"),
        "call_cpu_ms_per_task": med("call", "cpu_ms_per_task"),
        "at_once_tasks_per_s": med("at_once", "tasks_per_s"),
        "at_once_cpu_ms_per_task": med("at_once", "cpu_ms_per_task"),
    }


def run(quick: bool) -> dict[str, Any]:
    n = counts(quick)
    with tempfile.TemporaryDirectory(prefix="spear-forward-aio-") as tmp:
        directory = Path(tmp)
        module = cluster_bench.trivial_module(directory)
        clusters = {t: cluster_bench.three_spearlets(directory, False, t) for t in TRANSPORTS}
        rounds: dict[str, list[dict[str, Any]]] = {t: [] for t in TRANSPORTS}
        try:
            for cluster in clusters.values():
                cluster.start()
            for i in range(n["rounds"]):
                order = TRANSPORTS if i % 2 == 0 else TRANSPORTS[::-1]
                for transport in order:
                    cluster = clusters[transport]
                    cluster_bench._CREDENTIALS[0] = cluster.credentials()
                    rounds[transport].append(_round(cluster, module, n))
        finally:
            for cluster in clusters.values():
                cluster.stop()
    summary = {t: _medians(rounds[t]) for t in TRANSPORTS}
    aio, plain = summary["grpc.aio"], summary["node-port"]
    summary["node_port_over_grpc_aio"] = {
        key: round(plain[key] / aio[key], 3) for key in aio if aio[key]
    }
    return {"forward_aio": summary, "rounds": rounds, "counts": n}


def main(argv: list[str] | None = None) -> int:
    result = standalone(__doc__, run, RESULT_FILE, argv)
    print(json.dumps(result["forward_aio"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
