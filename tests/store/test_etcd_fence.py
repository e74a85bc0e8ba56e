"""Fenced writes on a real etcd: they hold while the term does, and etcd refuses them after."""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING

import pytest

from spear.errors import NotLeader
from spear.store.etcd import EtcdKV
from spear.store.etcd_election import Candidate, Lease
from spear.store.etcd_fence import Fence, FencedEtcdKV
from spear.store.kv import Write

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


async def test_a_fenced_write_holds_in_its_term_and_is_refused_after(etcd_endpoint: str) -> None:
    plain = await EtcdKV.connect([etcd_endpoint], namespace=f"fence-{secrets.token_hex(4)}/")
    fence = Fence()
    kv = FencedEtcdKV(plain, fence)
    try:
        with pytest.raises(NotLeader):  # no term held: refused before anything is sent
            await kv.put("k", b"0")
        async with Lease.keep(plain.client, ttl_s=5) as lease:
            name = f"f{secrets.token_hex(4)}"
            async with Candidate(plain.client, name, b"me", lease) as me:
                await asyncio.wait_for(me.elected.wait(), 5)
                assert me.leader_key is not None
                fence.hold(*me.leader_key)
                version = await kv.put("k", b"1")
                assert (await plain.get("k")) is not None
                # The seam's own compare still answers -1 (the term is fine).
                assert await kv.compare_and_swap("k", b"x", version + 1000) == -1
                assert await kv.commit([Write("k", b"x", version + 1000)]) == -1
                assert await kv.compare_and_swap("k", b"2", version) > 0
                assert await kv.delete("k") is True
                # The lease goes behind the leader's back (as when it expires while the
                # process is paused): etcd deletes the leader key, and refuses the writes
                # of a leader that has not noticed yet.
                await plain.client.lease_revoke(lease.id)
                writes: list[Callable[[], Awaitable[object]]] = [
                    lambda: kv.put("k", b"late"),
                    lambda: kv.compare_and_swap("k", b"late", 0),
                    lambda: kv.commit([Write("k", b"late")]),
                    lambda: kv.delete("k"),
                ]
                for write in writes:
                    fence.hold(*me.leader_key)  # as if it still believed it led
                    with pytest.raises(NotLeader):
                        await write()
                    assert fence.key is None and fence.ended.is_set()
                assert await plain.get("k") is None
    finally:
        await plain.aclose()
