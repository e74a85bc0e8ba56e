"""A call whose etcd member dies under it leaves the caller's task clean (issue 16).

grpclib wakes the calls waiting on a closed connection with a plain asyncio cancel of the
waiting task and raises its own error there, never taking the cancel back. In the
caller's task that stray cancel made every anyio cancel scope above it let its own
cancellation through, as if it came from outside: an SMS whose election campaign was cut
off with its etcd member stopped standing, for good, and the other SMS never took over
from a dead leader (found by the chaos lab's leader kill). The client is on grpc.aio since,
which cancels no task of the caller's; the behaviour is kept. Real etcd, real election."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import anyio

from spear.store._etcd_client import EtcdClient
from spear.store._etcd_gen import v3election_pb2 as epb
from spear.store.etcd_election import election_name
from spear.store.etcd_server import EtcdProcess

if TYPE_CHECKING:
    from pathlib import Path


async def test_a_campaign_cut_off_with_its_member_leaves_no_stray_cancel(tmp_path: Path) -> None:
    etcd = EtcdProcess(tmp_path / "etcd")
    etcd.start()
    client = EtcdClient([etcd.endpoint], timeout_s=5)
    try:
        holder = await client.lease_grant(60)
        waiter = await client.lease_grant(60)

        async def campaign(lease_id: int) -> epb.CampaignResponse:
            return await client.unary(
                "election campaign",
                "/v3electionpb.Election/Campaign",
                epb.CampaignRequest(name=election_name("t"), lease=lease_id, value=b"x"),
                epb.CampaignResponse,
                idempotent=True,
                wait=True,
            )

        await campaign(int(holder.ID))  # leads; the next candidate waits behind it

        async def kill_soon() -> None:
            await anyio.sleep(0.5)  # (the campaign is waiting at etcd by now)
            etcd.kill()  # its connection closes under the waiting call

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_soon)
            # The campaign waits in this task; its own scope's cancel must end here.
            with anyio.move_on_after(4) as waited:
                await campaign(int(waiter.ID))  # (bounded: the scope ends it after 4 s)
        assert waited.cancelled_caught
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        with anyio.move_on_after(0.2) as later:  # and the next scope still ends itself
            await anyio.sleep(5)
        assert later.cancelled_caught
    finally:
        await client.aclose()
        etcd.stop()
