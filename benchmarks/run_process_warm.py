"""A warm trivial Python agent, the ways of running it side by side in one process.

`python -m benchmarks.run_process_warm [--quick]` writes
benchmarks/results/run_process_warm.json. Two nodes (`LocalNode`) in this process, the
variants in alternating rounds so each sees the same machine:

- `join+thread`: how warm tasks ran before issue 21's second pass: the child moves into
  a task cgroup the node made, and a supervising thread watches it (the fork server
  started without a cgroup directory; `loop_watch.LOOP_WINDOW_S = 0`);
- `join+loop`, `spare+thread`: one of the two changes each;
- `spare+loop`: as warm tasks run now (spares in cgroups of their own, a short task's end
  seen on the event loop).

Each variant: latency summary (median, p99, min, ...) and the node process's CPU per task
(`time.process_time`, all its threads). Where cgroup v2 is not writable, the `join` and
`spare` variants are the same. Nothing here asserts a timing.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from benchmarks.common import ROOT, standalone, summarize

if TYPE_CHECKING:
    from spear import FunctionSpec, LocalNode

RESULT_FILE = ROOT / "benchmarks" / "results" / "run_process_warm.json"


def counts(quick: bool) -> dict[str, int]:
    return {"per_round": 25, "rounds": 8 if quick else 16}


async def _round(node: LocalNode, spec: FunctionSpec, n: int) -> tuple[list[float], float]:
    from spear import TaskState

    samples = []
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        task = await node.run(spec)
        samples.append(time.perf_counter() - t0)
        if task.state is not TaskState.COMPLETED:
            raise RuntimeError(f"the trivial agent ended {task.state.value}: {task.reason}")
    return samples, time.process_time() - cpu0


def run(quick: bool) -> dict[str, Any]:
    from spear import FunctionSpec, LocalNode, Runtime
    from spear.runtimes.process import forkserver, loop_watch

    n = counts(quick)

    async def main(directory: Path) -> dict[str, Any]:
        script = directory / "trivial.py"
        script.write_text("pass\n")
        spec = FunctionSpec(str(script), runtime=Runtime.PROCESS, warm=True)
        big = 1 << 50
        async with (
            LocalNode(directory / "join", cpu_millis=10**6, memory_bytes=big) as join,
            LocalNode(directory / "spare", cpu_millis=10**6, memory_bytes=big) as spare,
        ):
            init = forkserver.ForkServer.__init__

            def without_spare_cgroups(
                self: forkserver.ForkServer, spares: int, cgroup_dir: str | None = None
            ) -> None:
                init(self, spares, None)

            forkserver.ForkServer.__init__ = without_spare_cgroups  # type: ignore[method-assign]
            try:
                await join.run(spec)  # its fork server: children join the task's cgroup
            finally:
                forkserver.ForkServer.__init__ = init  # type: ignore[method-assign]
            await spare.run(spec)
            window = loop_watch.LOOP_WINDOW_S
            variants = {
                "join+thread": (join, 0.0),
                "join+loop": (join, window),
                "spare+thread": (spare, 0.0),
                "spare+loop": (spare, window),
            }
            samples: dict[str, list[float]] = {name: [] for name in variants}
            cpu = dict.fromkeys(variants, 0.0)
            try:
                for _ in range(n["rounds"]):
                    for name, (node, seconds) in variants.items():
                        loop_watch.LOOP_WINDOW_S = seconds
                        got, used = await _round(node, spec, n["per_round"])
                        samples[name] += got
                        cpu[name] += used
            finally:
                loop_watch.LOOP_WINDOW_S = window
        return {
            name: {
                "task": summarize(xs),
                "node_cpu_ms_per_task": round(cpu[name] / len(xs) * 1e3, 3),
            }
            for name, xs in samples.items()
        }

    with tempfile.TemporaryDirectory(prefix="spear-warmbench-") as tmp:
        return {"variants": anyio.run(main, Path(tmp)), "counts": n}


def main(argv: list[str] | None = None) -> int:
    result = standalone(__doc__, run, RESULT_FILE, argv)
    for name, value in result["variants"].items():
        task = value["task"]
        print(
            f"{name:13} median {task['median_ms']:.2f} ms  p99 {task['p99_ms']:.2f}  "
            f"min {task['min_ms']:.2f}  node CPU/task {value['node_cpu_ms_per_task']:.3f} ms",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
