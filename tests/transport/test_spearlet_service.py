"""spear.v1.Spearlet over real gRPC on loopback: a real node, server and client."""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from wat_tasks import exits, hello, ticker

import spear
from spear.core.models import FunctionSpec, TaskState
from spear.node.client import Client
from spear.node.server import serve_spearlet
from spear.transport.auth import read_owner_token
from spear.transport.serving import Security, parse_listen

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from spear.node.server import SpearletServer


@contextlib.asynccontextmanager
async def served(
    home: Path, **kwargs: Any
) -> AsyncIterator[tuple[spear.LocalNode, SpearletServer, Client]]:
    """A real node, its gRPC server on a free loopback port, and a client of it.

    (One context in the test's own task: a node's task group must be entered and left there.)
    """
    async with spear.LocalNode(home) as node:
        server = await serve_spearlet(node, "127.0.0.1:0", **kwargs)
        try:
            assert server.address is not None
            async with Client(server.address, token=read_owner_token(home)) as client:
                yield node, server, client
        finally:
            await server.close()


async def test_submit_then_result_logs_and_status(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (_, _, client):
        handle = await client.submit(FunctionSpec(str(hello(tmp_path))))
        assert handle.task.state is TaskState.PENDING
        result = await handle
        assert result.task.state is TaskState.COMPLETED and result.exit_code == 0
        assert result.output == b"hello\n"
        chunks = [c async for c in handle.logs(follow=False)]
        assert {c.stream: c.data for c in chunks} == {"stdout": b"hello\n", "stderr": b"oops\n"}
        task = await client.task(handle.id)
        assert [s for s, _ in task.history] == ["PENDING", "RUNNING", "COMPLETED"]
        assert task.spec.artifact.endswith("hello.wasm")
        assert [t.id for t in await client.tasks()] == [handle.id]
        assert await client.tasks(TaskState.FAILED) == []


async def test_call_runs_a_task_and_returns_its_result_in_one_call(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (node, _, client):
        result = await client.call(FunctionSpec(str(hello(tmp_path))))
        assert result.task.state is TaskState.COMPLETED and result.output == b"hello\n"
        # The task is recorded like any other, RUNNING from the start (it ran at once).
        task = await client.task(result.task.id)
        assert [s for s, _ in task.history] == ["PENDING", "RUNNING", "COMPLETED"]
        failed = await client.call(FunctionSpec(str(exits(tmp_path, 3))))
        assert failed.task.state is TaskState.FAILED and failed.exit_code == 3
        junk = tmp_path / "junk.wasm"
        junk.write_bytes(b"not wasm at all")
        with pytest.raises(spear.InvalidModule):
            await client.call(FunctionSpec(str(junk)))
        # In process, the same call on the same node.
        local = await node_api(node).call(FunctionSpec(str(hello(tmp_path))))
        assert local.output == b"hello\n" and local.task.state is TaskState.COMPLETED
        # RunTask called with a stub made from the service's descriptor: the result streamed,
        # the task's record in the first chunk.
        from spear.node.server import SpearletService
        from spear.transport import _convert as cv
        from spear.transport._gen.pb import spearlet_pb2 as pb
        from spear.transport.services import Stub

        assert client._stub is not None  # (opens the client's channel)
        stub = Stub(client._channel, SpearletService.SERVICE)
        spec = cv.spec_to_wire(FunctionSpec(str(hello(tmp_path))))
        chunks = [c async for c in stub.run_task(pb.SubmitTaskRequest(spec=spec))]
        assert chunks[0].HasField("task")
        assert cv.task_from_wire(chunks[0].task).state is TaskState.COMPLETED
        assert b"".join(c.data for c in chunks) == b"hello\n"


async def test_specs_of_one_uploaded_module_each_run_as_sent(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (_, _, client):
        module = str(hello(tmp_path))
        plain, starved = FunctionSpec(module), FunctionSpec(module, fuel=1)
        outcomes = [await client.call(spec) for spec in (plain, starved, plain, starved)]
        assert [r.task.state for r in outcomes] == [TaskState.COMPLETED, TaskState.FAILED] * 2
        assert [r.task.spec.fuel for r in outcomes] == [None, 1, None, 1]


async def test_a_module_removed_from_the_node_is_uploaded_again(tmp_path: Path) -> None:
    import shutil

    async with served(tmp_path / "home") as (_, _, client):
        module = str(hello(tmp_path))
        assert (await client.call(FunctionSpec(module))).output == b"hello\n"
        artifacts = tmp_path / "home" / "artifacts"
        assert len(list(artifacts.iterdir())) == 1
        # Each way of sending a task, after the node's modules were removed by hand: the
        # node says it lacks the module, the client sends it again and the task runs.
        for send in (
            lambda: client.call(FunctionSpec(module)),
            lambda: client.run(FunctionSpec(module)),
            lambda: client.submit(FunctionSpec(module)),
            lambda: client.submit_many([FunctionSpec(module)] * 3, wait=True),
        ):
            shutil.rmtree(artifacts)
            sent = await send()
            for outcome in sent if isinstance(sent, list) else [sent]:
                task = getattr(outcome, "task", outcome)
                task = (await client.wait(task.id)) if task.state is TaskState.PENDING else task
                assert task.state is TaskState.COMPLETED, outcome
            assert len(list(artifacts.iterdir())) == 1
        # A module the client never sent is not sent on that say-so: the error stands.
        with pytest.raises(spear.NotFound, match="no artifact sha256:"):
            await _call_with_digest(client, "0" * 64)


async def _call_with_digest(client: Client, digest: str) -> Any:
    """A CallTask naming a module by a digest this client never uploaded."""
    from spear.transport import _convert as cv
    from spear.transport._gen.pb import spearlet_pb2 as pb

    request = pb.SubmitTaskRequest(
        spec=cv.spec_to_wire(FunctionSpec("m.wasm")), artifact_digest=digest, wait=True
    )
    return await client._retrying(lambda: client._stub.call_task(request))


async def test_the_specs_resolved_last_are_kept_least_recently_used_first_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear.node import server as served_module

    monkeypatch.setattr(served_module, "_RESOLVED_KEPT", 2)
    async with served(tmp_path / "home") as (_, server, client):
        module = str(hello(tmp_path))
        a, b, c = (FunctionSpec(module, args=(name,)) for name in "abc")
        for spec in (a, b, a, c):  # (a used again before c comes: b is the one let go)
            assert (await client.call(spec)).task.state is TaskState.COMPLETED
        kept = server.service._resolved.values()  # type: ignore[attr-defined]
        assert [spec.args for spec in kept] == [("a",), ("c",)]


def node_api(node: spear.LocalNode) -> Any:
    from spear.node.inprocess import InProcessNode

    return InProcessNode(node)


async def test_exit_code_and_batch_submit(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (_, _, client):
        ok, bad = str(hello(tmp_path)), str(exits(tmp_path, 3))
        outcomes = await client.submit_many(
            [FunctionSpec(ok), FunctionSpec(bad), FunctionSpec(str(tmp_path / "nope.wasm"))],
            wait=True,
        )
        assert isinstance(outcomes[0], spear.Task) and outcomes[0].state is TaskState.COMPLETED
        assert isinstance(outcomes[1], spear.Task) and outcomes[1].exit_code == 3
        assert isinstance(outcomes[2], spear.NotFound)


async def test_follow_logs_and_watch_states(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (_, _, client):
        handle = await client.submit(FunctionSpec(str(ticker(tmp_path, 5, 20))))
        states = []
        data = b""
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for task in handle.watch():
                    states.append(task.state)

            tg.start_soon(watch)
            async for chunk in handle.logs(["stdout"], follow=True):
                data += chunk.data
        assert data == b"tick\n" * 5 + b"done\n"
        assert states[-1] is TaskState.COMPLETED
        assert states == sorted(set(states), key=list(TaskState).index)


async def test_cancel_a_running_task(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (_, _, client):
        handle = await client.submit(FunctionSpec(str(ticker(tmp_path, 10_000, 10))))
        async for task in handle.watch():
            if task.state is TaskState.RUNNING:
                break
        cancelled = await handle.cancel("enough")
        assert cancelled.state is TaskState.CANCELLED and cancelled.reason == "enough"
        assert (await handle.wait()).state is TaskState.CANCELLED


async def test_errors_map_to_spear_errors(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (_, _, client):
        with pytest.raises(spear.NotFound):
            await client.task("0123456789abcdef")
        junk = tmp_path / "junk.wasm"
        junk.write_bytes(b"not wasm at all")
        with pytest.raises(spear.InvalidModule):  # the exact class, through spear-error-code
            await client.submit(FunctionSpec(str(junk)))
        with pytest.raises(spear.InvalidArgument):
            await client.logs("x", ["nope"]).__anext__()
        handle = await client.submit(FunctionSpec(str(ticker(tmp_path, 10_000, 10))))
        with pytest.raises(spear.Unavailable, match="has not finished"):
            await client.result(handle.id, wait=False)
        await handle.cancel()


async def test_unreachable_node_is_unavailable() -> None:
    async with Client("127.0.0.1:1") as c:
        with pytest.raises(spear.Unavailable, match="cannot reach"):
            await c.node_info()


async def test_node_info(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (node, server, client):
        info = await client.node_info()
        assert info.address == server.address and info.state == "running"
        assert info.runtimes and "wasm" in info.runtimes
        assert info.capacity == node.controller.capacity and info.running_tasks == 0
        assert info.data_dir == str(node.settings.data_dir)


async def test_large_artifact_moves_in_chunks_and_once(tmp_path: Path) -> None:
    async with served(tmp_path / "home") as (node, _, client):
        # A valid module of ~5 MiB (a data segment), larger than one 4 MiB message.
        blob = "\\00" * (5 * 1024 * 1024)
        wat = f'(module (memory (export "memory") 81) (data (i32.const 0) "{blob}") ' \
              '(func (export "_start")))'  # fmt: skip
        path = tmp_path / "big.wasm"
        import wasmtime

        path.write_bytes(wasmtime.wat2wasm(wat))
        assert path.stat().st_size > 4 * 1024 * 1024
        result = await (await client.submit(FunctionSpec(str(path))))
        assert result.task.state is TaskState.COMPLETED
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        stored = node.settings.data_dir / "artifacts" / digest / "big.wasm"
        assert stored.read_bytes() == path.read_bytes()
        # A new client finds the node has it and sends no bytes: the file is not rewritten.
        before = stored.stat().st_mtime_ns
        async with Client(client.address, token=read_owner_token(tmp_path / "home")) as again:
            await (await again.submit(FunctionSpec(str(path))))
        assert stored.stat().st_mtime_ns == before


async def test_oversized_message_is_refused(tmp_path: Path) -> None:
    async with served(tmp_path / "home", max_message_bytes=64 * 1024) as (_, server, _):
        assert server.address is not None
        big = b"x" * (200 * 1024)
        owner = read_owner_token(tmp_path / "home")
        async with Client(server.address, token=owner, max_message_bytes=1024 * 1024) as c:
            # (grpc's own wording: the server's limit, 64 KiB, refuses it before a handler)
            with pytest.raises(spear.ResourceExhausted, match=r"larger than max .*65536"):
                await c.submit(FunctionSpec(str(hello(tmp_path))), stdin=big)
            # The node is fine afterwards.
            assert (await (await c.submit(FunctionSpec(str(hello(tmp_path)))))).exit_code == 0


async def test_draining_node_refuses_new_tasks(tmp_path: Path) -> None:
    from spear.node.inprocess import InProcessNode

    async with spear.LocalNode(tmp_path / "home") as node:
        api = InProcessNode(node)
        srv = await serve_spearlet(api, "127.0.0.1:0")
        try:
            assert srv.address is not None
            async with Client(srv.address, token=read_owner_token(tmp_path / "home")) as c:
                await api.drain(0)
                with pytest.raises(spear.Unavailable, match="draining"):
                    await c.submit(FunctionSpec(str(hello(tmp_path))))
                assert (await c.node_info()).state == "draining"
        finally:
            await srv.close()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:7070") == ("::1", 7070)
    assert parse_listen(":80") == ("127.0.0.1", 80)
    for bad in ("host:port", "1.2.3.4:70000"):
        with pytest.raises(spear.InvalidArgument):
            parse_listen(bad)


async def test_a_failing_call_is_internal_and_the_node_serves_on(tmp_path: Path) -> None:
    from spear.core.artifacts import ArtifactStore
    from spear.node.inprocess import InProcessNode
    from spear.node.server import SpearletServer

    class Broken(InProcessNode):
        async def node_info(self) -> Any:
            raise RuntimeError("boom")

    async with spear.LocalNode(tmp_path / "home") as node:
        server = SpearletServer(
            Broken(node),
            ArtifactStore(tmp_path / "artifacts", 1024),
            security=Security.for_data_dir(tmp_path / "home"),
        )
        address = await server.start("127.0.0.1:0")
        try:
            async with Client(address, token=read_owner_token(tmp_path / "home")) as c:
                with pytest.raises(spear.SpearError, match="internal error: RuntimeError: boom"):
                    await c.node_info()
                assert await c.tasks() == []
        finally:
            await server.close()
