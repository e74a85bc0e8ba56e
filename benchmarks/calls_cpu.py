"""Two versions of spear under 16 gRPC clients, side by side (issue 17: "16 gRPC clients
at least 1.5x Ray"): the CPU each call costs the daemon and the clients.

    python -m benchmarks.calls_cpu <before src> <after src> [--rounds 4] [--seconds 5]
    # benchmarks/results/calls_cpu.json

Each round starts, for each version in turn (alternating which goes first), a `spear
serve` daemon of that version and 16 of that version's clients in another process, each
calling CallTask on a trivial WASM task one call at a time (`grpc_bench`'s 16-client
workload), for `--seconds`. A round reports calls per second and the CPU per call of the
daemon's process and of the clients' process. On a shared or virtual machine calls per
second moves by a third between rounds; the CPU per call moves less, and is what a trim of
either side changes.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks import versions
from benchmarks.common import ROOT, machine
from benchmarks.versions import alternate, measure_in

RESULT_FILE = ROOT / "benchmarks" / "results" / "calls_cpu.json"

_ROUND = r"""
import asyncio, json, os, subprocess, sys, tempfile, time
from pathlib import Path
import wasmtime
from benchmarks.common import TRIVIAL_WAT
from benchmarks.grpc_floor import _cpu_s, _spear_load
from spear.transport.auth import read_owner_token

seconds = float(sys.argv[1])
with tempfile.TemporaryDirectory(prefix="spear-calls-") as tmp:
    module = Path(tmp) / "trivial.wasm"
    module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "spear", "serve", "--listen", "127.0.0.1:0",
         "--data-dir", str(Path(tmp) / "home"), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        address = daemon.stdout.readline().decode().strip()
        token = read_owner_token(Path(tmp) / "home")
        asyncio.run(_spear_load(address, token, str(module), 1.0))  # (warm)
        served, mine, start = _cpu_s(daemon.pid), time.process_time(), time.perf_counter()
        calls = asyncio.run(_spear_load(address, token, str(module), seconds))
        elapsed = time.perf_counter() - start
        print(json.dumps({
            "calls_per_s": round(calls / elapsed, 1),
            "daemon_cpu_us_per_call": round((_cpu_s(daemon.pid) - served) / calls * 1e6, 1),
            "clients_cpu_us_per_call": round((time.process_time() - mine) / calls * 1e6, 1),
        }))
    finally:
        daemon.terminate()
        daemon.wait(60)
"""


def run(before: str, after: str, rounds: int, counts: dict[str, int]) -> dict[str, Any]:
    result = alternate(
        before, after, rounds, lambda src: measure_in(src, _ROUND, str(counts["seconds"]))
    )
    result["machine"] = machine()
    return result


def main(argv: list[str] | None = None) -> int:
    return versions.main(argv, __doc__, RESULT_FILE, {"seconds": 5}, run)


if __name__ == "__main__":
    sys.exit(main())
