"""The node controller against the SMS's logic on a real LevelDB, and against an SMS address
where nothing answers."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from spear.core.cluster import AgentInfo, ClusterTimings, NodeHealth, NodeRecord
from spear.core.models import Resources
from spear.core.node_controller import Membership, NodeController
from spear.core.sms import MetadataServer
from spear.errors import Unavailable
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


class _Flaky:
    """The SMS's logic, unreachable while `down` (as a client finds an SMS that is away)."""

    def __init__(self, sms: MetadataServer) -> None:
        self.sms = sms
        self.down = False
        self.failing: set[str] = set()  # these calls fail even while it is up
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.sms, name)

        async def call(*args: Any, **kw: Any) -> Any:
            from spear.errors import Unavailable

            self.calls.append(name)
            if self.down or name in self.failing:
                raise Unavailable("the SMS is away")
            return await real(*args, **kw)

        return call


def _member(cluster: Any, load: tuple[int, int, int]) -> NodeController:
    record = NodeRecord(name="n1", address="127.0.0.1:1", capacity=Resources(1000, 1 << 30))
    return NodeController(
        cluster, lambda: record, lambda: (Resources(load[0], 1 << 29), load[1], load[2]), TIMINGS
    )


async def test_a_registration_carries_the_load_and_is_said(tmp_path: Path) -> None:
    from log_capture import SpearLog

    async with LevelDBKV.open(str(tmp_path / "sms.ldb")) as kv:
        sms = MetadataServer(kv, TIMINGS)
        nc = _member(sms, (700, 3, 2))
        assert (nc.state, nc.registrations, nc.heartbeats) == (Membership.JOINING, 0, 0)
        assert nc.on_registered is None and len(nc.incarnation) == 16
        with SpearLog("INFO", "{message}") as logged:
            await nc.beat()
        rec = await sms.node("n1")
        assert (rec.free.cpu_millis, rec.running_tasks, rec.queued_tasks) == (700, 3, 2)
        assert rec.incarnation == nc.incarnation
        assert f"registered with the cluster as n1 ({nc.incarnation})\n" in logged


async def test_a_member_cut_off_and_back_and_one_that_never_joined(tmp_path: Path) -> None:
    from log_capture import SpearLog

    async with LevelDBKV.open(str(tmp_path / "sms.ldb")) as kv:
        link = _Flaky(MetadataServer(kv, TIMINGS))
        nc = _member(link, (1000, 0, 0))
        link.down = True
        with SpearLog("WARNING", "{message}") as logged:
            async with anyio.create_task_group() as tg:
                await tg.start(nc.run)  # (started once the first attempt failed)
                assert nc.state is Membership.JOINING and link.calls == ["node"]
                link.down = False
                with anyio.fail_after(5):
                    while nc.state is not Membership.MEMBER:
                        await anyio.sleep(0.01)
                link.down = True
                with anyio.fail_after(5):
                    while nc.state is not Membership.CUT_OFF:
                        await anyio.sleep(0.01)
                beats = nc.heartbeats
                link.down = False
                with anyio.fail_after(5):
                    while nc.state is not Membership.MEMBER:
                        await anyio.sleep(0.01)
                assert nc.heartbeats > beats and nc.registrations == 1  # (the same one)
                tg.cancel_scope.cancel()
        assert "cannot register with the SMS yet (the SMS is away); retrying\n" in logged
        assert "the SMS did not answer (the SMS is away); retrying\n" in logged


async def test_a_node_the_sms_forgot_registers_again_and_says_so(tmp_path: Path) -> None:
    from log_capture import SpearLog

    async with LevelDBKV.open(str(tmp_path / "sms.ldb")) as kv:
        sms = MetadataServer(kv, TIMINGS)
        link = _Flaky(sms)
        nc = _member(link, (1000, 0, 0))
        await nc.beat()
        await nc.beat()
        await nc.beat()
        assert (nc.registrations, nc.heartbeats) == (1, 2)  # (each heartbeat counted)
        await kv.delete("nodes/n1")
        sms.take_over()
        link.failing = {"register"}  # it forgot the node, and the new registration fails
        with SpearLog("WARNING", "{message}") as logged, pytest.raises(Unavailable):
            await nc.beat()
        assert nc.state is Membership.JOINING  # (registers at the next beat)
        link.failing = set()
        await nc.beat()
        assert (nc.state, nc.registrations, nc.heartbeats) == (Membership.MEMBER, 2, 3)
        assert logged == ["the SMS does not know this node (restarted?): registering again\n"]


async def test_leaving_is_once_and_never_held_up_by_the_sms(tmp_path: Path) -> None:
    from log_capture import SpearLog

    async with LevelDBKV.open(str(tmp_path / "sms.ldb")) as kv:
        link = _Flaky(MetadataServer(kv, TIMINGS))
        nc = _member(link, (1000, 0, 0))
        await nc.beat()
        link.down = True
        with SpearLog("WARNING", "{message}") as logged:
            assert await nc.leave() is False  # the SMS away: said, not raised
        assert nc.state is Membership.LEFT
        assert logged == ["could not deregister from the SMS: the SMS is away\n"]
        assert await nc.leave() is False and link.calls.count("deregister") == 1  # once

        again = _member(link, (1000, 0, 0))
        link.down = False
        await again.beat()

        async def never(*args: Any) -> bool:
            await anyio.sleep(60)
            return True

        link.sms.deregister = never  # type: ignore[method-assign]
        with anyio.fail_after(5):
            assert await again.leave(timeout_s=0.05) is False  # (a hung SMS: given up)
