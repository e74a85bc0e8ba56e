"""A candidate in its own process, for the election tests: campaigns in election ARGV[2]
on etcd ARGV[1] with value ARGV[3], prints `leading` once elected, `deposed` when not."""

from __future__ import annotations

import asyncio
import sys

from spear.store.etcd import EtcdKV
from spear.store.etcd_election import Candidate, Lease


async def main(endpoint: str, name: str, value: str) -> None:
    kv = await EtcdKV.connect([endpoint], namespace="unused/")
    async with Lease.keep(kv.client, ttl_s=2) as lease:
        async with Candidate(kv.client, name, value.encode(), lease) as me:
            await me.elected.wait()
            print("leading", flush=True)
            await me.deposed.wait()
            print("deposed", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
