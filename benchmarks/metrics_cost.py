"""`python -m benchmarks.metrics_cost [ROUNDS]`: what the node's HTTP server (metrics hook,
/metrics, dashboard) costs the in-process hot path, on and off, interleaved.

One LocalNode; each round measures `run_many` of 3,000 trivial tasks and 1,000 `node.run`
one at a time, once with `web.serving` around it and once without (the order alternates).
It reports the event-loop thread's CPU time per task (`time.thread_time`), which a shared,
busy machine disturbs far less than wall time, and the wall-time rates beside it; the
medians go to benchmarks/results/metrics_cost.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import wasmtime

from benchmarks.common import TRIVIAL_WAT
from spear import FunctionSpec, LocalNode, web
from spear.node.inprocess import InProcessNode

MANY = 3000
ONE_BY_ONE = 1000


async def measure(rounds: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {
        mode: {"many_cpu_us": [], "run_cpu_us": [], "many_per_s": [], "run_median_us": []}
        for mode in ("off", "on")
    }
    with tempfile.TemporaryDirectory(prefix="spear-metrics-cost-") as tmp:
        module = Path(tmp) / "trivial.wasm"
        module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
        spec = FunctionSpec(str(module))
        async with LocalNode(Path(tmp) / "home") as node:
            settings = dataclasses.replace(node.settings, http_listen="127.0.0.1:0")
            await node.run(spec)
            for r in range(rounds):
                for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    async with contextlib.AsyncExitStack() as stack:
                        if mode == "on":
                            await stack.enter_async_context(
                                web.serving(InProcessNode(node), settings)
                            )
                        out = results[mode]
                        c0, t0 = time.thread_time(), time.perf_counter()
                        await node.run_many([spec] * MANY)
                        out["many_cpu_us"].append((time.thread_time() - c0) / MANY * 1e6)
                        out["many_per_s"].append(MANY / (time.perf_counter() - t0))
                        walls = []
                        c0 = time.thread_time()
                        for _ in range(ONE_BY_ONE):
                            t0 = time.perf_counter()
                            await node.run(spec)
                            walls.append(time.perf_counter() - t0)
                        out["run_cpu_us"].append((time.thread_time() - c0) / ONE_BY_ONE * 1e6)
                        out["run_median_us"].append(statistics.median(walls) * 1e6)
    return results


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    results = anyio.run(measure, rounds)
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results.items()}
    for key, label in (
        ("many_cpu_us", "run_many, CPU us a task"),
        ("run_cpu_us", "node.run one at a time, CPU us a task"),
        ("many_per_s", "run_many, tasks/s (wall)"),
        ("run_median_us", "node.run median latency, us (wall)"),
    ):
        off, on = med["off"][key], med["on"][key]
        print(f"{label:42} off {off:9.1f}  on {on:9.1f}  on/off {on / off:.3f}")
    out = Path(__file__).parent / "results" / "metrics_cost.json"
    out.parent.mkdir(exist_ok=True)
    record = {
        "rounds": rounds,
        "load_average": os.getloadavg(),
        "median": med,
        "on_over_off": {k: med["on"][k] / med["off"][k] for k in med["off"]},
    }
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
