"""Where a batch of short tasks spends CPU, process by process, for two versions of spear
side by side (issue 17: "300 at once where they land").

    nice -n 10 python -m benchmarks.batch_cpu BEFORE_SRC AFTER_SRC [--rounds 4] [--batches 30]
    # benchmarks/results/batch_cpu.json

BEFORE_SRC and AFTER_SRC are `src/` directories of two checkouts (e.g. a `git worktree`
of the commit before a change, and this one). Each round starts, for each version in
turn, 3 SPEARlets and an SMS on LevelDB (cluster_bench.three_spearlets: every process
runs that version, through PYTHONPATH), warms them with 3 batches, then sends `--batches`
batches of 300 trivial WASM tasks through node-1 (one SubmitTasks call each, waited:
cluster_bench._at_once, the "300 at once where they land" workload beside Ray), and
reads each process's CPU time (user + system) before and after. The CPU per task of each
process is the steady reading on a shared machine; the rate is reported too. Rounds
alternate which version goes first.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT

RESULT_FILE = ROOT / "benchmarks" / "results" / "batch_cpu.json"

_ONE = r"""
import json, statistics, sys, tempfile, anyio, psutil
from pathlib import Path
from benchmarks import cluster_bench as cb

batches = int(sys.argv[1])
with tempfile.TemporaryDirectory(prefix="spear-batchcpu-") as tmp:
    module = cb.trivial_module(Path(tmp))
    cluster = cb.three_spearlets(Path(tmp), etcd=False)
    with cluster:
        n1 = cluster.member("node-1").address
        procs = {m.name: psutil.Process(m.pid) for m in cluster.members}
        procs["sms"] = psutil.Process(cluster.sms.pid)
        for _ in range(3):
            anyio.run(cb._at_once, n1, str(module), 300, ())
        def cpu():
            return {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
        before, rates = cpu(), []
        for _ in range(batches):
            rates.append(anyio.run(cb._at_once, n1, str(module), 300, ())["tasks_per_s"])
        after = cpu()
print(json.dumps({
    "tasks_per_s_median": statistics.median(rates),
    "cpu_ms_per_task": {k: round((after[k] - before[k]) / (300 * batches) * 1e3, 4)
                        for k in after},
}))
"""


def _measure(src: str, batches: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(src).resolve()), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", _ONE, str(batches)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    found["cpu_ms_per_task"]["total"] = round(sum(found["cpu_ms_per_task"].values()), 4)
    return found


def run(before: str, after: str, rounds: int, batches: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for i in range(rounds):
        order = [("before", before), ("after", after)]
        for name, src in order if i % 2 == 0 else order[::-1]:
            runs[name].append(_measure(src, batches))
            print(name, json.dumps(runs[name][-1]), flush=True)
    medians = {
        name: {
            "tasks_per_s": statistics.median(r["tasks_per_s_median"] for r in found),
            "cpu_ms_per_task": {
                k: statistics.median(r["cpu_ms_per_task"][k] for r in found)
                for k in found[0]["cpu_ms_per_task"]
            },
        }
        for name, found in runs.items()
    }
    return {"before": before, "after": after, "rounds": rounds, "batches": batches,
            "medians": medians, "runs": runs}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--out", type=Path, default=RESULT_FILE)
    args = p.parse_args(argv)
    result = run(args.before, args.after, args.rounds, args.batches)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["load_average"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["medians"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
