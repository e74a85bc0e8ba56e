"""What one step costs alone and inside a grpc.aio server under 16 clients (issue 17: why
a task's path costs about twice as much in the daemon as in process).

    python -m benchmarks.grpc_pieces [--rounds 2] [--seconds 4]
    # benchmarks/results/grpc_pieces.json

For each step, a process of its own times it alone (2,000 times, CPU per step), then
serves a bare grpc.aio method that runs the step once per call, under `grpc_floor`'s 16
single-call clients; the round reports the server's event-loop thread's CPU per call. The
step's cost in the server is that, less the loop's CPU per call with no step (`none`).
Steps: pure Python arithmetic; C calls through ctypes (which release the GIL); a `memset`
of 2.5 MiB through ctypes with the GIL released (CDLL) and held (PyDLL); an anonymous
mmap of 1 MiB, two pages touched, unmapped; three LevelDB writes (plyvel); a WASM
module instantiated and run (wasmtime, as spear runs the trivial task).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import ROOT, write_rounds
from benchmarks.grpc_floor import _bare_load, _cpu_s

RESULT_FILE = ROOT / "benchmarks" / "results" / "grpc_pieces.json"
STEPS = ("none", "python", "ctypes_calls", "memset_gil_released", "memset_gil_held",
         "mmap_munmap", "leveldb_writes", "wasm_run")  # fmt: skip

_SERVER = r"""
import asyncio, ctypes, json, mmap, os, sys, tempfile, time
from pathlib import Path
import grpc, grpc.aio, plyvel, wasmtime
from benchmarks.common import TRIVIAL_WAT

step = sys.argv[1]
tmp = Path(tempfile.mkdtemp(prefix="spear-pieces-"))
engine = wasmtime.Engine()
module = wasmtime.Module(engine, wasmtime.wat2wasm(TRIVIAL_WAT))
linker = wasmtime.Linker(engine)
linker.define_wasi()
db = plyvel.DB(str(tmp / "db"), create_if_missing=True)
released, held = ctypes.CDLL(None), ctypes.PyDLL(None)
big = ctypes.create_string_buffer(1 << 18)
count = [0]

def python():
    total = 0
    for i in range(6000):
        total += i

def ctypes_calls():
    for _ in range(40):
        released.getpid()

def memset(lib):
    for _ in range(10):
        lib.memset(big, 1, 1 << 18)

def mmap_munmap():
    m = mmap.mmap(-1, 1 << 20)
    m[0] = m[4096 * 100] = 1
    m.close()

def leveldb_writes():
    for _ in range(3):
        count[0] += 1
        with db.write_batch() as batch:
            batch.put(b"k%d" % (count[0] % 1000), b"v" * 200)
            batch.put(b"rev", b"%d" % count[0])

def wasm_run():
    store = wasmtime.Store(engine)
    config = wasmtime.WasiConfig()
    config.argv = ["trivial"]
    store.set_wasi(config)
    linker.instantiate(store, module).exports(store)["_start"](store)

run = {"none": lambda: None, "python": python, "ctypes_calls": ctypes_calls,
       "memset_gil_released": lambda: memset(released), "memset_gil_held": lambda: memset(held),
       "mmap_munmap": mmap_munmap, "leveldb_writes": leveldb_writes, "wasm_run": wasm_run}[step]
for _ in range(200):
    run()
start = time.process_time()
for _ in range(2000):
    run()
alone_us = (time.process_time() - start) / 2000 * 1e6

async def main():
    async def call(request, context):
        run()
        return b"\x0a\x20" + b"x" * 32
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "floor.Bare", {"Call": grpc.unary_unary_rpc_method_handler(call)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"address": f"127.0.0.1:{port}", "alone_us": alone_us}), flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def _round(step: str, seconds: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, step], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        started = json.loads(server.stdout.readline())
        address = started["address"]
        asyncio.run(_bare_load(address, 1.0))  # (warm)
        loop = f"task/{server.pid}/stat"  # (the main thread: its event loop)
        cpu, begin = _cpu_s(server.pid, loop), time.perf_counter()
        calls = asyncio.run(_bare_load(address, seconds))
        elapsed = time.perf_counter() - begin
        return {
            "alone_us": round(started["alone_us"], 1),
            "server_loop_us_per_call": round((_cpu_s(server.pid, loop) - cpu) / calls * 1e6, 1),
            "calls_per_s": round(calls / elapsed, 1),
        }
    finally:
        server.kill()
        server.wait()


def run(rounds: int, seconds: float) -> dict[str, Any]:
    found: dict[str, list[dict[str, float]]] = {step: [] for step in STEPS}
    for i in range(rounds):
        for step in STEPS if i % 2 == 0 else STEPS[::-1]:
            found[step].append(_round(step, seconds))
            print(step, json.dumps(found[step][-1]), flush=True)
    medians = {
        step: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for step, rs in found.items()
    }
    floor = medians["none"]["server_loop_us_per_call"]
    for figures in medians.values():
        figures["added_in_server_us"] = round(figures["server_loop_us_per_call"] - floor, 1)
    return {"clients": 16, "seconds": seconds, "rounds": found, "medians": medians}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args(argv)
    result = run(args.rounds, args.seconds)
    write_rounds(result, RESULT_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
