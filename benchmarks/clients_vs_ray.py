"""16 gRPC clients of a `spear serve` daemon beside Ray's throughput, round by round
(issue 17: "16 gRPC clients at least 1.5x Ray").

    python -m benchmarks.clients_vs_ray [--rounds 6] [--calls 200] [--tasks 2000]
    # benchmarks/results/clients_vs_ray.json

`python -m benchmarks --only grpc --only throughput` measures each side once, minutes
apart; on a shared or virtual machine whose speed moves by half between minutes, that
ratio says more about the minute than about either system. Here both stay up (one daemon,
one local Ray with 2 CPUs, as in the main suite) and their rounds alternate: a round of
Ray's throughput workload (`ray_bench.throughput`: `--tasks` trivial remote functions at
once), then a round of spear's (`grpc_bench`'s: 16 clients, one connection each, `--calls`
CallTasks each, one at a time), and again. Each round's ratio is spear's rate over the
Ray round next to it; the results file keeps every round and the medians.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from benchmarks import grpc_bench, ray_bench
from benchmarks.common import ROOT, TRIVIAL_WAT, write_rounds

RESULT_FILE = ROOT / "benchmarks" / "results" / "clients_vs_ray.json"
CLIENTS = 16


def _spear_round(address: str, module: Path, calls: int) -> float:
    from spear import FunctionSpec

    spec = FunctionSpec(str(module))

    async def one(client: Any) -> int:
        await client.call(spec)
        return 1

    found = anyio.run(grpc_bench._throughput, address, CLIENTS, calls, one)
    return float(found["tasks_per_s"])


def run(rounds: int, calls: int, tasks: int) -> dict[str, Any]:
    import wasmtime

    from spear.transport.auth import read_owner_token

    version = ray_bench.start()
    try:
        with tempfile.TemporaryDirectory(prefix="spear-vs-ray-") as tmp:
            module = Path(tmp) / "trivial.wasm"
            module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
            daemon = grpc_bench._Daemon(Path(tmp) / "home")
            try:
                grpc_bench._TOKEN[0] = read_owner_token(Path(tmp) / "home")
                _spear_round(daemon.address, module, 10)  # (warm: upload, compile)
                ray_bench.throughput(tasks // 4)
                spear: list[float] = []
                ray: list[float] = []
                for _ in range(rounds):
                    ray.append(float(ray_bench.throughput(tasks)["tasks_per_s"]))
                    spear.append(_spear_round(daemon.address, module, calls))
                    print(f"ray {ray[-1]:.0f}/s  spear {spear[-1]:.0f}/s", flush=True)
            finally:
                daemon.stop()
    finally:
        ray_bench.stop()
    ratios = [s / r for s, r in zip(spear, ray, strict=True)]
    return {
        "ray_version": version,
        "clients": CLIENTS,
        "calls_per_client": calls,
        "ray_tasks_per_round": tasks,
        "rounds": {
            "spear_tasks_per_s": spear,
            "ray_tasks_per_s": ray,
            "ratio": [round(r, 3) for r in ratios],
        },  # fmt: skip
        "medians": {
            "spear_tasks_per_s": statistics.median(spear),
            "ray_tasks_per_s": statistics.median(ray),
            "ratio": round(statistics.median(ratios), 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=200, help="calls per client per round")
    p.add_argument("--tasks", type=int, default=2000, help="Ray's tasks per round")
    p.add_argument("--out", type=Path, default=RESULT_FILE)
    args = p.parse_args(argv)
    result = run(args.rounds, args.calls, args.tasks)
    write_rounds(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
