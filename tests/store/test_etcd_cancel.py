"""Cancelling and closing on the etcd client's grpc.aio calls (store/_etcd_client.py): a
cancelled caller cancels its RPC at etcd, the cancel ends in the scope that made it (grpc.aio
re-raises a bare CancelledError, which anyio's scopes would not know as theirs), and a
connection closed under a call ends it with StorageError, not a cancel nobody made. etcd's
own metrics (its /metrics page) say what it saw."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from spear.errors import StorageError
from spear.store._etcd_gen import v3election_pb2 as epb
from spear.store.etcd import EtcdKV
from spear.store.etcd_election import election_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_WAIT_S = 20.0


async def metric(endpoint: str, name: str, labels: str = "") -> float:
    """One of etcd's metrics (the sum of its series whose labels contain `labels`)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://{endpoint}/metrics", timeout=5)).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith((f"{name} ", f"{name}{{")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not await check():
        assert time.monotonic() < deadline, "timed out waiting"
        await anyio.sleep(0.02)  # polling etcd's metrics, with a deadline


async def test_a_cancelled_watch_closes_its_stream_at_etcd(etcd_endpoint: str) -> None:
    kv = await EtcdKV.connect([etcd_endpoint], namespace=f"cw-{secrets.token_hex(4)}/")
    try:
        streams = await metric(etcd_endpoint, "etcd_debugging_mvcc_watch_stream_total")
        watchers = await metric(etcd_endpoint, "etcd_debugging_mvcc_watcher_total")
        seen = anyio.Event()

        async def watch() -> None:
            async for _ in kv.watch("k/"):
                seen.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            # (a put after the watch is made: its event says the stream serves)
            await until(
                lambda: _above(etcd_endpoint, "etcd_debugging_mvcc_watcher_total", watchers)
            )
            await kv.put("k/1", b"v")
            with anyio.fail_after(_WAIT_S):
                await seen.wait()
            tg.cancel_scope.cancel()
        assert tg.cancel_scope.cancelled_caught  # the cancel ended where it was made

        async def gone() -> bool:
            now = await metric(etcd_endpoint, "etcd_debugging_mvcc_watch_stream_total")
            return now == streams

        await until(gone)
        assert await metric(etcd_endpoint, "etcd_debugging_mvcc_watcher_total") == watchers
    finally:
        await kv.aclose()


async def _above(endpoint: str, name: str, value: float) -> bool:
    return await metric(endpoint, name) > value


async def test_a_call_waiting_at_etcd_is_cancelled_there_by_the_scope_that_ends_it(
    etcd_endpoint: str,
) -> None:
    kv = await EtcdKV.connect([etcd_endpoint], namespace="unused/")
    client = kv.client
    name = election_name(f"c{secrets.token_hex(4)}")
    labels = 'grpc_code="Canceled",grpc_method="Campaign"'
    try:
        holder, waiter = await client.lease_grant(60), await client.lease_grant(60)

        async def campaign(lease_id: int) -> epb.CampaignResponse:
            return await client.unary(
                "election campaign",
                "/v3electionpb.Election/Campaign",
                epb.CampaignRequest(name=name, lease=lease_id, value=b"x"),
                epb.CampaignResponse,
                idempotent=True,
                wait=True,
            )

        await campaign(int(holder.ID))  # leads: the next candidate waits at etcd
        cancelled = await metric(etcd_endpoint, "grpc_server_handled_total", labels)
        with anyio.move_on_after(0.5) as waited:
            await campaign(int(waiter.ID))
        # The scope caught its own cancel (not let through as if from outside) ...
        assert waited.cancelled_caught
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        # ... and etcd saw the call cancelled (its Campaign ended "Canceled").
        await until(lambda: _above(etcd_endpoint, "grpc_server_handled_total", cancelled))
        assert (await kv.revision()) > 0  # the connection serves on
        await client.lease_revoke(int(holder.ID))
        await client.lease_revoke(int(waiter.ID))
    finally:
        await kv.aclose()


async def test_closing_the_connection_under_a_watch_ends_it_with_storage_error(
    etcd_endpoint: str,
) -> None:
    kv = await EtcdKV.connect([etcd_endpoint], namespace=f"cc-{secrets.token_hex(4)}/")
    seen = anyio.Event()

    async def watch() -> None:
        async for _ in kv.watch("k/"):
            seen.set()

    reader = asyncio.ensure_future(watch())
    try:
        await kv.put("k/0", b"before")  # (may come before the watch: then the next does)
        with anyio.fail_after(_WAIT_S):
            while not seen.is_set():
                await kv.put("k/1", b"v")
                await anyio.sleep(0.05)  # a put at a time until the watch reports one
        await kv.aclose()  # the watch's stream is open on the channel this closes
        with pytest.raises(StorageError, match="^the etcd connection is closed$"):
            with anyio.fail_after(_WAIT_S):
                await reader
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await kv.aclose()
