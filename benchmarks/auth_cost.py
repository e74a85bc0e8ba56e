"""`python -m benchmarks.auth_cost [ROUNDS]`: what authentication and TLS cost a call.

One LocalNode served three ways on loopback, interleaved round by round:
- `open`: no credential checked (`Security.open()`, what spear served before issue 14);
- `token`: every call authorized by its bearer token (the default);
- `tls`: a member's certificate over mutual TLS (how cluster processes call each other).
Each round measures `client.call` (CallTask) of a trivial task one at a time, 16
clients calling at once, and batches (`submit_many(..., wait=True)`, SubmitTasks) of
200 tasks. Results go to benchmarks/results/auth.json and docs/security.md.

Then, in the same run (unless Ray is not installed), the peer: a local Ray
(`ray.init(num_cpus=2)`) with its token authentication on (`RAY_AUTH_MODE=token`, its
default for a local cluster) and off, alternately: `ray.get(f.remote())` of a trivial
function one at a time, from 16 threads at once, and `ray.get` of 200 at once.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import wasmtime

from benchmarks.common import TRIVIAL_WAT, summarize
from spear import FunctionSpec, LocalNode
from spear.node.client import Client
from spear.node.server import serve_spearlet
from spear.transport import tls
from spear.transport.auth import read_owner_token
from spear.transport.channels import Credentials
from spear.transport.serving import Security

ONE_BY_ONE = 300
CLIENTS = 16
PER_CLIENT = 40
BATCH = 200
BATCHES = 3


async def one_by_one(client: Client, spec: FunctionSpec, n: int = ONE_BY_ONE) -> list[float]:
    """Latency samples of `n` calls, one at a time."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.call(spec)
        samples.append(time.perf_counter() - t0)
    return samples


async def at_once(clients: list[Client], spec: FunctionSpec, per_client: int = PER_CLIENT) -> float:
    """Tasks/s of every client making `per_client` calls, all at once."""

    async def worker(c: Client) -> None:
        for _ in range(per_client):
            await c.call(spec)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in clients:
            tg.start_soon(worker, c)
    return len(clients) * per_client / (time.perf_counter() - t0)


async def _batches(client: Client, spec: FunctionSpec) -> float:
    t0 = time.perf_counter()
    for _ in range(BATCHES):
        done = await client.submit_many([spec] * BATCH, wait=True)
        assert all(not isinstance(t, Exception) for t in done)
    return BATCHES * BATCH / (time.perf_counter() - t0)


async def measure(rounds: int) -> dict[str, Any]:
    modes = ("open", "token", "tls")
    latency: dict[str, list[float]] = {m: [] for m in modes}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    batches: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="spear-auth-cost-") as tmp:
        root = Path(tmp)
        module = root / "trivial.wasm"
        module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
        spec = FunctionSpec(str(module))
        tls.create_ca(root / "ca")
        tls.issue(root / "ca", "node", root / "node-tls")
        tls.issue(root / "ca", "caller", root / "caller-tls")
        async with LocalNode(root / "home") as node:
            security = {
                "open": Security.open(),
                "token": Security.for_data_dir(root / "home"),
                "tls": Security.for_data_dir(root / "home", root / "node-tls"),
            }
            credentials = {
                "open": Credentials(),
                "token": Credentials(token=read_owner_token(root / "home")),
                "tls": Credentials(tls=tls.TlsFiles(root / "caller-tls")),
            }
            for r in range(rounds):
                for mode in modes if r % 2 == 0 else tuple(reversed(modes)):
                    server = await serve_spearlet(node, "127.0.0.1:0", security=security[mode])
                    assert server.address is not None
                    clients = [
                        Client(server.address, credentials=credentials[mode])
                        for _ in range(CLIENTS)
                    ]
                    try:
                        for c in clients:
                            await c.call(spec)  # connected and warm
                        latency[mode] += await one_by_one(clients[0], spec)
                        rates[mode].append(await at_once(clients, spec))
                        batches[mode].append(await _batches(clients[0], spec))
                    finally:
                        for c in clients:
                            await c.aclose()
                        await server.close()
    return {
        mode: {
            "call": summarize(latency[mode]),
            "16_clients_tasks_per_s": round(statistics.median(rates[mode]), 1),
            "batch_tasks_per_s": round(statistics.median(batches[mode]), 1),
        }
        for mode in modes
    }


def _ray_round(mode: str) -> tuple[list[float], float, float]:
    """One round of Ray with token authentication `mode` ("token" or "disabled")."""
    import concurrent.futures
    import os

    os.environ["RAY_AUTH_MODE"] = mode  # (read when ray is imported: set before)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        def trivial() -> None:
            return None

        ray.get([trivial.remote() for _ in range(8)])  # workers started and warm
        samples = []
        for _ in range(ONE_BY_ONE):
            t0 = time.perf_counter()
            ray.get(trivial.remote())
            samples.append(time.perf_counter() - t0)

        def worker() -> None:
            for _ in range(PER_CLIENT):
                ray.get(trivial.remote())

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            for f in [pool.submit(worker) for _ in range(CLIENTS)]:
                f.result()
        rate = CLIENTS * PER_CLIENT / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(BATCHES):
            ray.get([trivial.remote() for _ in range(BATCH)])
        return samples, rate, BATCHES * BATCH / (time.perf_counter() - t0)
    finally:
        ray.shutdown()


def measure_ray(rounds: int) -> dict[str, Any]:
    """Ray with its token authentication on and off, alternately, `rounds` rounds, each
    in a process of its own (Ray keeps its authentication mode for the process)."""
    import os
    import subprocess

    import ray

    modes = ("token", "disabled")
    latency: dict[str, list[float]] = {m: [] for m in modes}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    batches: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in modes if r % 2 == 0 else tuple(reversed(modes)):
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.auth_cost", "--ray-round", mode],
                env={**os.environ, "RAY_AUTH_MODE": mode},
                capture_output=True,
                check=True,
                timeout=600,
            )
            one = json.loads(done.stdout.decode().strip().splitlines()[-1])
            latency[mode] += one["samples"]
            rates[mode].append(one["rate"])
            batches[mode].append(one["batch"])
    out: dict[str, Any] = {"version": ray.__version__}
    for mode in modes:
        out[mode] = {
            "call": summarize(latency[mode]),
            "16_clients_tasks_per_s": round(statistics.median(rates[mode]), 1),
            "batch_tasks_per_s": round(statistics.median(batches[mode]), 1),
        }
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--ray-round"]:  # one round of Ray, in this process (measure_ray)
        samples, rate, batch = _ray_round(argv[1])
        sys.stdout.write(json.dumps({"samples": samples, "rate": rate, "batch": batch}) + "\n")
        return 0
    rounds = int(argv[0]) if argv else 4
    result = anyio.run(measure, rounds)
    try:
        result["ray"] = measure_ray(max(2, rounds // 2))
    except ImportError:
        result["ray"] = {"skipped": "Ray is not installed"}
    base = result["open"]
    for mode in ("token", "tls"):
        result[mode]["call_median_vs_open"] = round(
            result[mode]["call"]["median_ms"] / base["call"]["median_ms"], 3
        )
        result[mode]["16_clients_vs_open"] = round(
            result[mode]["16_clients_tasks_per_s"] / base["16_clients_tasks_per_s"], 3
        )
        result[mode]["batch_vs_open"] = round(
            result[mode]["batch_tasks_per_s"] / base["batch_tasks_per_s"], 3
        )
    out = Path(__file__).parent / "results" / "auth.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
