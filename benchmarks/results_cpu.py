"""A cluster member's CPU for keeping its tasks' results (issue 17: a batch's CPU), for two
versions of spear side by side.

    python -m benchmarks.results_cpu BEFORE_SRC AFTER_SRC [--rounds 2] [--waves 300]
    # benchmarks/results/results_cpu.json

Each version runs in a process of its own (PYTHONPATH=its src): a real SMS in another
process, and a member's `ObjectStore` over its own LevelDB with the member's authority
(`ClusterObjects`, its certificate), storing `--waves` waves of 20 results as a finished
hook does (`store_results`; half of each wave's tasks wrote a few bytes, half nothing).
It reports the member process's CPU per result and the wall time; rounds alternate
which version goes first.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT

RESULT_FILE = ROOT / "benchmarks" / "results" / "results_cpu.json"
PER_WAVE = 20

_ONE = r"""
import json, subprocess, sys, tempfile, time
from pathlib import Path
import anyio
from spear.node.object_space import ClusterObjects
from spear.store.leveldb import LevelDBKV
from spear.store.objects import ObjectStore
from spear.transport import tls
from spear.transport.channels import Credentials
from spear.transport.object_transfer import ObjectTransferClient
from spear.transport.sms_client import SmsClient
from spear.transport.tls import TlsFiles

waves, per = int(sys.argv[1]), int(sys.argv[2])
tmp = Path(tempfile.mkdtemp(prefix="spear-results-cpu-"))
tls.create_ca(tmp / "ca")
for name in ("sms", "node-1"):
    tls.issue(tmp / "ca", name, tmp / name / "tls")
out = tmp / "out"
out.mkdir()
for i in range(per):
    (out / f"o{i}").write_bytes(b"result %d" % i)
sms_code = (
    "import anyio, spear\n"
    "async def m():\n"
    f"    async with spear.serve_sms({str(tmp / 'sms')!r}) as s:\n"
    "        print(s.address, flush=True)\n"
    "        await anyio.sleep(3600)\n"
    "anyio.run(m)\n"
)
sms = subprocess.Popen([sys.executable, "-c", sms_code], stdout=subprocess.PIPE, text=True)

def wave(tag):
    return [(f"{tag}-{i}", out / f"o{i}" if i % 2 else None) for i in range(per)]

async def main(address):
    credentials = Credentials(tls=TlsFiles(tmp / "node-1" / "tls"))
    client = SmsClient(address, timeout_s=10, credentials=credentials)
    transfer = ObjectTransferClient(credentials)
    authority = ClusterObjects(client, "node-1", "127.0.0.1:1", transfer)
    try:
        async with LevelDBKV.open(str(tmp / "node.ldb")) as kv:
            store = ObjectStore(kv, tmp / "objects", authority=authority)
            for w in range(20):
                await store.store_results(wave(f"warm{w}"))
            cpu, wall = time.process_time(), time.perf_counter()
            for w in range(waves):
                await store.store_results(wave(f"w{w}"))
            n = waves * per
            return {"member_cpu_us_per_result": round((time.process_time() - cpu) / n * 1e6, 1),
                    "wall_us_per_result": round((time.perf_counter() - wall) / n * 1e6, 1)}
    finally:
        await authority.aclose()
        await transfer.aclose()
        await client.aclose()

try:
    print(json.dumps(anyio.run(main, sms.stdout.readline().strip())))
finally:
    sms.kill()
"""


def _measure(src: str, waves: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    out = subprocess.run(
        [sys.executable, "-c", _ONE, str(waves), str(PER_WAVE)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def run(before: str, after: str, rounds: int, waves: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for i in range(rounds):
        order = [("before", before), ("after", after)]
        for name, src in order if i % 2 == 0 else order[::-1]:
            runs[name].append(_measure(src, waves))
            print(name, json.dumps(runs[name][-1]), flush=True)
    medians = {
        name: {k: statistics.median(r[k] for r in found) for k in found[0]}
        for name, found in runs.items()
    }
    return {"before": before, "after": after, "rounds": rounds, "waves": waves,
            "per_wave": PER_WAVE, "medians": medians, "runs": runs}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--waves", type=int, default=300)
    p.add_argument("--out", type=Path, default=RESULT_FILE)
    args = p.parse_args(argv)
    result = run(args.before, args.after, args.rounds, args.waves)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["load_average"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["medians"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
