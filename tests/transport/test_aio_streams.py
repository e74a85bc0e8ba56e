"""spear's calls over grpc.aio (transport/aio_streams.py, `AioChannel.request`): what a
call carries and how it ends, against real servers on loopback (a stock grpc.aio server
that records what it saw, and a node's own server)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import grpc
import grpc.aio
import pytest
from wat_tasks import ticker

import spear
from spear.core.models import FunctionSpec
from spear.core.tasks.running import CALLER_GONE
from spear.node.client import Client
from spear.node.server import serve_spearlet
from spear.tracing.base import current_traceparent
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport.aio_client import AioChannel
from spear.transport.auth import read_owner_token
from spear.transport.channels import Credentials
from spear.transport.services import Cardinality

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
WATCH = "/spear.v1.Spearlet/WatchTask"


class Recorder:
    """A WatchTask that answers forever, recording each call's metadata and its end."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.cancelled = anyio.Event()

    async def watch(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()})
        try:
            while True:
                yield pb.TaskInfo(id="t1").SerializeToString()
                await anyio.sleep(0.01)
        except BaseException:  # (grpc.aio cancels the handler's task when the call ends)
            self.cancelled.set()
            raise


async def test_a_stream_carries_the_credentials_and_trace_and_leaving_it_cancels_it() -> None:
    recorder = Recorder()
    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(recorder.watch)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("spear.v1.Spearlet", {"WatchTask": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = AioChannel(
        f"127.0.0.1:{port}", Credentials(token="secret", namespace="team-a"), traced=True
    )
    try:
        token = current_traceparent.set(TRACEPARENT)
        try:
            async with channel.request(
                WATCH, Cardinality.UNARY_STREAM, pb.WatchTaskRequest, pb.TaskInfo
            ) as stream:
                await stream.send_message(pb.WatchTaskRequest(task_id="t1"), end=True)
                first = await stream.recv_message()
                assert first.id == "t1"
        finally:
            current_traceparent.reset(token)
        # Left after one message of an endless stream: the server's handler ends too.
        with anyio.fail_after(30):
            await recorder.cancelled.wait()
        [seen] = recorder.metadata
        assert seen["authorization"] == "Bearer secret"
        assert seen["spear-namespace"] == "team-a"
        assert seen["traceparent"] == TRACEPARENT
    finally:
        await channel.aclose()
        await server.stop(None)


@contextlib.asynccontextmanager
async def _served(tmp_path: Path) -> AsyncIterator[tuple[spear.LocalNode, str, str]]:
    """A LocalNode served on loopback: (the node, its address, its owner's token)."""
    async with spear.LocalNode(tmp_path / "home") as node:
        server = await serve_spearlet(node, "127.0.0.1:0")
        try:
            assert server.address is not None
            yield node, server.address, read_owner_token(tmp_path / "home")
        finally:
            await server.close()


async def test_a_call_past_its_deadline_is_deadline_exceeded_and_the_node_serves_on(
    tmp_path: Path,
) -> None:
    async with _served(tmp_path) as (_, address, owner):
        slow = FunctionSpec(str(ticker(tmp_path, 200, 50)))  # ~10 s
        async with Client(address, token=owner, timeout=0.5) as hurried:
            with pytest.raises(spear.DeadlineExceeded, match="in time"):
                await hurried.run(slow)
        async with Client(address, token=owner) as client:
            assert (await client.node_info()).name
            running = await client.tasks()
            for task in running:  # (the task itself was not the call's to stop)
                await client.cancel(task.id)


async def test_a_call_whose_client_goes_away_stops_its_task(tmp_path: Path) -> None:
    """RunTask/CallTask (client.call) own their task: past the client's deadline grpc.aio
    cancels the handler, and the guest is stopped and recorded so, not left running on
    a freed room. (client.run submits with a key: that task runs on, as above.)"""
    async with _served(tmp_path) as (node, address, owner):
        slow = FunctionSpec(str(ticker(tmp_path, 200, 50)))  # ~10 s
        async with Client(address, token=owner, timeout=1) as hurried:
            with pytest.raises(spear.DeadlineExceeded):
                await hurried.call(slow)
        with anyio.fail_after(8):  # (well before the guest's 10 s)
            while not (tasks := await node.tasks()) or tasks[0].state.value == "RUNNING":
                await anyio.sleep(0.02)
        (task,) = tasks
        assert (task.state.value, task.exit_code) == ("CANCELLED", 130)
        assert task.reason == CALLER_GONE
        assert node.controller.free == node.controller.capacity
        assert (await node.logs_of(task.id)).startswith(b"tick\n")  # it did run
