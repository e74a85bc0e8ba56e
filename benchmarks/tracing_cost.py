"""`python -m benchmarks.tracing_cost [ROUNDS] [--baseline SRC]`: what OpenTelemetry
tracing costs the in-process hot path, off and on, and what its hooks cost when off.

Each round runs, in a fresh child process (one LocalNode each, the order alternating):
  - "off": this tree, tracing off (the default: every hook is one None check);
  - "on": this tree, the node tracing with the SDK's BatchSpanProcessor into an
    in-memory exporter (cleared each round; an OTLP collector's export would be one more
    background thread);
  - "baseline" (with --baseline SRC, e.g. a checkout of main before the hooks): that
    tree's `spear`, no hooks at all.
Each child measures `run_many` of 3,000 trivial tasks and 1,000 `node.run` one at a
time, and reports the event-loop thread's CPU time per task (`time.thread_time`, which a
shared, busy machine disturbs far less than wall time) and the wall-time rates beside
it. Results: benchmarks/results/tracing.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MANY = 3000
ONE_BY_ONE = 1000
ROOT = Path(__file__).resolve().parent.parent
KEYS = ("many_cpu_us", "run_cpu_us", "many_per_s", "run_median_us")


async def _child(mode: str) -> dict[str, float]:
    """One measurement in this process (a child of `main`)."""
    import dataclasses

    import wasmtime

    from benchmarks.common import TRIVIAL_WAT
    from spear import FunctionSpec
    from spear.config import Settings
    from spear.core.node import Spearlet
    from spear.node.assembly import local_components

    with tempfile.TemporaryDirectory(prefix="spear-tracing-cost-") as tmp:
        module = Path(tmp) / "trivial.wasm"
        module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
        spec = FunctionSpec(str(module))
        parts = local_components(Settings(data_dir=Path(tmp) / "home"))
        exporter = None
        if mode == "on":
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )

            from spear.tracing.otel import OtelTracing

            exporter = InMemorySpanExporter()
            tracing = OtelTracing(exporter, node_name="bench")
            parts["services"] = dataclasses.replace(parts["services"], tracing=tracing)
        async with Spearlet(**parts) as node:
            for _ in range(50):  # warm: module compiled, inline path chosen
                await node.run(spec)
            c0, t0 = time.thread_time(), time.perf_counter()
            await node.run_many([spec] * MANY)
            many_cpu = (time.thread_time() - c0) / MANY * 1e6
            many_rate = MANY / (time.perf_counter() - t0)
            walls = []
            c0 = time.thread_time()
            for _ in range(ONE_BY_ONE):
                t0 = time.perf_counter()
                await node.run(spec)
                walls.append(time.perf_counter() - t0)
            run_cpu = (time.thread_time() - c0) / ONE_BY_ONE * 1e6
        traced = len(exporter.get_finished_spans()) if exporter is not None else 0
    return {
        "many_cpu_us": many_cpu,
        "run_cpu_us": run_cpu,
        "many_per_s": many_rate,
        "run_median_us": statistics.median(walls) * 1e6,
        "spans": traced,
    }


def _measure(mode: str, src: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    child_mode = "off" if mode == "baseline" else mode
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.tracing_cost", "--child", child_mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--child"]:
        import anyio

        print(json.dumps(anyio.run(_child, args[1])))
        return
    baseline = None
    if "--baseline" in args:
        at = args.index("--baseline")
        baseline = Path(args[at + 1]).resolve()
        del args[at : at + 2]
    rounds = int(args[0]) if args else 6
    modes = {"off": ROOT / "src", "on": ROOT / "src"}
    if baseline is not None:
        modes = {"baseline": baseline, **modes}
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for r in range(rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        for mode in order:
            results[mode].append(_measure(mode, modes[mode]))
    med = {m: {k: statistics.median(x[k] for x in rs) for k in KEYS} for m, rs in results.items()}
    ref = "baseline" if baseline is not None else "off"
    for key, label in (
        ("many_cpu_us", "run_many, CPU us a task"),
        ("run_cpu_us", "node.run one at a time, CPU us a task"),
        ("many_per_s", "run_many, tasks/s (wall)"),
        ("run_median_us", "node.run median latency, us (wall)"),
    ):
        cells = "  ".join(f"{m} {med[m][key]:9.1f}" for m in modes)
        ratios = "  ".join(
            f"{m}/{ref} {med[m][key] / med[ref][key]:.3f}" for m in modes if m != ref
        )
        print(f"{label:40} {cells}  {ratios}")
    out = ROOT / "benchmarks" / "results" / "tracing.json"
    out.write_text(
        json.dumps(
            {
                "rounds": rounds,
                "baseline": str(baseline) if baseline is not None else None,
                "load_average": os.getloadavg(),
                "median": med,
                "runs": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
