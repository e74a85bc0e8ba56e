"""`python -m benchmarks.tls_writes [ROUNDS]`: what coalescing a loop step's writes into
one TLS record (transport/_tls_writes.py) saves, beside grpclib's own write-per-step.

One LocalNode served over mutual TLS on loopback; rounds alternate the two ways of
writing (each round a new server and new connections, both sides writing one way; the
speed-ups' install is held off for the run, or it would put the coalescing back):
`client.call` (RunTask) of a trivial task one at a time (200 calls), and
16 clients calling at once (30 calls each). Results go to
benchmarks/results/tls_writes.json and docs/security.md.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import wasmtime
from grpclib.protocol import H2Protocol

from benchmarks.auth_cost import at_once, one_by_one
from benchmarks.common import TRIVIAL_WAT, summarize
from spear import FunctionSpec, LocalNode
from spear.node.client import Client
from spear.node.server import serve_spearlet
from spear.transport import _speedups, _tls_writes, tls
from spear.transport.channels import Credentials
from spear.transport.serving import Security

ONE_BY_ONE = 200
CLIENTS = 16
PER_CLIENT = 30
WAYS = {"record_per_write": _tls_writes.upstream, "coalesced": _tls_writes._connection_made}


async def measure(rounds: int) -> dict[str, Any]:
    latency: dict[str, list[float]] = {w: [] for w in WAYS}
    rates: dict[str, list[float]] = {w: [] for w in WAYS}
    with tempfile.TemporaryDirectory(prefix="spear-tls-writes-") as tmp:
        root = Path(tmp)
        module = root / "trivial.wasm"
        module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
        spec = FunctionSpec(str(module))
        tls.create_ca(root / "ca")
        tls.issue(root / "ca", "node", root / "node-tls")
        tls.issue(root / "ca", "caller", root / "caller-tls")
        caller = Credentials(tls=tls.TlsFiles(root / "caller-tls"))
        _speedups.install()  # the others once; then each round decides how TLS writes
        _tls_writes.install = lambda: True  # type: ignore[assignment]
        async with LocalNode(root / "home") as node:
            security = Security.for_data_dir(root / "home", root / "node-tls")
            for r in range(rounds):
                for way in WAYS if r % 2 == 0 else tuple(reversed(WAYS)):
                    H2Protocol.connection_made = WAYS[way]  # type: ignore[method-assign]
                    server = await serve_spearlet(node, "127.0.0.1:0", security=security)
                    assert server.address is not None
                    clients = [Client(server.address, credentials=caller) for _ in range(CLIENTS)]
                    try:
                        for c in clients:
                            await c.call(spec)  # connected and warm
                        latency[way] += await one_by_one(clients[0], spec, ONE_BY_ONE)
                        rates[way].append(await at_once(clients, spec, PER_CLIENT))
                    finally:
                        for c in clients:
                            await c.aclose()
                        await server.close()
    H2Protocol.connection_made = _tls_writes._connection_made  # type: ignore[method-assign]
    return {
        way: {
            "call": summarize(latency[way]),
            "16_clients_tasks_per_s": round(statistics.median(rates[way]), 1),
        }
        for way in WAYS
    }


def main(argv: list[str]) -> int:
    result = anyio.run(measure, int(argv[0]) if argv else 10)
    base, new = result["record_per_write"], result["coalesced"]
    new["call_median_vs_record_per_write"] = round(
        new["call"]["median_ms"] / base["call"]["median_ms"], 3
    )
    new["16_clients_vs_record_per_write"] = round(
        new["16_clients_tasks_per_s"] / base["16_clients_tasks_per_s"], 3
    )
    out = Path(__file__).parent / "results" / "tls_writes.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
