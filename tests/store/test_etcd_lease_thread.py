"""A lease refreshed from its own thread outlives a stalled event loop; one refreshed on
the loop does not (real etcd)."""

from __future__ import annotations

import secrets
import time

from spear.store.etcd import EtcdKV
from spear.store.etcd_election import Lease
from spear.store.etcd_lease_thread import ThreadedLease

TTL_S = 2


def stall_the_loop(seconds: float) -> None:
    """Hold the event loop as a flood of requests would (deliberately blocking)."""
    time.sleep(seconds)


async def test_a_threaded_lease_survives_a_stalled_loop_and_a_plain_one_does_not(
    etcd_endpoint: str,
) -> None:
    kv = await EtcdKV.connect([etcd_endpoint], namespace=f"lt-{secrets.token_hex(4)}/")
    try:
        async with ThreadedLease.keep(kv.client, TTL_S) as threaded:
            stall_the_loop(TTL_S * 1.5)
            assert threaded.alive and not threaded.lost.is_set()
            assert await kv.client.lease_keepalive(threaded.id, within_s=2) > 0  # etcd agrees
        assert threaded.lost.is_set() and not threaded.alive  # revoked at the end
        assert await kv.client.lease_keepalive(threaded.id, within_s=2) <= 0
        async with Lease.keep(kv.client, TTL_S) as plain:
            stall_the_loop(TTL_S * 1.5)
            assert not plain.alive  # it must step down: its refreshes could not be sent
    finally:
        await kv.aclose()
