"""Object store: put/get latency and throughput for 1 KiB, 1 MiB and 64 MiB values, from
Python (`node.objects`) and from a WASM agent (hostcalls), and one hostcall's round trip.

`python -m benchmarks` imports `run(quick)`; alone, `python -m benchmarks.objects_bench
[--quick]` writes benchmarks/results/objects.json. Every number comes from this machine;
nothing here asserts a timing.

- `get` from Python is the store's answer, a memoryview of the mapped file (no copy);
  `get+copy` also copies it into a `bytes`, as a caller needing its own bytes would.
- A wasm `put` hands the store a view of guest memory (written to the value file with no
  intermediate copy); a wasm `get` copies the value into the guest's buffer.
- Values over 4 KiB are files, fsynced only with `kv_sync`; 1 KiB values live in the KV.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import ROOT, build_c, standalone, summarize

SIZES = {"1KiB": 1024, "1MiB": 1024**2, "64MiB": 64 * 1024**2}
RESULT_FILE = ROOT / "benchmarks" / "results" / "objects.json"


def counts(quick: bool) -> dict[str, int]:
    return {
        "1KiB": 200 if quick else 1000,
        "1MiB": 50 if quick else 200,
        "64MiB": 5 if quick else 20,
    }


def build_agent(directory: Path) -> Path:
    return build_c(ROOT / "benchmarks" / "agents" / "objbench.c", directory / "objbench.wasm")


def _throughput(samples: list[float], size: int) -> dict[str, float]:
    total = sum(samples)
    return {
        "ops_per_s": round(len(samples) / total, 1) if total else 0.0,
        "mib_per_s": round(len(samples) * size / total / 1024**2, 1) if total else 0.0,
    }


async def _python(node: Any, n: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    store = node.objects
    for label, size in SIZES.items():
        payload = os.urandom(size)
        puts, gets, copies = [], [], []
        for i in range(n[label]):
            key = f"bench/py/{label}/{i}"
            t0 = time.perf_counter()
            await store.put(key, payload)
            t1 = time.perf_counter()
            value, _ = await store.get(key)
            t2 = time.perf_counter()
            data = bytes(value)
            t3 = time.perf_counter()
            if len(data) != size:
                raise RuntimeError(f"got {len(data)} bytes back, not {size}")
            del value, data
            await store.delete(key)
            puts.append(t1 - t0)
            gets.append(t2 - t1)
            copies.append(t3 - t1)
        out[f"put {label}"] = {**summarize(puts), **_throughput(puts, size)}
        out[f"get {label}"] = {**summarize(gets), **_throughput(gets, size)}
        out[f"get+copy {label}"] = {**summarize(copies), **_throughput(copies, size)}
    return out


async def _wasm(node: Any, agent: Path, n: dict[str, int]) -> dict[str, Any]:
    from spear import FunctionSpec, TaskState

    out: dict[str, Any] = {}
    for label, size in SIZES.items():
        spec = FunctionSpec(str(agent), args=("objects", label, str(size), str(n[label])))
        task = await node.run(spec)
        if task.state is not TaskState.COMPLETED:
            raise RuntimeError(f"the wasm agent failed: {task.reason}")
        for line in (await node.logs_of(task.id, "stdout")).decode().splitlines():
            op, name, *ns = line.split()
            samples = [int(x) / 1e9 for x in ns]
            out[f"{op} {name}"] = {**summarize(samples), **_throughput(samples, size)}
    return out


async def _hostcall(node: Any, agent: Path, quick: bool) -> dict[str, Any]:
    from spear import FunctionSpec

    n = 20_000 if quick else 100_000
    task = await node.run(FunctionSpec(str(agent), args=("hostcall", str(n))))
    out: dict[str, Any] = {"calls": n}
    for line in (await node.logs_of(task.id, "stdout")).decode().splitlines():
        name, ns = line.split()
        out[f"{name}_us"] = round(int(ns) / 1000, 2)
    return out


def run(quick: bool) -> dict[str, Any]:
    """Measure; the result maps the `objects` workload to its variants, plus raw extras."""
    from spear import LocalNode

    n = counts(quick)

    async def main(directory: Path) -> dict[str, Any]:
        agent = build_agent(directory)
        async with LocalNode(directory / "home", object_gc_interval_s=0) as node:
            python = await _python(node, n)
            wasm = await _wasm(node, agent, n)
            hostcall = await _hostcall(node, agent, quick)
        return {
            "objects": {"spear_inprocess": python, "spear_wasm_agent": wasm},
            "hostcall_round_trip": hostcall,
            "counts": n,
        }

    with tempfile.TemporaryDirectory(prefix="spear-objbench-") as tmp:
        return anyio.run(main, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    standalone(__doc__, run, RESULT_FILE, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
