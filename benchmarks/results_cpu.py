"""A cluster member's CPU for keeping its tasks' results (issue 17: a batch's CPU), for two
versions of spear side by side.

    python -m benchmarks.results_cpu BEFORE_SRC AFTER_SRC [--rounds 4] [--waves 300]
    # benchmarks/results/results_cpu.json

Each version runs in a process of its own (PYTHONPATH=its src): a real SMS in another
process, and a member's `ObjectStore` over its own LevelDB with the member's authority
(`ClusterObjects`, its certificate), storing `--waves` waves of 20 results as a finished
hook does (`store_results`; half of each wave's tasks wrote a few bytes, half nothing).
It reports the member process's CPU per result and the wall time; rounds alternate
which version goes first.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.common import ROOT
from benchmarks.versions import alternate, main, measure_in

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


def run(before: str, after: str, rounds: int, counts: dict[str, int]) -> dict[str, Any]:
    script = (_ONE, str(counts["waves"]), str(PER_WAVE))
    found = alternate(before, after, rounds, lambda src: measure_in(src, *script, timeout_s=600))
    return {**found, "per_wave": PER_WAVE}


if __name__ == "__main__":
    sys.exit(main(None, __doc__, RESULT_FILE, {"waves": 300}, run))
