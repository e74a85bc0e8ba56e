"""A task's caller stream and the object store, through spear.Client over real gRPC."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from conftest import ROOT, build_c
from test_spearlet_service import served

import spear
from spear.core.models import FunctionSpec, TaskState

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="session")
def transform_wasm() -> Path:
    return build_c(ROOT / "examples" / "stream_transform" / "transform.c")


async def test_exchange_messages_with_a_running_task(tmp_path: Path, transform_wasm: Path) -> None:
    async with served(tmp_path / "home") as (_, _, client):
        async with client.start_task(FunctionSpec(str(transform_wasm), timeout_s=60)) as task:
            assert task.task.state is TaskState.PENDING
            received: list[bytes] = []

            async def read() -> None:
                async for message in task.messages():
                    received.append(message)

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                # The middle message is larger than one 1 MiB transport chunk would be for
                # logs, but fits one gRPC message (the stream's own queue bounds it).
                for word in ("hello", "stream", "x" * 100_000, ""):
                    await task.send(word)
                await task.close()
            assert received == [b"1: HELLO", b"2: STREAM", b"3: " + b"X" * 100_000, b"4: "]
            assert task.task.state is TaskState.COMPLETED  # the final message carried it
        result = await task
        assert result.output == b"transformed 4 messages\n"


async def test_leaving_early_ends_the_task_input(tmp_path: Path, transform_wasm: Path) -> None:
    async with served(tmp_path / "home") as (_, _, client):
        async with client.start_task(FunctionSpec(str(transform_wasm), timeout_s=60)) as task:
            await task.send("one")
            assert await task.receive() == b"1: ONE"
        # The node ends the task's input when its caller goes away: the agent finishes.
        final = await task.wait()
        assert final.state is TaskState.COMPLETED
        assert (await client.result(task.id)).output == b"transformed 1 messages\n"


async def test_a_stream_whose_module_the_node_lost_starts_after_a_new_upload(
    tmp_path: Path, transform_wasm: Path
) -> None:
    import shutil

    spec = FunctionSpec(str(transform_wasm), timeout_s=60)
    async with served(tmp_path / "home") as (_, _, client):
        for _ in range(2):  # (the second start after the node's modules were removed)
            async with client.start_task(spec) as task:
                await task.send("one")
                assert await task.receive() == b"1: ONE"
            assert (await task.wait()).state is TaskState.COMPLETED
            shutil.rmtree(tmp_path / "home" / "artifacts")


async def test_objects_over_grpc(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (_, _, client):
        big = bytes(range(256)) * (6 * 4096)  # 6 MiB: more than one message, in chunks
        info = await client.put_object("data/big", big)
        assert (info.key, info.size) == ("data/big", len(big))
        data, got = await client.get_object("data/big")
        assert data == big and got.version == info.version
        with pytest.raises(spear.Conflict):  # ABORTED on the wire
            await client.put_object("data/big", b"x", expected_version=info.version - 1)
        newer = await client.put_object("data/big", b"small", expected_version=info.version)
        assert newer.version > info.version
        assert (await client.add_object_ref("data/big")).refs == 1
        assert (await client.pin_object("data/big")).pinned
        assert [o.key for o in await client.list_objects("data/")] == ["data/big"]
        assert (await client.unpin_object("data/big")).pinned is False
        assert (await client.remove_object_ref("data/big")).refs == 0
        with pytest.raises(spear.NotFound):
            await client.get_object("data/missing")
        await client.put_object("tmp/x", b"1")
        assert await client.delete_object("tmp/x") is True
        assert await client.delete_object("tmp/x") is False
        await client.put_object("tmp/pinned", b"p")
        await client.pin_object("tmp/pinned")
        with pytest.raises(spear.Conflict, match="pinned"):
            await client.delete_object("tmp/pinned")
        assert await client.delete_object("tmp/pinned", force=True) is True
        with pytest.raises(spear.NotFound):
            await client.get_object("tmp/pinned")


async def test_submit_a_module_stored_as_an_object(tmp_path: Path) -> None:
    from wat_tasks import hello

    async with served(tmp_path / "home") as (node, server, client):
        await client.put_object("modules/hello.wasm", hello(tmp_path).read_bytes())
        from spear.node.server import SpearletService
        from spear.transport._gen.pb import spearlet_pb2 as pb
        from spear.transport.services import Stub

        assert client._stub is not None  # (opens the client's channel)
        stub = Stub(client._channel, SpearletService.SERVICE)
        request = pb.SubmitTaskRequest(
            spec=pb.FunctionSpec(artifact="hello.wasm", runtime="wasm"),
            artifact_object="modules/hello.wasm",
            wait=True,
        )
        info = await stub.submit_task(request)
        assert info.state == pb.TaskState.TASK_STATE_COMPLETED
        assert (await client.result(info.id)).output == b"hello\n"
