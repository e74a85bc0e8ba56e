"""Ray's side of the SPEARlet-SIGKILL fault (issue 16): the time from a node's death to
its retryable tasks running on another node, beside spear's in benchmarks/faults.json.

`ray.cluster_utils.Cluster` on this machine: a head and two more raylets. Three tasks
(`max_retries=3`, each marks its start in a file, then sleeps 2 s) are placed on one
raylet (soft node affinity, so a retry may go elsewhere); once all three run, that raylet
is SIGKILLed (`remove_node(allow_graceful=False)`), and each task's first start on
another node is timed from the kill. Twice: with Ray's default health checks (a node is
dead after 5 missed checks of 3 s), and tuned like spear's lab (checks every 0.3 s, dead
after 10 missed: 3 s, spear's `dead_after_s` there).

`python -m benchmarks.ray_node_death` writes benchmarks/results/ray_node_death.json.
Ray is imported only when it runs.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULT_FILE = Path(__file__).resolve().parent / "results" / "ray_node_death.json"
TUNED = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 10,
}
TASKS = 3


def _starts(marks: Path) -> list[tuple[int, str, float]]:
    out = []
    for line in marks.read_text().splitlines():
        _, i, node, at = line.split()
        out.append((int(i), node, float(at)))
    return out


def one_run(system_config: dict[str, Any]) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "_system_config": dict(system_config)},  # (Ray adds to it)
    )
    try:
        victim = cluster.add_node(num_cpus=TASKS)
        cluster.add_node(num_cpus=TASKS)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        with tempfile.TemporaryDirectory(prefix="ray-node-death-") as tmp:
            marks = Path(tmp) / "marks"
            marks.touch()

            @ray.remote(max_retries=3)
            def job(i: int, path: str) -> str:
                node = ray.get_runtime_context().get_node_id()
                with open(path, "a") as f:
                    f.write(f"start {i} {node} {time.time()}\n")
                time.sleep(2)
                return node

            there = NodeAffinitySchedulingStrategy(victim.node_id, soft=True)
            refs = [
                job.options(scheduling_strategy=there).remote(i, str(marks)) for i in range(TASKS)
            ]
            deadline = time.monotonic() + 60
            while len(_starts(marks)) < TASKS:  # all three running on the victim
                if time.monotonic() > deadline:
                    raise RuntimeError("the tasks did not start")
                time.sleep(0.01)
            on_victim = {n for _, n, _ in _starts(marks)}
            killed = time.time()
            cluster.remove_node(victim, allow_graceful=False)
            ends = ray.get(refs, timeout=180)
            reruns: dict[int, float] = {}
            for i, node, at in _starts(marks):
                if node != victim.node_id and at >= killed and i not in reruns:
                    reruns[i] = at - killed
            return {
                "first_run_on_victim": on_victim == {victim.node_id},
                "completed": len(ends),
                "ended_elsewhere": sum(1 for n in ends if n != victim.node_id),
                "kill_to_rerun_s": {
                    "n": len(reruns),
                    "median": round(statistics.median(reruns.values()), 2) if reruns else None,
                    "max": round(max(reruns.values()), 2) if reruns else None,
                },
            }
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    import ray

    result = {
        "ray": ray.__version__,
        "tasks": TASKS,
        "default_health_checks": one_run({}),
        "tuned_like_spears_lab": {"system_config": TUNED, **one_run(TUNED)},
    }
    RESULT_FILE.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
