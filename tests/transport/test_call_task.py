"""CallTask (`client.call`): a task run and its result answered in one message, on a real
node served over gRPC on loopback; RunTask where a node does not serve CallTask."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest
from log_capture import SpearLog
from wat_tasks import blob, blob_bytes, hello

import spear
from spear.core.artifacts import ArtifactStore
from spear.core.models import FunctionSpec, TaskState
from spear.errors import PermissionDenied, Unimplemented
from spear.node.client import Client
from spear.node.inprocess import InProcessNode
from spear.node.server import SERVICE_NAME, SpearletService, serve_spearlet
from spear.transport import _convert as cv
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport._status import CHUNK_BYTES
from spear.transport.aio_server import GrpcServer
from spear.transport.auth import Role, TokenStore, read_owner_token
from spear.transport.services import Stub
from spear.transport.serving import Security

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

_CALL_TASK = "/spear.v1.Spearlet/CallTask"
_RUN_TASK = "/spear.v1.Spearlet/RunTask"
_GET_RESULT = "/spear.v1.Spearlet/GetResult"


@contextlib.asynccontextmanager
async def node_served(home: Path, *, with_call_task: bool = True) -> AsyncIterator[str]:
    """A real node served on a free loopback port; without CallTask, as a node older than
    it is (its service has no such method: grpc answers UNIMPLEMENTED)."""
    async with spear.LocalNode(home) as node:
        if with_call_task:
            server: GrpcServer = await serve_spearlet(node, "127.0.0.1:0")
        else:
            api = InProcessNode(node)
            settings = node.settings
            artifacts = ArtifactStore(settings.data_dir / "artifacts", settings.object_max_bytes)
            server = GrpcServer(
                _SpearletBeforeCallTask(api, artifacts, settings.object_max_bytes),
                name=SERVICE_NAME,
                security=Security.for_data_dir(settings.data_dir),
            )
            api.address = await server.start("127.0.0.1:0")
        try:
            assert server.address is not None
            yield server.address
        finally:
            await server.close()


class _SpearletBeforeCallTask(SpearletService):
    call_task = None  # type: ignore[assignment]  # (not served: ServiceBase.served)


def _served(messages: list[str], route: str) -> int:
    """How many calls of `route` the server answered OK (its debug line per call)."""
    return sum(1 for m in messages if m.startswith(f"rpc {route} OK "))


async def test_a_call_is_answered_in_one_message(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with node_served(home) as address, Client(address, token=read_owner_token(home)) as c:
        with SpearLog("DEBUG", "{message}") as messages:
            result = await c.call(FunctionSpec(str(hello(tmp_path))))
        assert result.task.state is TaskState.COMPLETED and result.output == b"hello\n"
        assert (_served(messages, _CALL_TASK), _served(messages, _RUN_TASK)) == (1, 0)
        assert _served(messages, _GET_RESULT) == 0
        # The reply itself: the task and its whole output, nothing left to fetch.
        stub = Stub(c._channel, SpearletService.SERVICE)
        spec = cv.spec_to_wire(FunctionSpec(str(hello(tmp_path))))
        reply = await stub.call_task(pb.SubmitTaskRequest(spec=spec))
        assert cv.task_from_wire(reply.task).state is TaskState.COMPLETED
        assert (reply.data, reply.fetch_output, reply.ran_at) == (b"hello\n", False, "")
        assert [t.state for t in await c.tasks()] == [TaskState.COMPLETED] * 2


async def test_an_output_larger_than_one_message_comes_back_whole_from_one_run(
    tmp_path: Path,
) -> None:
    size = CHUNK_BYTES * 2 + 12345
    module = str(blob(tmp_path, size))
    home = tmp_path / "home"
    async with node_served(home) as address, Client(address, token=read_owner_token(home)) as c:
        with SpearLog("DEBUG", "{message}") as messages:
            result = await c.call(FunctionSpec(module))
        assert result.task.state is TaskState.COMPLETED
        assert len(result.output) == size and result.output == blob_bytes(size)
        # One run: CallTask answered with the task, its output read with GetResult.
        assert (_served(messages, _CALL_TASK), _served(messages, _GET_RESULT)) == (1, 1)
        assert _served(messages, _RUN_TASK) == 0
        assert [t.id for t in await c.tasks()] == [result.task.id]
        stub = Stub(c._channel, SpearletService.SERVICE)
        reply = await stub.call_task(
            pb.SubmitTaskRequest(spec=cv.spec_to_wire(FunctionSpec(module)))
        )
        assert (reply.data, reply.fetch_output) == (b"", True)
        assert cv.task_from_wire(reply.task).state is TaskState.COMPLETED
        assert len(await c.tasks()) == 2


async def test_a_reader_may_not_call_and_nothing_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    module = str(hello(tmp_path))
    async with node_served(home) as address:
        async with Client(address, token=read_owner_token(home)) as owner:
            await owner.upload(module)  # (so that the reader's call is the first refused)
        reader = TokenStore(home).issue("reader", Role.READER)
        async with Client(address, token=reader) as client:
            with SpearLog("DEBUG", "{message}") as messages:
                with pytest.raises(PermissionDenied, match=f"may not call {_CALL_TASK}"):
                    await client.call(FunctionSpec(module))
            # Refused, not unknown: the client does not try RunTask instead.
            assert any(m.startswith(f"refused {_CALL_TASK}") for m in messages)
            assert not any(_RUN_TASK in m for m in messages)
        async with Client(address, token=read_owner_token(home)) as owner:
            assert await owner.tasks() == []


async def test_a_node_without_call_task_is_called_with_run_task(tmp_path: Path) -> None:
    home = tmp_path / "home"
    size = CHUNK_BYTES + 1
    module = str(blob(tmp_path, size))
    async with (
        node_served(home, with_call_task=False) as address,
        Client(address, token=read_owner_token(home)) as client,
    ):
        with SpearLog("DEBUG", "{message}") as messages:
            first = await client.call(FunctionSpec(str(hello(tmp_path))))
            assert first.output == b"hello\n" and first.task.state is TaskState.COMPLETED
            big = await client.call(FunctionSpec(module))
        assert big.output == blob_bytes(size)
        assert _served(messages, _RUN_TASK) == 2 and _CALL_TASK not in "".join(messages)
        assert client._streamed_calls == {address}  # (asked once: remembered for the node)
        assert len(await client.tasks()) == 2  # each ran once
        # What the node answers CallTask: grpc's UNIMPLEMENTED, spear's Unimplemented.
        stub = Stub(client._channel, SpearletService.SERVICE)
        with pytest.raises(Unimplemented), client._errors():
            await stub.call_task(pb.SubmitTaskRequest())
