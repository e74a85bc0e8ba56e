"""Several SMS on one real etcd: one leads and writes, the others refuse writes naming it,
and one takes over when the leader stops (in process; tests/cluster/test_sms_failover.py
does it with real processes and SIGKILL)."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

import anyio
import pytest
from test_sms import TIMINGS, node

from spear.core.sms import MetadataServer
from spear.core.sms_leader import ElectedLeader, SoleLeader, leader_named_in, sms_leadership
from spear.errors import InvalidArgument, NotLeader
from spear.store.etcd import EtcdKV

if TYPE_CHECKING:
    from pathlib import Path


async def eventually(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.02)


async def test_one_sms_leads_the_others_refuse_writes_and_one_takes_over(
    etcd_endpoint: str,
) -> None:
    namespace = f"ha-{secrets.token_hex(4)}/"
    election = f"sms{secrets.token_hex(4)}"
    plains = [await EtcdKV.connect([etcd_endpoint], namespace=namespace) for _ in range(3)]
    servers, leaderships, scopes = [], [], []
    try:
        async with anyio.create_task_group() as tg:
            for i, plain in enumerate(plains):
                leadership = ElectedLeader(plain, f"127.0.0.1:{9001 + i}", ttl_s=2, name=election)
                sms = MetadataServer(leadership.kv, TIMINGS)
                sms.leadership = leadership
                scope = anyio.CancelScope()

                async def run(sms: MetadataServer = sms, scope: anyio.CancelScope = scope) -> None:
                    with scope:
                        await sms.leadership.run(sms)

                tg.start_soon(run)
                servers.append(sms)
                leaderships.append(leadership)
                scopes.append(scope)

            def leaders() -> list[int]:
                return [i for i, lead in enumerate(leaderships) if lead.leading]

            await eventually(lambda: len(leaders()) == 1)
            first = leaders()[0]
            await servers[first].register(node("a"))
            for i in set(range(3)) - {first}:
                await eventually(lambda i=i: leaderships[i].leader == leaderships[first].address)
                with pytest.raises(NotLeader) as refused:
                    leaderships[i].require()
                assert leader_named_in(refused.value) == leaderships[first].address
                with pytest.raises(NotLeader):  # the store refuses it too
                    await servers[i].register(node("b"))
                # Followers serve reads.
                assert [n.name for n in await servers[i].nodes()] == ["a"]
            # The leader stops (resigning): another leads within moments, and writes.
            stopped = time.monotonic()
            scopes[first].cancel()
            await eventually(lambda: len([i for i in leaders() if i != first]) == 1)
            took = time.monotonic() - stopped
            second = leaders()[0]
            assert second != first and took < 5
            assert leaderships[second].terms == 1
            await servers[second].register(node("b"))
            assert sorted(n.name for n in await servers[first].nodes()) == ["a", "b"]
            tg.cancel_scope.cancel()
    finally:
        for plain in plains:
            await plain.aclose()


async def test_leveldb_leads_alone_and_bad_ttls_are_refused(
    tmp_path: Path, etcd_endpoint: str
) -> None:
    from spear.store.leveldb import LevelDBKV

    kv = LevelDBKV.open(str(tmp_path / "sms.ldb"))
    try:
        leadership, fenced = sms_leadership(kv, "127.0.0.1:1", {})
        assert isinstance(leadership, SoleLeader) and fenced is kv and leadership.leading
        leadership.require()
    finally:
        await kv.aclose()
    plain = await EtcdKV.connect([etcd_endpoint], namespace="ttl/")
    try:
        for bad in (1, "x"):
            with pytest.raises(InvalidArgument, match="sms_lease_ttl_s"):
                sms_leadership(plain, "127.0.0.1:1", {"sms_lease_ttl_s": bad})
        elected, view = sms_leadership(plain, "127.0.0.1:1", {"sms_lease_ttl_s": 4})
        assert isinstance(elected, ElectedLeader) and elected.ttl_s == 4 and view is not plain
        assert not elected.leading
    finally:
        await plain.aclose()
