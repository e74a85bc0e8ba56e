"""What a task costs the node when other work runs between its calls (issue 17: why a
task's path costs ~3x as much inside a served process as alone).

    python -m benchmarks.cold_calls [--tasks 2000] [--rounds 2]
    # benchmarks/results/cold_calls.json

A `LocalNode` in this process runs the trivial WASM task one at a time (`node.run`) and
the event loop thread's CPU time for each run is summed. Alone, the runs follow each
other with the interpreter's and the node's working set hot in the CPU's caches. Then the
same runs, each after a blocking round trip to another process (a pipe) which, before it
answers, writes one byte in every cache line of `touch` MiB of its memory, as a client
process and gRPC's own threads do between two calls of a served node on a 2-core machine.
No gRPC and no other part of spear are involved: only where the node's caches stand when
a run begins.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, write_rounds
from benchmarks.versions import measure_in

RESULT_FILE = ROOT / "benchmarks" / "results" / "cold_calls.json"
TOUCH_MIB = (0, 2, 8)

_ROUND = r"""
import json, os, sys, tempfile, time, anyio, wasmtime
from pathlib import Path
import spear
from benchmarks.common import TRIVIAL_WAT

tasks, touch = int(sys.argv[1]), int(sys.argv[2])  # touch < 0: no other process
if touch >= 0:
    to_peer, from_me = os.pipe()
    to_me, from_peer = os.pipe()
    if os.fork() == 0:
        os.close(from_me)  # (so that this process sees the end when the node's closes it)
        os.close(to_me)
        memory = bytearray(max(touch, 1) << 20)
        while os.read(to_peer, 1):
            for i in range(0, len(memory) if touch else 0, 64):
                memory[i] = (memory[i] + 1) & 255
            os.write(from_peer, b"x")
        os._exit(0)
    os.close(to_peer)
    os.close(from_peer)


async def main():
    tmp = Path(tempfile.mkdtemp(prefix="spear-cold-"))
    module = tmp / "trivial.wasm"
    module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
    spec = spear.FunctionSpec(str(module))
    async with spear.LocalNode(tmp / "home") as node:
        for _ in range(50):
            await node.run(spec)
        spent = 0.0
        for _ in range(tasks):
            if touch >= 0:
                os.write(from_me, b"x")
                os.read(to_me, 1)
            cpu = time.thread_time()
            await node.run(spec)
            spent += time.thread_time() - cpu
    print(json.dumps({"node_run_cpu_us": round(spent / tasks * 1e6, 1)}))

anyio.run(main)
if touch >= 0:
    os.close(from_me)
"""


def run(tasks: int, rounds: int) -> dict[str, Any]:
    import spear

    src = str(Path(spear.__file__).parents[1])
    sides = {"alone": -1, **{f"another process between calls, {mib} MiB": mib for mib in TOUCH_MIB}}
    found: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, touch in sides.items():
            us = measure_in(src, _ROUND, str(tasks), str(touch))["node_run_cpu_us"]
            found[name].append(us)
            print(f"{name}: {us} us", flush=True)
    return {
        "tasks": tasks,
        "rounds": found,
        "medians": {name: statistics.median(v) for name, v in found.items()},
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULT_FILE)
    args = p.parse_args(argv)
    write_rounds(run(args.tasks, args.rounds), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
