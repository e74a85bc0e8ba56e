"""transport/aio_server.py `GrpcServer` (grpc.aio): every cardinality served through one
guard (admission first, spear's errors as statuses, a bug one INTERNAL call), health and
reflection beside the services; a real server on loopback, called by spear's own
grpc.aio client (`AioChannel`, `Stub`) and by stock grpcio."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from loguru import logger

from spear import errors
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport._status import client_errors
from spear.transport.aio_client import AioChannel
from spear.transport.aio_server import GrpcServer
from spear.transport.auth import Authorizer, Role, TokenStore, current_principal
from spear.transport.channels import Credentials
from spear.transport.services import ServiceBase, Stub
from spear.transport.serving import Security

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

SERVICE = pb.DESCRIPTOR.services_by_name["Spearlet"]


class Misbehaving(ServiceBase):
    """Spearlet methods of each cardinality that do what the request's id asks: answer,
    raise a SpearError, or fail with a bug (after a first reply, for streams)."""

    SERVICE = SERVICE

    def __init__(self) -> None:
        self.ran: list[tuple[str, str | None]] = []  # (method, principal)
        self.watch_ended = asyncio.Event()

    def _ran(self, method: str) -> None:
        principal = current_principal.get()
        self.ran.append((method, principal and principal.name))

    async def get_node_info(self, request: pb.GetNodeInfoRequest) -> pb.NodeInfo:
        self._ran("GetNodeInfo")
        return pb.NodeInfo(name="here")

    async def watch_task(self, request: pb.WatchTaskRequest) -> AsyncIterator[pb.TaskInfo]:
        self._ran("WatchTask")
        try:
            yield pb.TaskInfo(id=request.task_id)
            if request.task_id == "missing":
                raise errors.NotFound("no such task: missing")
            if request.task_id == "bug":
                raise KeyError("oops")
            if request.task_id == "forever":
                await asyncio.Event().wait()
        finally:
            self.watch_ended.set()

    async def upload_artifact(self, chunks: AsyncIterator[pb.ArtifactChunk]) -> pb.ArtifactRef:
        self._ran("UploadArtifact")
        names = [chunk.name async for chunk in chunks]
        if "bug" in names:
            raise RuntimeError("a bug in the handler")
        if "conflict" in names:
            raise errors.Conflict("that artifact differs")
        return pb.ArtifactRef(digest=",".join(names))

    async def exchange_stream(
        self, messages: AsyncIterator[pb.StreamMessage]
    ) -> AsyncIterator[pb.StreamMessage]:
        self._ran("ExchangeStream")
        async for message in messages:
            if message.close:
                raise errors.InvalidArgument("closed by request")
            yield pb.StreamMessage(data=message.data.upper())


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[GrpcServer, Misbehaving, TokenStore]]:
    tokens = TokenStore(tmp_path)
    service = Misbehaving()
    server = GrpcServer(service, name="test", security=Security(Authorizer(tokens)))
    await server.start("127.0.0.1:0")
    try:
        yield server, service, tokens
    finally:
        await server.close()


async def _stub(server: GrpcServer, token: str | None) -> tuple[Stub, AioChannel]:
    assert server.address is not None
    channel = AioChannel(server.address, Credentials(token=token))
    return Stub(channel, SERVICE, timeout=10), channel


async def _call(server: GrpcServer, token: str | None, call: Any) -> Any:
    stub, channel = await _stub(server, token)
    try:
        with client_errors(str(server.address)):
            return await call(stub)
    finally:
        await channel.aclose()


async def _watch(stub: Stub, task_id: str) -> list[str]:
    return [t.id async for t in stub.watch_task(pb.WatchTaskRequest(task_id=task_id))]


def _chunks(*names: str) -> list[pb.ArtifactChunk]:
    return [pb.ArtifactChunk(name=n, data=b"x") for n in names]


async def test_every_cardinality_is_served_to_an_admitted_caller(
    served: tuple[GrpcServer, Misbehaving, TokenStore],
) -> None:
    server, service, tokens = served
    token = tokens.issue("sam", Role.SUBMITTER)
    assert (await _call(server, token, lambda s: s.get_node_info(pb.GetNodeInfoRequest()))).name
    assert await _call(server, token, lambda s: _watch(s, "t1")) == ["t1"]
    ref = await _call(server, token, lambda s: s.upload_artifact(_chunks("a", "b")))
    assert ref.digest == "a,b"

    async def exchange(stub: Stub) -> list[bytes]:
        messages = [pb.StreamMessage(data=b"hi"), pb.StreamMessage(data=b"there")]
        return [m.data async for m in stub.exchange_stream(messages)]

    assert await _call(server, token, exchange) == [b"HI", b"THERE"]
    assert [p for _, p in service.ran] == ["sam"] * 4  # the principal, in each handler


async def test_streams_are_refused_before_their_handler_runs(
    served: tuple[GrpcServer, Misbehaving, TokenStore],
) -> None:
    server, service, tokens = served
    reader = tokens.issue("ann", Role.READER)
    messages: list[str] = []
    sink = logger.add(messages.append, level="INFO", format="{message}", filter="spear")
    logger.enable("spear")
    try:
        with pytest.raises(errors.Unauthenticated, match="requires a credential"):
            await _call(server, None, lambda s: _watch(s, "t1"))
        with pytest.raises(errors.PermissionDenied, match="may not call") as denied:
            await _call(server, reader, lambda s: s.upload_artifact(_chunks("a")))
        assert not isinstance(denied.value, errors.Unauthenticated)
    finally:
        logger.disable("spear")
        logger.remove(sink)
    assert service.ran == []
    refused = [m.strip() for m in messages if m.startswith("refused ")]
    assert refused[0].startswith("refused /spear.v1.Spearlet/WatchTask: this node requires")
    assert refused[-1].startswith("refused /spear.v1.Spearlet/UploadArtifact: ann (reader)")


async def test_a_stream_that_fails_ends_with_the_error_after_its_replies(
    served: tuple[GrpcServer, Misbehaving, TokenStore],
) -> None:
    server, _, tokens = served
    token = tokens.issue("ann", Role.READER)
    stub, channel = await _stub(server, token)
    try:
        seen: list[str] = []
        with pytest.raises(errors.NotFound, match="no such task: missing"):
            with client_errors(str(server.address)):
                async for task in stub.watch_task(pb.WatchTaskRequest(task_id="missing")):
                    seen.append(task.id)
        assert seen == ["missing"]
    finally:
        await channel.aclose()


async def test_a_bug_in_a_handler_is_internal_and_the_server_serves_on(
    served: tuple[GrpcServer, Misbehaving, TokenStore],
) -> None:
    server, _, tokens = served
    token = tokens.issue("sam", Role.SUBMITTER)
    with pytest.raises(errors.SpearError, match="internal error: RuntimeError: a bug") as bug:
        await _call(server, token, lambda s: s.upload_artifact(_chunks("a", "bug")))
    assert bug.value.code == "internal"
    with pytest.raises(errors.SpearError, match="internal error: KeyError: 'oops'"):
        await _call(server, token, lambda s: _watch(s, "bug"))
    with pytest.raises(errors.Conflict, match="that artifact differs"):
        await _call(server, token, lambda s: s.upload_artifact(_chunks("conflict")))

    async def closing(stub: Stub) -> list[bytes]:
        messages = [pb.StreamMessage(data=b"a"), pb.StreamMessage(close=True)]
        return [m.data async for m in stub.exchange_stream(messages)]

    with pytest.raises(errors.InvalidArgument, match="closed by request"):
        await _call(server, token, closing)
    assert (await _call(server, token, lambda s: s.get_node_info(pb.GetNodeInfoRequest()))).name


async def test_a_client_that_leaves_cancels_its_handler(
    served: tuple[GrpcServer, Misbehaving, TokenStore],
) -> None:
    server, service, tokens = served
    token = tokens.issue("ann", Role.READER)
    stub, channel = await _stub(server, token)
    try:
        replies = stub.watch_task(pb.WatchTaskRequest(task_id="forever"))
        assert (await replies.__anext__()).id == "forever"
        await replies.aclose()  # the caller leaves the stream early
        await asyncio.wait_for(service.watch_ended.wait(), 10)
    finally:
        await channel.aclose()


async def test_a_malformed_streamed_message_is_invalid_argument(
    served: tuple[GrpcServer, Misbehaving, TokenStore],
) -> None:
    server, service, tokens = served
    token = tokens.issue("sam", Role.SUBMITTER)
    async with grpc.aio.insecure_channel(str(server.address)) as channel:
        upload = channel.stream_unary("/spear.v1.Spearlet/UploadArtifact")  # bytes: no codec
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await upload(
                iter([b"\x12\x02\xff\xfe"]),  # field 2 (name, a string): not UTF-8
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ArtifactChunk message" in (caught.value.details() or "")


async def test_health_watch_and_reflection_in_both_versions(
    served: tuple[GrpcServer, Misbehaving, TokenStore],
) -> None:
    server, _, tokens = served
    reader = tokens.issue("ann", Role.READER)
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    async with grpc.aio.insecure_channel(str(server.address)) as channel:
        health = health_pb2_grpc.HealthStub(channel)  # (no credential: health is open)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="spear.v1.Spearlet"))
        assert (await watch.read()).status == serving
        server.set_serving(False)
        assert (await asyncio.wait_for(watch.read(), 10)).status == not_serving
        watch.cancel()
        check = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == not_serving
        for version in ("v1", "v1alpha"):
            reflect = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            call = reflect(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                metadata=(("authorization", f"Bearer {reader}"),),
                timeout=10,
            )
            answer = [reply async for reply in call]
            names = {s.name for s in answer[0].list_services_response.service}
            assert {
                "spear.v1.Spearlet",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= names
        refused = reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [reply async for reply in refused]
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_close_is_safe_twice_and_before_start(tmp_path: Path) -> None:
    server = GrpcServer(Misbehaving(), name="test", security=Security.open())
    await server.close()
    async with server:
        assert (await server.start("127.0.0.1:0")) == server.address
    assert server.address is None
    await server.close()
