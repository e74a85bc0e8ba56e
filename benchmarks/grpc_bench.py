"""spear over gRPC on loopback: a real `spear serve` daemon, clients in this process.

    python -m benchmarks.grpc_bench [--quick]     # writes benchmarks/results/grpc.json

- latency: a trivial WASM task, submit to result, one client, one task at a time: in one
  call (`client.call(spec)`: CallTask, the task and its result) and through the handle
  (`await (await client.submit(spec))`: SubmitTask, then GetResult);
- throughput: many concurrent clients (one connection each), one call per task; and the
  batch call (SubmitTasks, `client.submit_many(..., wait=True)`) from a few clients;
- unary: GetNodeInfo round trips (the transport alone);
- objects: put/get of 1 KiB and 1 MiB through the client (chunked above 1 MiB);
- node_alone: the same trivial tasks on a node in this process, without gRPC, in batches
  like the batch call's: the ceiling the daemon works under on this machine.

The daemon and the clients share this machine's cores (2 on the reference machine): the
numbers are for one node process and one client process side by side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from benchmarks.common import ROOT, TRIVIAL_WAT, machine, summarize

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

RESULT_FILE = ROOT / "benchmarks" / "results" / "grpc.json"
VARIANT = "spear_wasm_grpc"


# The daemon's owner token (read from its data dir once it serves).
_TOKEN: list[str | None] = [None]


class _Daemon:
    def __init__(self, data_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spear", "serve", "--listen", "127.0.0.1:0",
             "--data-dir", str(data_dir), "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().decode().strip()
        if not self.address:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise RuntimeError(f"spear serve did not start: {err}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


async def _timed(n: int, fn: Callable[[], Awaitable[Any]]) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return samples


async def _throughput(
    address: str, clients: int, per_client: int, one: Callable[[Any], Awaitable[int]]
) -> dict[str, Any]:
    """`clients` connections each calling `one(client)` `per_client` times (it returns how
    many tasks it completed); tasks per second over the whole run."""
    from spear.node.client import Client

    conns = [Client(address, token=_TOKEN[0]) for _ in range(clients)]
    done = 0
    try:
        for c in conns:  # connect and warm every client first
            await one(c)

        async def worker(c: Client) -> None:
            nonlocal done
            for _ in range(per_client):
                finished = await one(c)  # (not `done += await ...`: that reads `done` first)
                done += finished

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for c in conns:
                tg.start_soon(worker, c)
        elapsed = time.perf_counter() - start
    finally:
        for c in conns:
            await c.aclose()
    return {"tasks_per_s": round(done / elapsed, 1), "tasks": done, "clients": clients,
            "seconds": round(elapsed, 3)}  # fmt: skip


async def _measure(address: str, module: Path, quick: bool) -> dict[str, Any]:
    from spear import FunctionSpec, TaskState
    from spear.node.client import Client

    spec = FunctionSpec(str(module))
    n = 200 if quick else 2000
    async with Client(address, token=_TOKEN[0]) as client:
        for _ in range(20):  # warm up: upload, compile, connection
            assert (await client.run(spec)).state is TaskState.COMPLETED

        async def via_handle() -> None:
            result = await (await client.submit(spec))
            assert result.task.state is TaskState.COMPLETED

        async def one_call() -> None:
            assert (await client.call(spec)).task.state is TaskState.COMPLETED

        latency = {
            "task": summarize(await _timed(n, one_call)),
            "task (submit, then result)": summarize(await _timed(n, via_handle)),
        }
        unary = summarize(await _timed(n, client.node_info))

        objects: dict[str, Any] = {}
        for label, size, count in (("1KiB", 1024, n), ("1MiB", 1024**2, n // 10)):
            data = os.urandom(size)
            put = await _timed(count, lambda d=data: client.put_object("bench/x", d))
            get = await _timed(count, lambda: client.get_object("bench/x"))
            for op, samples in (("put", put), ("get", get)):
                entry = summarize(samples)
                entry["mib_per_s"] = round(size * len(samples) / sum(samples) / 1024**2, 1)
                objects[f"{op} {label}"] = entry

    async def run_one(c: Any) -> int:
        await c.call(spec)
        return 1

    batch_size = 100

    async def run_batch(c: Any) -> int:
        outcomes = await c.submit_many([spec] * batch_size, wait=True)
        return sum(1 for o in outcomes if getattr(o, "state", None) is TaskState.COMPLETED)

    per = 50 if quick else 400
    single = await _throughput(address, 16, per, run_one)
    batched = await _throughput(address, 4, max(2, per // 25), run_batch)
    batched["batch_size"] = batch_size
    return {
        "latency": {VARIANT: latency},
        "throughput": {
            VARIANT: {"tasks": single},
            f"{VARIANT}_batch": {"tasks": batched},
        },
        "objects": {"spear_grpc": objects},
        "unary_rpc": {"GetNodeInfo": unary},
    }


async def _node_alone(home: Path, module: Path, quick: bool) -> dict[str, Any]:
    """The same tasks on a node in this process, no gRPC: the ceiling the daemon works under."""
    from spear import FunctionSpec, LocalNode

    spec = FunctionSpec(str(module))
    batches = 4 if quick else 16
    async with LocalNode(home) as node:
        for _ in range(20):
            await node.run(spec)

        async def worker() -> None:
            for _ in range(batches):
                tasks = [await node.submit(spec) for _ in range(100)]
                for task in tasks:
                    await node.wait(task.id)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(worker)
        elapsed = time.perf_counter() - start
    done = 4 * batches * 100
    return {"tasks_per_s": round(done / elapsed, 1), "tasks": done, "seconds": round(elapsed, 3)}


def run(quick: bool) -> dict[str, Any]:
    """Start a daemon on a fresh data dir, measure, stop it. `{workload: {variant: ...}}`."""
    import wasmtime

    with tempfile.TemporaryDirectory(prefix="spear-grpc-bench-") as tmp:
        directory = Path(tmp)
        module = directory / "trivial.wasm"
        module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
        daemon = _Daemon(directory / "home")
        from spear.transport.auth import read_owner_token

        _TOKEN[0] = read_owner_token(directory / "home")
        before = os.getloadavg()
        try:
            result = anyio.run(_measure, daemon.address, module, quick)
        finally:
            daemon.stop()
        alone = anyio.run(_node_alone, directory / "alone", module, quick)
    result["node_alone"] = {"tasks": alone}  # in-process, 4 x batches of 100 (no gRPC)
    # Other work on the machine shows in every number here: say how busy it was.
    result["conditions"] = {
        "load_average_1min_before": round(before[0], 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
    }
    return result


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    result = {"machine": machine(), "quick": quick, **run(quick)}
    RESULT_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULT_FILE.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
