"""What every call through spear's grpc.aio server gets from its guard
(transport/aio_server.py), checked one rule at a time on a real server on loopback with
stock grpcio clients: the log line each call leaves (its outcome and time), a malformed
request named by its message, a bug's code trailer, a stream's handler closed in its own
call, a handler that writes to the context, the grace a close gives, the port kept to
itself, the reply size limit, the trace context adopted only when asked, and a users'
TLS port that asks no certificate. (Written from the module's mutation survivors,
docs/mutation/REPORT.md.)"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest
from loguru import logger

from spear import errors
from spear.tracing.base import current_traceparent
from spear.transport import tls
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport.aio_client import AioChannel
from spear.transport.aio_server import AioServer, GrpcServer
from spear.transport.auth import Authorizer, Role, TokenStore
from spear.transport.channels import Credentials
from spear.transport.services import ServedMethod, ServiceBase, Stub
from spear.transport.serving import Security

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NAP_S = 0.05  # what the slow handler sleeps: a call's logged time is at least this


def _raw(handler: Any, **kwargs: Any) -> ServedMethod:
    """A method of bytes in and out (no message class: its decoder is a plain function)."""
    return ServedMethod(handler, decode=bytes, encode=bytes, **kwargs)


@contextlib.asynccontextmanager
async def _serving(methods: dict[str, ServedMethod], **kwargs: Any) -> AsyncIterator[str]:
    """An open AioServer named "peer" serving `methods` on a loopback port: its address."""
    server = AioServer(methods, name="peer", security=Security.open(), **kwargs)
    address = await server.start("127.0.0.1:0")
    try:
        yield address
    finally:
        await server.close()


@pytest.fixture
def messages() -> Iterator[list[str]]:
    """spear's log messages at DEBUG and above while the test runs, with the exception's
    type after a logged exception."""
    found: list[str] = []

    def keep(message: Any) -> None:
        record = message.record
        exc = record["exception"]
        found.append(record["message"] + (f" [{exc.type.__name__}]" if exc else ""))

    sink = logger.add(keep, level="DEBUG", format="{message}", filter="spear")
    logger.enable("spear")
    try:
        yield found
    finally:
        logger.disable("spear")
        logger.remove(sink)


async def _until(found: list[str], pattern: str) -> re.Match[str]:
    """The first message that matches `pattern` whole, once one is logged."""
    deadline = time.monotonic() + 10
    while True:
        for message in found:
            match = re.fullmatch(pattern, message)
            if match:
                return match
        assert time.monotonic() < deadline, f"nothing logged as {pattern!r}: {found}"
        await asyncio.sleep(0.01)


async def test_each_call_is_logged_with_its_outcome_and_time(messages: list[str]) -> None:
    started = asyncio.Event()

    async def ok(request: bytes, _context: Any) -> bytes:
        await asyncio.sleep(NAP_S)
        return request

    async def missing(_request: bytes, _context: Any) -> bytes:
        raise errors.NotFound("no such thing")

    async def bug(_request: bytes, _context: Any) -> bytes:
        raise RuntimeError("a bug")

    async def aborts(_request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now")
        raise AssertionError("abort returned")

    async def forever(_request: bytes, _context: Any) -> bytes:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("woken")

    routes = {"Ok": ok, "Missing": missing, "Bug": bug, "Aborts": aborts, "Forever": forever}
    async with _serving(
        {f"/test.T/{name}": _raw(handler) for name, handler in routes.items()}
    ) as address:
        assert f"serving peer on {address}" in messages
        times = r"(\d+\.\d\d) ms on " + re.escape(address)
        async with grpc.aio.insecure_channel(address) as channel:
            began = time.perf_counter()
            assert await channel.unary_unary("/test.T/Ok")(b"hi", timeout=10) == b"hi"
            wall_ms = (time.perf_counter() - began) * 1e3
            took = await _until(messages, "rpc /test.T/Ok OK in " + times)
            assert NAP_S * 1e3 <= float(took[1]) <= wall_ms

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/test.T/Missing")(b"", timeout=10)
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
            await _until(messages, "rpc /test.T/Missing not_found in " + times)

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/test.T/Bug")(b"", timeout=10)
            assert caught.value.code() is grpc.StatusCode.INTERNAL
            assert caught.value.details() == "internal error: RuntimeError: a bug"
            assert ("spear-error-code", "internal") in tuple(caught.value.trailing_metadata())
            await _until(messages, "rpc /test.T/Bug failed \\[RuntimeError\\]")
            await _until(messages, "rpc /test.T/Bug internal in " + times)

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/test.T/Aborts")(b"", timeout=10)
            assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            await _until(messages, "rpc /test.T/Aborts aborted in " + times)

            call = channel.unary_unary("/test.T/Forever")(b"", timeout=10)
            await asyncio.wait_for(started.wait(), 10)
            call.cancel()  # (the caller leaves: the handler is cancelled)
            await _until(messages, "rpc /test.T/Forever cancelled in " + times)


async def test_a_malformed_request_is_named_by_its_message() -> None:
    async with _serving(
        {
            "/test.T/Typed": ServedMethod(
                lambda request, _context: _answer(request),
                decode=pb.ForwardTasksRequest.FromString,
                encode=pb.ForwardTasksResponse.SerializeToString,
            ),
            "/test.T/Untyped": ServedMethod(
                lambda request, _context: _answer(request),
                decode=lambda data: pb.ForwardTasksRequest.FromString(data),  # (no class's own)
                encode=pb.ForwardTasksResponse.SerializeToString,
            ),
        },
    ) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            for route, name in (("Typed", "ForwardTasksRequest"), ("Untyped", "request")):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(f"/test.T/{route}")(b"\xff\xff\xff", timeout=10)
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert (caught.value.details() or "").startswith(f"malformed {name} message: ")


async def _answer(_request: Any) -> pb.ForwardTasksResponse:
    return pb.ForwardTasksResponse()


async def test_a_streams_handler_is_closed_within_its_call_when_the_caller_leaves() -> None:
    """Its clean-up runs in the call's own task as the call ends (not later, in a task
    of the garbage collector's)."""
    tasks: dict[str, asyncio.Task[Any] | None] = {}
    closed = asyncio.Event()

    async def replies(_request: bytes, _context: Any) -> AsyncIterator[bytes]:
        tasks["began"] = asyncio.current_task()
        try:
            while True:  # (the caller stops reading: the guard waits to write, this
                yield b"x" * 256 * 1024  # generator waits at its yield)
        finally:
            tasks["closed"] = asyncio.current_task()
            closed.set()

    async with _serving({"/test.T/Replies": _raw(replies, server_streaming=True)}) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_stream("/test.T/Replies")(b"", timeout=10)
            assert len(await call.read()) == 256 * 1024
            await asyncio.sleep(0.2)  # (the server's writes blocked by flow control)
            call.cancel()
            await asyncio.wait_for(closed.wait(), 10)
        assert tasks["closed"] is tasks["began"]


async def test_a_streams_handler_may_write_to_the_context_instead() -> None:
    async def writes(request: bytes, context: Any) -> None:
        for part in request.split(b","):
            await context.write(part)

    async with _serving({"/test.T/Writes": _raw(writes, server_streaming=True)}) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_stream("/test.T/Writes")(b"a,b,c", timeout=10)
            assert [reply async for reply in call] == [b"a", b"b", b"c"]


async def test_a_close_with_a_grace_lets_running_calls_finish() -> None:
    started = asyncio.Event()

    async def slow(request: bytes, _context: Any) -> bytes:
        started.set()
        await asyncio.sleep(0.3)
        return request

    server = AioServer({"/test.T/Slow": _raw(slow)}, name="peer", security=Security.open())
    address = await server.start("127.0.0.1:0")
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/test.T/Slow")(b"done", timeout=10)
        await asyncio.wait_for(started.wait(), 10)
        await server.close(grace_s=10)
        assert await call == b"done"
    assert server.address is None


async def test_the_port_is_not_shared_with_another_server() -> None:
    """grpc's servers set SO_REUSEPORT unless told not to, which would let another server
    of the same user bind the port and take some of its callers."""
    server = AioServer({}, name="peer", security=Security.open())
    assert server.address is None  # (before it serves)
    address = await server.start("127.0.0.1:0")
    other = grpc.aio.server()  # (grpc's defaults)
    try:
        try:
            bound = other.add_insecure_port(address)
        except RuntimeError:  # (how grpc says the port is taken)
            bound = 0
        assert bound == 0
    finally:
        await other.stop(None)
        await server.close()


async def test_a_reply_over_the_limit_is_not_sent() -> None:
    limit = 64 * 1024

    async def large(_request: bytes, _context: Any) -> bytes:
        return b"x" * (2 * limit)

    async with _serving(
        {"/test.T/Large": _raw(large)},
        max_message_bytes=limit,
    ) as address:
        options = [("grpc.max_receive_message_length", 16 * limit)]  # (the caller takes it)
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/test.T/Large")(b"", timeout=10)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


class _NodeInfo(ServiceBase):
    SERVICE = pb.DESCRIPTOR.services_by_name["Spearlet"]

    def __init__(self) -> None:
        self.traceparents: list[str | None] = []

    async def get_node_info(self, _request: pb.GetNodeInfoRequest) -> pb.NodeInfo:
        self.traceparents.append(current_traceparent.get())
        return pb.NodeInfo(name="here")


async def test_a_callers_traceparent_is_adopted_only_when_the_server_is_traced() -> None:
    seen: list[str | None] = []

    async def handler(request: bytes, _context: Any) -> bytes:
        seen.append(current_traceparent.get())
        return request

    metadata = (("traceparent", TRACEPARENT),)
    for traced in (None, True):  # (None: the default)
        kwargs = {} if traced is None else {"traced": traced}
        async with (
            _serving({"/test.T/Seen": _raw(handler)}, **kwargs) as address,
            grpc.aio.insecure_channel(address) as channel,
        ):
            await channel.unary_unary("/test.T/Seen")(b"", metadata=metadata, timeout=10)
    assert seen == [None, TRACEPARENT]

    service = _NodeInfo()
    served = GrpcServer(service, name="node", security=Security.open())  # (not traced)
    address = await served.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary("/spear.v1.Spearlet/GetNodeInfo")
            await call(pb.GetNodeInfoRequest().SerializeToString(), metadata=metadata, timeout=10)
    finally:
        await served.close()
    assert service.traceparents == [None]


async def test_a_users_tls_port_asks_no_certificate(tmp_path: Path) -> None:
    """The node's port serves its certificate; a user with the CA and a token (no
    certificate of their own) is served."""
    ca, own, user = tmp_path / "ca", tmp_path / "node-1", tmp_path / "user"
    tls.create_ca(ca)
    tls.issue(ca, "node-1", own)
    user.mkdir()
    shutil.copy(ca / tls.CA_CERT, user / tls.CA_CERT)
    tokens = TokenStore(tmp_path / "data")
    security = Security(Authorizer(tokens), tls.TlsFiles(own))
    server = GrpcServer(_NodeInfo(), name="node", security=security)
    address = await server.start("127.0.0.1:0")
    try:
        token = tokens.issue("ann", Role.READER)
        channel = AioChannel(address, Credentials(token=token, tls=tls.TlsFiles(user)))
        try:
            stub = Stub(channel, _NodeInfo.SERVICE, timeout=10)
            assert (await stub.get_node_info(pb.GetNodeInfoRequest())).name == "here"
        finally:
            await channel.aclose()
    finally:
        await server.close()


async def test_a_port_grpc_cannot_bind_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """(The port is tried first with a socket of spear's own, which finds a port taken or
    an address not this host's; what grpc may still refuse after it is said the same way.)"""
    make = grpc.aio.server

    def refusing(**kwargs: Any) -> Any:
        server = make(**kwargs)

        def add_insecure_port(_address: str) -> int:
            raise RuntimeError("Failed to bind to address 127.0.0.1:1")

        server.add_insecure_port = add_insecure_port
        return server

    monkeypatch.setattr(grpc.aio, "server", refusing)
    server = AioServer({}, name="peer", security=Security.open())
    with pytest.raises(errors.InvalidArgument) as caught:
        await server.start("127.0.0.1:0")
    assert str(caught.value) == (
        "cannot listen on 127.0.0.1:0: Failed to bind to address 127.0.0.1:1"
    )
    assert server.address is None


async def test_a_node_port_keeps_its_name_limit_and_tracing(messages: list[str]) -> None:
    """`GrpcServer` hands the server it starts its name (in its log line), its message
    size limit and whether it traces."""
    service = _NodeInfo()
    served = GrpcServer(service, name="node-7", security=Security.open(), max_message_bytes=1024)
    served.traced = True
    address = await served.start("127.0.0.1:0")
    try:
        assert f"serving node-7 on {address}" in messages
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary("/spear.v1.Spearlet/GetNodeInfo")
            metadata = (("traceparent", TRACEPARENT),)
            await call(pb.GetNodeInfoRequest().SerializeToString(), metadata=metadata, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"\x0a\x80\x10" + b"x" * 2048, timeout=10)  # (2 KiB: over 1 KiB)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await served.close()
    assert service.traceparents == [TRACEPARENT]
