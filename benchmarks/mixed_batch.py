"""A batch whose tasks take very different times, beside Ray: how long until all ended.

    python -m benchmarks.mixed_batch [--src SRC ...] [--rounds 3]
    # benchmarks/results/mixed_batch.json

32 tasks on 4 slots (a node of 400m CPU, the tasks 100m each; Ray: `ray.init(num_cpus=4)`,
tasks of `num_cpus=1`): every 8th sleeps 1 s, the others 0.1 s. That is 6.8 s of work: at
best 1.7 s on 4 slots. spear runs them as one `LocalNode.run_many` of Process tasks (a
shell script that sleeps), Ray as 32 `f.remote(seconds)` then one `ray.get`. Each `--src`
(a `src/` directory, e.g. a `git worktree` of an earlier commit) is measured in a process
of its own; without one, this checkout's. A run_many that waits for a whole wave to end
before starting the next takes about 4 x 1 s + 4 x 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from benchmarks.common import ROOT
from benchmarks.versions import measure_in

RESULT_FILE = ROOT / "benchmarks" / "results" / "mixed_batch.json"
SECONDS = [1.0 if i % 8 == 0 else 0.1 for i in range(32)]
SLOTS = 4

_SPEAR = r"""
import json, sys, tempfile, time, anyio
from pathlib import Path
from spear import FunctionSpec, LocalNode, Runtime

seconds = json.loads(sys.argv[1])
slots = int(sys.argv[2])

async def main():
    with tempfile.TemporaryDirectory(prefix="spear-mixed-") as tmp:
        script = Path(tmp) / "sleep.sh"
        script.write_text('#!/bin/sh\nexec sleep "$1"\n')
        script.chmod(0o755)
        specs = [FunctionSpec(str(script), args=(str(s),), runtime=Runtime.PROCESS)
                 for s in seconds]
        async with LocalNode(Path(tmp) / "home", cpu_millis=100 * slots) as node:
            await node.run_many(specs[:slots])  # (warm)
            started = time.perf_counter()
            done = await node.run_many(specs)
            took = time.perf_counter() - started
        assert {t.state.value for t in done} == {"COMPLETED"}, done
    print(json.dumps({"seconds": took}))

anyio.run(main)
"""


def spear_once(src: str) -> float:
    found = measure_in(src, _SPEAR, json.dumps(SECONDS), str(SLOTS))
    return float(found["seconds"])


def ray_once() -> float:
    import ray

    @ray.remote(num_cpus=1)
    def sleep(seconds: float) -> None:
        time.sleep(seconds)

    ray.get([sleep.remote(0.0) for _ in range(SLOTS)])  # (warm)
    started = time.perf_counter()
    ray.get([sleep.remote(s) for s in SECONDS])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", default=None, help="a src/ directory")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sources = args.src or [str(ROOT / "src")]
    import ray

    ray.init(num_cpus=SLOTS, include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[float]] = {"ray": [], **{src: [] for src in sources}}
    try:
        for _ in range(args.rounds):
            runs["ray"].append(ray_once())
            for src in sources:
                runs[src].append(spear_once(src))
    finally:
        ray.shutdown()
    result: dict[str, Any] = {
        "workload": f"{len(SECONDS)} tasks on {SLOTS} slots, every 8th 1 s, the rest 0.1 s",
        "best_possible_s": sum(SECONDS) / SLOTS,
        "median_s": {name: round(statistics.median(v), 3) for name, v in runs.items()},
        "runs_s": {name: [round(x, 3) for x in v] for name, v in runs.items()},
        "ray_version": str(ray.__version__),
    }
    RESULT_FILE.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_s"], indent=2))


if __name__ == "__main__":
    main()
