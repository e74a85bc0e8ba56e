"""`python -m benchmarks.etcd_client [--baseline SRC] [--rounds N]`: spear's etcd client
through the KV seam (store/etcd.py) on one real etcd, as the grpc.aio client (this tree)
and, with `--baseline` (e.g. the main branch's `src`, the grpclib client), the other.

Each run is a process of its own with `PYTHONPATH=<src>`, on a namespace of its own:
2,000 puts one after another, 2,000 gets of those keys, then 16 putters at once (125 puts
each); the latency of each sequential call (median, p99), the rates, and the CPU the
client process spent per operation. The two trees alternate, `--rounds` runs each.
Writes benchmarks/results/etcd_client.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, machine, summarize

RESULT_FILE = ROOT / "benchmarks" / "results" / "etcd_client.json"
SEQUENTIAL = 2000
PUTTERS = 16
PER_PUTTER = 125


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(endpoint: str, namespace: str) -> dict[str, Any]:
    """One run, in the worker process (whichever spear its PYTHONPATH gives)."""
    import anyio

    import spear
    from spear.store.etcd import EtcdKV

    kv = await EtcdKV.connect([endpoint], namespace=namespace)
    try:
        value = b"v" * 100
        result: dict[str, Any] = {"spear": str(Path(spear.__file__).parent)}
        for name, one in (
            ("put", lambda i: kv.put(f"k{i}", value)),
            ("get", lambda i: kv.get(f"k{i}")),
        ):
            samples = []
            cpu0, wall0 = _cpu_s(), time.perf_counter()
            for i in range(SEQUENTIAL):
                started = time.perf_counter()
                await one(i)
                samples.append(time.perf_counter() - started)
            wall, cpu = time.perf_counter() - wall0, _cpu_s() - cpu0
            result[f"sequential_{name}"] = {
                **summarize(samples),
                "per_s": round(SEQUENTIAL / wall, 1),
                "client_cpu_us_per_op": round(cpu * 1e6 / SEQUENTIAL, 1),
            }

        async def putter(p: int) -> None:
            for i in range(PER_PUTTER):
                await kv.put(f"c{p}-{i}", value)

        cpu0, wall0 = _cpu_s(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for p in range(PUTTERS):
                tg.start_soon(putter, p)
        wall, cpu = time.perf_counter() - wall0, _cpu_s() - cpu0
        total = PUTTERS * PER_PUTTER
        result["concurrent_put"] = {
            "putters": PUTTERS,
            "puts": total,
            "per_s": round(total / wall, 1),
            "client_cpu_us_per_op": round(cpu * 1e6 / total, 1),
        }
        return result
    finally:
        await kv.aclose()


def _run(src: Path, endpoint: str, namespace: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.etcd_client", "--worker", endpoint, namespace],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the run on {src} failed: {proc.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(part: str, field: str) -> float:
        return round(statistics.median(r[part][field] for r in runs), 3)

    return {
        "sequential_put_median_ms": median("sequential_put", "median_ms"),
        "sequential_put_p99_ms": median("sequential_put", "p99_ms"),
        "sequential_put_per_s": median("sequential_put", "per_s"),
        "sequential_get_median_ms": median("sequential_get", "median_ms"),
        "sequential_get_p99_ms": median("sequential_get", "p99_ms"),
        "sequential_get_per_s": median("sequential_get", "per_s"),
        "concurrent_put_per_s": median("concurrent_put", "per_s"),
        "client_cpu_us_per_put": median("sequential_put", "client_cpu_us_per_op"),
        "client_cpu_us_per_get": median("sequential_get", "client_cpu_us_per_op"),
        "client_cpu_us_per_concurrent_put": median("concurrent_put", "client_cpu_us_per_op"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("ENDPOINT", "NAMESPACE"), help="(internal)")
    parser.add_argument("--baseline", type=Path, help="another spear source tree to compare")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tree (2)")
    parser.add_argument("--output", type=Path, default=RESULT_FILE)
    args = parser.parse_args()
    if args.worker:
        import anyio

        print(json.dumps(anyio.run(_measure, *args.worker)))
        return

    from spear.store.etcd_server import EtcdProcess

    trees = {"this": ROOT / "src"}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="spear-etcd-client-") as tmp:
        etcd = EtcdProcess(Path(tmp) / "etcd")
        etcd.start()
        try:
            assert etcd.endpoint is not None
            for r in range(args.rounds):
                for name, src in trees.items() if r % 2 == 0 else reversed(trees.items()):
                    run = _run(src, etcd.endpoint, f"bench-{name}-{r}/")
                    runs[name].append(run)
                    seq = run["sequential_put"]
                    print(
                        f"{name} (round {r + 1}): put {seq['median_ms']} ms median, "
                        f"get {run['sequential_get']['median_ms']} ms, "
                        f"16 putters {run['concurrent_put']['per_s']}/s",
                        flush=True,
                    )
        finally:
            etcd.stop()
    result = {
        "machine": machine(),
        "load_average_1m": os.getloadavg()[0],
        "trees": {name: str(src) for name, src in trees.items()},
        "median_of_runs": {name: _medians(rs) for name, rs in runs.items()},
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_of_runs"], indent=2))


if __name__ == "__main__":
    main()
