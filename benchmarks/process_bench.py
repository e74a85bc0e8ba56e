"""Process agents: submit-to-result latency of a trivial Python agent, cold vs warm.

`python -m benchmarks` imports `run(quick)` and puts the numbers beside Ray's trivial task;
alone, `python -m benchmarks.process_bench [--quick]` writes
benchmarks/results/process.json. Nothing here asserts a timing.

- cold: `node.run` of a `.py` agent as a new interpreter (fork + exec of Python, its
  start-up, the script, exit, reap), the task recorded as for any task;
- warm: the same spec with `warm=True`, forked from the pre-started Python
  (`runtimes/process/forkserver.py`), which has the SDK imported already;
- reuse: `warm=True, reuse=True`: the warm process that ran the last task of the same
  function runs the next (`runtimes/process/reuse.py`), as Ray reuses a worker;
- `task` is an agent whose body is `pass`; `task (imports SDK)` does
  `from spear import agent` and one `agent.log`, a realistic smallest agent;
- `exec /bin/true` is the runtime's floor for a non-Python program;
- `python -c pass` is a bare interpreter start on this machine, outside spear;
- `beside_ray` (only when `python -m benchmarks` has started Ray already): the warm
  trivial agent (a process per task, and reused) and Ray's trivial remote function in
  alternating rounds of the same minutes, since the `latency` workload measures Ray a
  minute earlier, under another load.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from benchmarks.common import ROOT, standalone, summarize
from benchmarks.local_bench import concurrent_runs

if TYPE_CHECKING:
    from spear import FunctionSpec, LocalNode, Task

RESULT_FILE = ROOT / "benchmarks" / "results" / "process.json"
VARIANTS = (  # name, warm, reuse
    ("spear_process_cold", False, False),
    ("spear_process_warm", True, False),
    ("spear_process_reuse", True, True),
)
TRIVIAL = "pass\n"
WITH_SDK = "from spear import agent\nagent.log('hello')\n"


def counts(quick: bool) -> dict[str, int]:
    return {
        "cold": 30 if quick else 100,
        "warm": 200 if quick else 1000,
        "throughput": 100 if quick else 400,
    }


async def _latency(node: LocalNode, spec: FunctionSpec, n: int) -> list[float]:
    from spear import TaskState

    first = await node.run(spec)  # starts the fork server / warms the page cache
    if first.state is not TaskState.COMPLETED:
        raise RuntimeError(await _failure(node, first))
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        task = await node.run(spec)
        samples.append(time.perf_counter() - t0)
        if task.state is not TaskState.COMPLETED:
            raise RuntimeError(await _failure(node, task))
    return samples


async def _failure(node: LocalNode, task: Task) -> str:
    """Why a benchmark agent failed, with the last line it wrote to stderr."""
    lines = (await node.logs_of(task.id, "stderr")).decode(errors="replace").strip()
    last = lines.splitlines()[-1] if lines else "(nothing on stderr)"
    return f"benchmark agent ended {task.state.value}: {task.reason}: {last}"


async def _beside_ray(
    node: LocalNode, spec: FunctionSpec, reused: FunctionSpec, n: int
) -> dict[str, Any] | None:
    """Warm trivial agents (a process per task, and reused) and Ray's trivial task, `n` of
    each, in 10 alternating rounds (None when Ray was not started by this run)."""
    from benchmarks import ray_bench

    trivial = ray_bench._remote.get("trivial")
    if trivial is None:
        return None
    spear: list[float] = []
    reuse: list[float] = []
    ray: list[float] = []
    rounds = 10
    for _ in range(rounds):
        spear += await _latency(node, spec, max(1, n // rounds))
        reuse += await _latency(node, reused, max(1, n // rounds))
        ray += ray_bench.latency(max(1, n // rounds), trivial)  # (blocks the loop: idle now)
    return {
        "spear_process_warm": {"task": summarize(spear)},
        "spear_process_reuse": {"task": summarize(reuse)},
        "ray_remote_function": {"task": summarize(ray)},
        "rounds": rounds,
    }


def _python_startup(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        samples.append(time.perf_counter() - t0)
    return samples


def run(quick: bool) -> dict[str, Any]:
    """Measure; `latency` and `throughput` map to the cold and warm variants."""
    from spear import FunctionSpec, LocalNode, Runtime

    n = counts(quick)

    async def main(directory: Path) -> dict[str, Any]:
        trivial = directory / "trivial.py"
        trivial.write_text(TRIVIAL)
        with_sdk = directory / "with_sdk.py"
        with_sdk.write_text(WITH_SDK)

        def spec(path: Path, warm: bool, reuse: bool = False) -> FunctionSpec:
            return FunctionSpec(str(path), runtime=Runtime.PROCESS, warm=warm, reuse=reuse)

        # Generous capacity: throughput measures the runtime, not the admission queue.
        async with LocalNode(directory / "home", cpu_millis=10**6, memory_bytes=1 << 50) as node:
            latency: dict[str, dict[str, Any]] = {}
            throughput: dict[str, dict[str, Any]] = {}
            for variant, warm, reuse in VARIANTS:
                count = n["warm"] if warm else n["cold"]
                latency[variant] = {
                    "task": summarize(await _latency(node, spec(trivial, warm, reuse), count)),
                    "task (imports SDK)": summarize(
                        await _latency(node, spec(with_sdk, warm, reuse), count)
                    ),
                }
                throughput[variant] = {
                    "tasks": await concurrent_runs(
                        node, spec(trivial, warm, reuse), n["throughput"]
                    )
                }
            beside_ray = await _beside_ray(
                node, spec(trivial, True), spec(trivial, True, True), n["warm"]
            )
            true = FunctionSpec("/bin/true", runtime=Runtime.PROCESS)
            latency["spear_process_exec"] = {
                "exec /bin/true": summarize(await _latency(node, true, n["cold"]))
            }
        return {
            "latency": latency,
            "throughput": throughput,
            "baseline": {"python -c pass": summarize(_python_startup(n["cold"]))},
            "counts": n,
            **({"beside_ray": beside_ray} if beside_ray is not None else {}),
        }

    with tempfile.TemporaryDirectory(prefix="spear-procbench-") as tmp:
        return anyio.run(main, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    result = standalone(__doc__, run, RESULT_FILE, argv)
    for workload in ("latency", "throughput"):
        for variant, metrics in result[workload].items():
            for metric, value in metrics.items():
                shown = value.get("median_ms", value.get("tasks_per_s"))
                print(f"{workload:10} {variant:22} {metric:20} {shown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
