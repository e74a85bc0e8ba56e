"""The node controller against the SMS's logic on a real LevelDB, and against an SMS address
where nothing answers."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import anyio

from spear.core.cluster import AgentInfo, ClusterTimings, NodeHealth, NodeRecord
from spear.core.models import Resources
from spear.core.node_controller import Membership, NodeController
from spear.core.sms import MetadataServer
from spear.store.leveldb import LevelDBKV
from spear.transport.sms_client import SmsClient

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.cluster import Cluster

TIMINGS = ClusterTimings(heartbeat_s=0.05, unhealthy_after_s=1, dead_after_s=2)


def controller(cluster: Cluster, load: list[int]) -> NodeController:
    record = NodeRecord(
        name="n1",
        address="127.0.0.1:1",
        capacity=Resources(1000, 1 << 30),
        agents=(AgentInfo("wasm", "50"),),
        labels=(("zone", "a"),),
    )
    return NodeController(
        cluster, lambda: record, lambda: (Resources(load[0], 1 << 29), load[1], 0), TIMINGS
    )


async def test_register_heartbeat_reregister_leave(tmp_path: Path) -> None:
    kv = LevelDBKV.open(str(tmp_path / "sms.ldb"))
    sms = MetadataServer(kv, TIMINGS)
    load = [1000, 0]
    nc = controller(sms, load)
    resynced: list[tuple[int, bool]] = []

    async def resync(known: bool) -> None:
        resynced.append((nc.registrations, known))

    nc.on_registered = resync
    await nc.beat()
    assert nc.state is Membership.MEMBER and nc.registrations == 1
    assert resynced == [(1, False)]  # (new to this SMS)
    rec = await sms.node("n1")
    assert rec.incarnation == nc.incarnation and rec.labels == (("zone", "a"),)
    load[:] = [300, 2]
    await nc.beat()
    rec = await sms.node("n1")
    assert rec.free.cpu_millis == 300 and rec.running_tasks == 2 and nc.heartbeats == 1
    await kv.delete("nodes/n1")  # the SMS forgot the node (a restart on an empty store)
    sms.take_over()  # (and a restarted SMS holds no lease in memory: core/liveness.py)
    await nc.beat()
    assert nc.registrations == 2 and resynced == [(1, False), (2, False)]
    # Declared dead, say (the SMS kept its record, of the old incarnation): it knew it.
    nc.incarnation = "another"
    await nc.beat()  # (a heartbeat of an incarnation the SMS does not know)
    await nc.beat()
    assert nc.registrations == 3 and resynced[-1] == (3, True)
    assert (await sms.node("n1")).health is NodeHealth.HEALTHY
    assert await nc.leave() is True
    assert (await sms.node("n1")).health is NodeHealth.LEFT
    assert await nc.leave() is False  # twice is harmless
    await kv.aclose()


async def test_an_unreachable_sms_neither_blocks_nor_kills_the_node() -> None:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        async with SmsClient(address, timeout_s=1) as client:
            nc = controller(client, [1000, 0])
            async with anyio.create_task_group() as tg:
                await tg.start(nc.run)  # reports started after the first (failed) attempt
                assert nc.state is Membership.JOINING and nc.registrations == 0
                tg.cancel_scope.cancel()
            with anyio.fail_after(5):
                assert await nc.leave() is False  # never registered: nothing to undo
