"""`python -m benchmarks.auth_cost [ROUNDS]`: what authentication and TLS cost a call.

One LocalNode served three ways on loopback, interleaved round by round:
- `open`: no credential checked (`Security.open()`, what spear served before issue 14);
- `token`: every call authorized by its bearer token (the default);
- `tls`: a member's certificate over mutual TLS (how cluster processes call each other).
Each round measures `client.call` (RunTask) of a trivial task one at a time, and 16
clients calling at once. Results go to benchmarks/results/auth.json and docs/security.md.
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


async def _one_by_one(client: Client, spec: FunctionSpec) -> list[float]:
    samples = []
    for _ in range(ONE_BY_ONE):
        t0 = time.perf_counter()
        await client.call(spec)
        samples.append(time.perf_counter() - t0)
    return samples


async def _at_once(clients: list[Client], spec: FunctionSpec) -> float:
    async def worker(c: Client) -> None:
        for _ in range(PER_CLIENT):
            await c.call(spec)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in clients:
            tg.start_soon(worker, c)
    return CLIENTS * PER_CLIENT / (time.perf_counter() - t0)


async def measure(rounds: int) -> dict[str, Any]:
    modes = ("open", "token", "tls")
    latency: dict[str, list[float]] = {m: [] for m in modes}
    rates: dict[str, list[float]] = {m: [] for m in modes}
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
                        latency[mode] += await _one_by_one(clients[0], spec)
                        rates[mode].append(await _at_once(clients, spec))
                    finally:
                        for c in clients:
                            await c.aclose()
                        await server.close()
    return {
        mode: {
            "call": summarize(latency[mode]),
            "16_clients_tasks_per_s": round(statistics.median(rates[mode]), 1),
        }
        for mode in modes
    }


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 4
    result = anyio.run(measure, rounds)
    base = result["open"]
    for mode in ("token", "tls"):
        result[mode]["call_median_vs_open"] = round(
            result[mode]["call"]["median_ms"] / base["call"]["median_ms"], 3
        )
        result[mode]["16_clients_vs_open"] = round(
            result[mode]["16_clients_tasks_per_s"] / base["16_clients_tasks_per_s"], 3
        )
    out = Path(__file__).parent / "results" / "auth.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
