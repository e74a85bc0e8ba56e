"""The floor of 16 single-call gRPC clients on this machine (issue 17: "16 gRPC clients at
least 1.5x Ray"): a bare grpc.aio server whose handler answers at once, beside a `spear
serve` daemon running a trivial WASM task per call (CallTask), with the same 16 clients,
in alternating rounds of one run.

    python -m benchmarks.grpc_floor [--rounds 3] [--seconds 6] [--ray]
    # benchmarks/results/grpc_floor.json

Each side runs in a process of its own, the clients in this one (16 channels, one call at
a time each), as `grpc_bench`'s 16-client workload does; each round reports calls per
second and the server process's CPU per call. What lies between the two rows is spear's
own path (admission, the task's records, its run, its result), not gRPC's. A third side,
the same bare server whose handler runs the trivial task on a `LocalNode` in its process
(`node.run`, nothing else of spear's), is the least any spear server could do a call;
`--ray` alternates Ray's throughput workload (the issue's peer) with them.

Then, in a process of its own, the task's part of that path without gRPC: a `LocalNode`'s
CPU per trivial task run one at a time (`node.run`), by 16 concurrent callers, and in
`run_many` waves of 8 and 16 (what concurrent calls coalesced into waves would cost).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import ROOT, TRIVIAL_WAT, write_rounds
from benchmarks.versions import measure_in

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

RESULT_FILE = ROOT / "benchmarks" / "results" / "grpc_floor.json"
CLIENTS = 16
_METHOD = "/floor.Bare/Call"
_REQUEST = b"\x0a\x10" + b"y" * 16

# A bare grpc.aio method answering at once; given a data dir and a module, the least a
# spear server could do per call instead: the handler runs the trivial task on a LocalNode
# in its process (`node.run`: its records, its guest, its result kept) and answers its
# state; no auth, no spear message, no namespace, no output read. What 16 clients get from
# that bounds any spear server on this machine from above.
_SERVER = r"""
import asyncio, contextlib, sys, grpc, grpc.aio

async def main(home=None, module=None):
    async with contextlib.AsyncExitStack() as stack:
        async def call(request, context):
            return b"\x0a\x20" + b"x" * 32
        if home is not None:
            import spear
            spec = spear.FunctionSpec(module)
            node = await stack.enter_async_context(spear.LocalNode(home))
            async def call(request, context):
                task = await node.run(spec)
                return task.state.value.encode()
        handler = grpc.unary_unary_rpc_method_handler(call)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("floor.Bare", {"Call": handler})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

asyncio.run(main(*sys.argv[1:3]))
"""


def _cpu_s(pid: int, stat: str = "stat") -> float:
    """The CPU seconds of process `pid` (or of one of its threads: `stat` =
    "task/<tid>/stat")."""
    fields = Path(f"/proc/{pid}/{stat}").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _closed_loop(calls: list[Callable[[], Awaitable[Any]]], seconds: float) -> int:
    """Each of `calls` made again and again, one at a time each, for `seconds` (after one
    call each to connect); how many were made."""
    for call in calls:
        await call()
    done = 0
    end = time.perf_counter() + seconds

    async def worker(call: Callable[[], Awaitable[Any]]) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1

    await asyncio.gather(*(worker(c) for c in calls))
    return done


async def _bare_load(address: str, seconds: float) -> int:
    import grpc.aio

    channels = [grpc.aio.insecure_channel(address) for _ in range(CLIENTS)]
    try:
        methods = [c.unary_unary(_METHOD) for c in channels]
        return await _closed_loop([functools.partial(m, _REQUEST) for m in methods], seconds)
    finally:
        for channel in channels:
            await channel.close()


async def _spear_load(address: str, token: str, module: str, seconds: float) -> int:
    from spear import FunctionSpec
    from spear.node.client import Client

    spec = FunctionSpec(module)
    clients = [Client(address, token=token) for _ in range(CLIENTS)]
    try:
        return await _closed_loop([functools.partial(c.call, spec) for c in clients], seconds)
    finally:
        for client in clients:
            await client.aclose()


def _timed(pid: int, seconds: float, load: Any) -> dict[str, float]:
    asyncio.run(load(1.0))  # (warm: connections, the module's compile)
    cpu, mine, start = _cpu_s(pid), time.process_time(), time.perf_counter()
    calls = asyncio.run(load(seconds))
    elapsed, spent = time.perf_counter() - start, _cpu_s(pid) - cpu
    return {
        "calls_per_s": round(calls / elapsed, 1),
        "server_cpu_us_per_call": round(spent / calls * 1e6, 1),
        "clients_cpu_us_per_call": round((time.process_time() - mine) / calls * 1e6, 1),
    }


def _bare_round(seconds: float, *args: str) -> dict[str, float]:
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        address = server.stdout.readline().strip()
        return _timed(server.pid, seconds, lambda s: _bare_load(address, s))
    finally:
        server.kill()
        server.wait()


def _task_round(seconds: float) -> dict[str, float]:
    import wasmtime

    with tempfile.TemporaryDirectory(prefix="spear-floor-") as tmp:
        module = Path(tmp) / "trivial.wasm"
        module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
        home = str(Path(tmp) / "home")
        return _bare_round(seconds, home, str(module))


def _ray_round(seconds: float) -> dict[str, float]:
    """Ray's throughput workload (`ray_bench.throughput`: trivial remote functions at once,
    about `seconds`' worth), the peer of issue 17's 16-client target."""
    from benchmarks import ray_bench

    return {"calls_per_s": float(ray_bench.throughput(int(2500 * seconds))["tasks_per_s"])}


def _spear_round(seconds: float) -> dict[str, float]:
    import wasmtime

    from benchmarks.grpc_bench import _Daemon
    from spear.transport.auth import read_owner_token

    with tempfile.TemporaryDirectory(prefix="spear-floor-") as tmp:
        module = Path(tmp) / "trivial.wasm"
        module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
        daemon = _Daemon(Path(tmp) / "home")
        try:
            token = read_owner_token(Path(tmp) / "home")
            assert token is not None
            load = lambda s: _spear_load(daemon.address, token, str(module), s)  # noqa: E731
            return _timed(daemon.proc.pid, seconds, load)
        finally:
            daemon.stop()


_IN_PROCESS = r"""
import json, sys, tempfile, time, anyio, wasmtime
from pathlib import Path
import spear
from benchmarks.common import TRIVIAL_WAT

async def main(n):
    tmp = Path(tempfile.mkdtemp(prefix="spear-floor-"))
    module = tmp / "trivial.wasm"
    module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
    spec = spear.FunctionSpec(str(module))
    out = {}
    async with spear.LocalNode(tmp / "home") as node:
        for _ in range(50):
            await node.run(spec)

        async def callers(count):
            async def one():
                for _ in range(n // count):
                    await node.run(spec)
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(one)

        async def waves(size):
            for _ in range(n // size):
                await node.run_many([spec] * size)

        for name, work in (("run_one_at_a_time", callers(1)), ("run_16_callers", callers(16)),
                           ("run_many_waves_of_8", waves(8)), ("run_many_waves_of_16", waves(16))):
            cpu = time.process_time()
            await work
            out[name] = round((time.process_time() - cpu) / n * 1e6, 1)
    print(json.dumps(out))

anyio.run(main, int(sys.argv[1]))
"""


def _in_process(tasks: int = 4000) -> dict[str, float]:
    """CPU us per task of the node's task path alone, in a process of its own (the spear
    this one imports)."""
    import spear

    return measure_in(str(Path(spear.__file__).parents[1]), _IN_PROCESS, str(tasks))


def run(rounds: int, seconds: float, ray: bool = False) -> dict[str, Any]:
    order: list[tuple[str, Callable[[float], dict[str, float]]]] = [
        ("bare_grpc_aio", _bare_round),
        ("grpc_aio_with_the_task", _task_round),
        ("spear_call_task", _spear_round),
    ]
    if ray:
        from benchmarks import ray_bench

        ray_bench.start()
        _ray_round(0.5)  # (warm: its workers)
        order.append(("ray_throughput", _ray_round))
    found: dict[str, list[dict[str, float]]] = {name: [] for name, _ in order}
    try:
        for i in range(rounds):
            for name, one in order if i % 2 == 0 else order[::-1]:
                found[name].append(one(seconds))
                print(name, json.dumps(found[name][-1]), flush=True)
    finally:
        if ray:
            ray_bench.stop()
    medians = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in found.items()
    }
    in_process = [_in_process() for _ in range(rounds)]
    print("in_process_cpu_us_per_task", json.dumps(in_process), flush=True)
    medians["in_process_cpu_us_per_task"] = {
        k: statistics.median(r[k] for r in in_process) for k in in_process[0]
    }
    return {"clients": CLIENTS, "seconds": seconds, "rounds": found, "medians": medians,
            "in_process_cpu_us_per_task": in_process}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--ray", action="store_true", help="Ray's throughput rounds beside them")
    p.add_argument("--out", type=Path, default=RESULT_FILE)
    args = p.parse_args(argv)
    result = run(args.rounds, args.seconds, args.ray)
    write_rounds(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
