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

import sys
from typing import Any

from benchmarks.common import ROOT
from benchmarks.versions import alternate, main, measure_in

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
    found = measure_in(src, _ONE, str(batches))
    found["cpu_ms_per_task"]["total"] = round(sum(found["cpu_ms_per_task"].values()), 4)
    return found


def run(before: str, after: str, rounds: int, counts: dict[str, int]) -> dict[str, Any]:
    return alternate(before, after, rounds, lambda src: _measure(src, counts["batches"]))


if __name__ == "__main__":
    sys.exit(main(None, __doc__, RESULT_FILE, {"batches": 30}, run))
