"""A client's get of a large value over the transfer service, read into a `bytes` in place
(transport/filled_bytes.py) beside the way before (a `bytearray`, then copied into a
`bytes` by `spear.Client`), and beside Ray's driver `ray.get` of the same size (issue 15).

    python -m benchmarks.large_gets [--rounds 20] [--out FILE]
    # benchmarks/results/large_gets.json

One `spear serve` daemon in a process of its own; this process gets its values through
`ObjectRoute` with the object socket off (as a client on another host does), alternating
the two ways call by call so both see the same minute of this machine. Then Ray 2.x,
local, 2 CPUs: `ray.put` of the same sizes and `ray.get` timed. Mean, median and p90 in ms.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import ROOT, write_rounds

RESULT_FILE = ROOT / "benchmarks" / "results" / "large_gets.json"
MiB = 1 << 20
SIZES = {"1MiB": MiB, "64MiB": 64 * MiB}


def _figures(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "mean_ms": round(statistics.mean(ordered), 2),
        "median_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[int(len(ordered) * 0.9)], 2),
        "n": len(ordered),
    }


def _copied(size: int, fill: Any) -> bytes:
    """The way before: the value read into a bytearray, then copied into a `bytes` (by
    `spear.Client`'s route then; here, now that the route takes the bytes as they come)."""
    buffer = bytearray(size)
    fill(memoryview(buffer))
    return bytes(buffer)


async def _spear(address: str, home: Path, rounds: int) -> dict[str, Any]:
    from spear.node.client import Client
    from spear.node.object_route import ObjectRoute
    from spear.transport import object_transfer
    from spear.transport.auth import read_owner_token
    from spear.transport.channels import Credentials

    in_place = object_transfer.filled_bytes
    ways = {"in place": in_place, "bytearray, then copied": _copied}
    owner = Credentials(token=read_owner_token(home))
    out: dict[str, Any] = {}
    async with Client(address, credentials=owner) as client:
        route = ObjectRoute(owner, socket=False)
        try:
            for label, size in SIZES.items():
                await client.put_object("bench/large", os.urandom(size))
                ms: dict[str, list[float]] = {way: [] for way in ways}
                count = rounds * (10 if size <= MiB else 1)
                for i in range(count + 1):
                    for way in list(ways)[:: 1 if i % 2 else -1]:
                        object_transfer.filled_bytes = ways[way]  # type: ignore[assignment]
                        t0 = time.perf_counter()
                        value, _ = await route.get(client, "bench/large")
                        took = time.perf_counter() - t0
                        assert type(value) is bytes and len(value) == size
                        del value
                        if i:  # (the first warms the connection)
                            ms[way].append(took * 1e3)
                for way, samples in ms.items():
                    out[f"spear.Client get {label}, {way}"] = _figures(samples)
        finally:
            object_transfer.filled_bytes = in_place
            await route.aclose()
    return out


def spear_side(rounds: int) -> dict[str, Any]:
    from benchmarks.grpc_bench import _Daemon

    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="spear-large-gets-", dir=shm) as tmp:
        home = Path(tmp) / "home"
        daemon = _Daemon(home)
        try:
            return anyio.run(_spear, daemon.address, home, rounds)
        finally:
            daemon.stop()


def ray_side(rounds: int) -> dict[str, Any]:
    from benchmarks import ray_bench

    version = ray_bench.start()
    import ray

    out: dict[str, Any] = {"ray_version": version}
    try:
        for label, size in SIZES.items():
            ref = ray.put(os.urandom(size))
            ray.get(ref)
            ms = []
            for _ in range(rounds * (10 if size <= MiB else 1)):
                t0 = time.perf_counter()
                value = ray.get(ref)
                ms.append((time.perf_counter() - t0) * 1e3)
                del value
            out[f"Ray driver get {label}"] = _figures(ms)
    finally:
        ray_bench.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="64 MiB gets per way (1 MiB: x10)")
    p.add_argument("--out", type=Path, default=RESULT_FILE)
    args = p.parse_args(argv)
    spear = spear_side(args.rounds)
    ray = ray_side(args.rounds)
    medians = {k: v["median_ms"] for k, v in {**spear, **ray}.items() if isinstance(v, dict)}
    write_rounds({"spear": spear, "ray": ray, "medians": medians}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
