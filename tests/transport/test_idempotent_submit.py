"""Idempotent submission and client failover (issue 16), over real gRPC on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from wat_tasks import hello

import spear
from spear.core.models import FunctionSpec, TaskState, new_task_id
from spear.errors import Unavailable
from spear.node.client import Client
from spear.node.idempotency import task_id_for_key
from spear.transport.auth import read_owner_token

sys.path.insert(0, str(Path(__file__).parent.parent / "chaos"))
from tcp_proxy import TcpProxy
from test_spearlet_service import served


def test_keys_name_one_task_id() -> None:
    assert task_id_for_key("order-17") == task_id_for_key("order-17")
    assert task_id_for_key("order-17") != task_id_for_key("order-18")
    assert len(task_id_for_key("order-17")) == 22
    made = new_task_id()
    assert task_id_for_key(made) == made  # a client's own key keeps ids time-ordered
    with pytest.raises(spear.InvalidArgument, match="idempotency key"):
        task_id_for_key("x" * 300)


async def test_a_resubmit_with_the_same_key_returns_the_same_task(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (_, _, client):
        spec = FunctionSpec(str(hello(tmp_path)))
        first = await client.submit(spec, idempotency_key="order-17")
        again = await client.submit(spec, idempotency_key="order-17")
        assert again.id == first.id == task_id_for_key("order-17")
        other = await client.submit(spec, idempotency_key="order-18")
        assert other.id != first.id
        assert (await first).task.state is TaskState.COMPLETED
        # Once finished, the same key still answers with it (not a new run).
        late = await client.submit(spec, idempotency_key="order-17")
        assert late.id == first.id and late.task.state is TaskState.COMPLETED
        assert len(await client.tasks()) == 2


async def test_a_submit_whose_reply_was_lost_makes_one_task(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (_, server, _):
        assert server.address is not None
        with TcpProxy(server.address) as proxy:
            # The first connection's reply never comes back: the node made the task, the
            # client saw the connection break, retried on a new one with the same key.
            proxy.faults.drop_replies_of = {1}
            token = read_owner_token(tmp_path / "home")
            async with Client(proxy.address, token=token) as client:
                handle = await client.submit(FunctionSpec(str(hello(tmp_path))))
                assert proxy.connections >= 2
                assert [t.id for t in await client.tasks()] == [handle.id]
                assert (await handle).output == b"hello\n"


async def test_the_client_fails_over_to_the_next_address(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (_, server, _):
        assert server.address is not None
        token = read_owner_token(tmp_path / "home")
        with TcpProxy(server.address) as down:
            down.faults.partitioned = True  # refuses every connection
            async with Client(f"{down.address},{server.address}", token=token) as client:
                result = await (await client.submit(FunctionSpec(str(hello(tmp_path)))))
                assert result.output == b"hello\n"
                assert client.address == server.address
                assert down.connections == 1  # tried first, then the next address
            async with Client(down.address, token=token, retries=2) as client:
                with pytest.raises(Unavailable):
                    await client.node_info()
                assert down.connections == 1 + 3  # one call, two retries, then it gave up
