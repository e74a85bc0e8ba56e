"""Listings page everywhere the issue names (ListTasks and ListObjects have their own
tests): the SMS's ListClusterTasks answers pages of tasks with a token and SmsClient reads
them all, and a task's logs, larger than a whole message, stream in chunks with offsets."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest

import spear
from spear.core.cluster import ClusterTimings
from spear.core.models import FunctionSpec, Runtime, Task, TaskState, new_task_id
from spear.core.sms import MetadataServer
from spear.node.client import Client
from spear.node.server import serve_spearlet
from spear.store.leveldb import LevelDBKV
from spear.transport._gen.pb import sms_pb2
from spear.transport.aio_client import AioChannel
from spear.transport.auth import read_owner_token
from spear.transport.channels import NO_CREDENTIALS
from spear.transport.services import Stub
from spear.transport.serving import Security
from spear.transport.sms_client import SmsClient
from spear.transport.sms_server import SmsServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@contextlib.asynccontextmanager
async def _sms(home: Path) -> AsyncIterator[tuple[MetadataServer, str]]:
    async with LevelDBKV.open(str(home / "sms.ldb")) as kv:
        sms = MetadataServer(kv, ClusterTimings())
        server = SmsServer(sms, security=Security.open())
        await server.start("127.0.0.1:0")
        try:
            assert server.address is not None
            yield sms, server.address
        finally:
            await server.close()


def _done(node: str) -> Task:
    task = Task(new_task_id(), FunctionSpec("m.wasm"), node=node, created_at=1.0)
    return task.transition(TaskState.RUNNING).transition(TaskState.COMPLETED, exit_code=0)


async def test_list_cluster_tasks_pages_and_the_client_reads_every_page(tmp_path: Path) -> None:
    async with _sms(tmp_path) as (sms, address):
        tasks = [_done("n1" if i % 2 else "n2") for i in range(2300)]
        await sms.report_tasks(tasks)
        channel = AioChannel(address, NO_CREDENTIALS)
        try:
            stub = Stub(channel, sms_pb2.DESCRIPTOR.services_by_name["MetadataServer"])
            first = await stub.list_cluster_tasks(sms_pb2.ListClusterTasksRequest())
            assert len(first.tasks) == 1000 and first.next_page_token
            second = await stub.list_cluster_tasks(
                sms_pb2.ListClusterTasksRequest(page_token=first.next_page_token, page_size=2000)
            )
            assert len(second.tasks) == 1300 and second.next_page_token == ""
            ids = [t.id for t in (*first.tasks, *second.tasks)]
            assert ids == sorted((t.id for t in tasks), reverse=True)  # newest first, once
        finally:
            await channel.aclose()
        client = SmsClient(address, timeout_s=10)
        try:
            assert len(await client.tasks()) == 2300
            assert len(await client.tasks(limit=1500)) == 1500
            on_n1 = await client.tasks(node="n1")
            assert len(on_n1) == 1150 and {t.node for t in on_n1} == {"n1"}
        finally:
            await client.aclose()


async def test_logs_larger_than_a_message_stream_in_chunks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    size = 3 * 1024 * 1024
    spec = FunctionSpec(
        "/bin/sh", args=("-c", f"head -c {size} /dev/zero | tr '\\0' x"), runtime=Runtime.PROCESS
    )
    async with spear.LocalNode(home) as node:
        server = await serve_spearlet(node, "127.0.0.1:0", max_message_bytes=1024 * 1024)
        try:
            assert server.address is not None
            owner = read_owner_token(home)
            async with Client(server.address, token=owner, max_message_bytes=1024 * 1024) as c:
                task = await c.run(spec)
                assert task.exit_code == 0
                chunks = [ch async for ch in c.logs(task.id, ["stdout"])]
        finally:
            await server.close()
    assert len(chunks) > 3  # many messages, none over the limit
    offset = 0
    for chunk in chunks:
        assert chunk.offset == offset
        offset += len(chunk.data)
    assert offset == size and b"".join(ch.data for ch in chunks) == b"x" * size


@pytest.mark.parametrize("size", [0, 1, 7000])
def test_page_size_is_bounded(size: int) -> None:
    from spear.core.task_pages import MAX_PAGE_SIZE, PAGE_SIZE, page_size

    assert page_size(size) == (PAGE_SIZE if size == 0 else min(size, MAX_PAGE_SIZE))
    assert page_size(size, limit=3) == min(3, size or 3)
