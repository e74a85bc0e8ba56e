"""The rules of a spear client's grpc.aio channel (transport/aio_client.py) and of the calls
it makes (transport/aio_streams.py), each against a stock grpc.aio server on loopback
whose methods do one thing: echo what a call carried, sleep, answer a size, fail with a
given status, count a streamed request, stream ticks. What a call sends (credentials,
trace, extra metadata), its deadline from a timeout or a caller's deadline, its size
limits, how each failure reaches the caller (with the name of the server it called),
and how a stream is used, cancelled and left."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any

import anyio
import grpc
import grpc.aio
import orjson
import pytest

from spear.errors import DeadlineExceeded, InvalidArgument, NotFound, SpearError, Unavailable
from spear.tracing.base import current_traceparent
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport._status import ERROR_CODE_KEY, RpcError, received_error_code
from spear.transport.aio_client import AioChannel, UnaryCall
from spear.transport.channels import Credentials
from spear.transport.services import Cardinality

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from spear.transport.aio_streams import AioCallStream

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
MiB = 1024 * 1024


def route(name: str) -> str:
    return f"/t.Rules/{name}"


class Rules:
    """The server's methods; a request and a reply are each a `LogChunk`."""

    def __init__(self) -> None:
        self.cancelled = anyio.Event()
        self.counted: list[int] = []

    async def echo(self, request: bytes, context: Any) -> bytes:
        seen = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        got = pb.LogChunk.FromString(request)
        return pb.LogChunk(stream=orjson.dumps(seen).decode(), data=got.data).SerializeToString()

    async def sleep(self, request: bytes, context: Any) -> bytes:
        await asyncio.sleep(pb.LogChunk.FromString(request).offset / 1000)
        return pb.LogChunk(stream="slept").SerializeToString()

    async def size(self, request: bytes, context: Any) -> bytes:
        return pb.LogChunk(data=b"x" * pb.LogChunk.FromString(request).offset).SerializeToString()

    async def fail(self, request: bytes, context: Any) -> bytes:
        """Ends with the status `stream` names, `data` its details, and `offset` 1: a
        spear-error-code trailer of "not_found"."""
        asked = pb.LogChunk.FromString(request)
        trailers = ((ERROR_CODE_KEY, "not_found"),) if asked.offset == 1 else ()
        await context.abort(grpc.StatusCode[asked.stream], asked.data.decode(), trailers)
        raise AssertionError("abort returns only by raising")

    async def count(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        """A streamed request counted; refused before reading it without a token (with a
        spear code), or with INTERNAL "boom" when the call says `spear-boom: 1`, and
        answered at once, unread, when it says `spear-unread: 1`."""
        seen = dict(context.invocation_metadata() or ())
        if "authorization" not in seen:
            code = ((ERROR_CODE_KEY, "unauthenticated"),)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token", code)
        if seen.get("spear-boom") == "1":
            await context.abort(grpc.StatusCode.INTERNAL, "boom")
        if seen.get("spear-deny") == "1":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        if seen.get("spear-unread") == "1":
            return pb.LogChunk(stream="unread").SerializeToString()
        n = 0
        async for _ in requests:
            n += 1
        self.counted.append(n)
        return pb.LogChunk(offset=n).SerializeToString()

    async def pipe(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """Each message back; refused before reading without a token."""
        if "authorization" not in dict(context.invocation_metadata() or ()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token")
        async for request in requests:
            yield request

    async def ticks(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            for i in range(pb.LogChunk.FromString(request).offset):
                yield pb.LogChunk(offset=i).SerializeToString()
                await asyncio.sleep(0.01)
        except BaseException:
            self.cancelled.set()
            raise


@contextlib.asynccontextmanager
async def served() -> AsyncIterator[tuple[Rules, str]]:
    rules = Rules()
    server = grpc.aio.server()
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(rules.echo),
        "Sleep": grpc.unary_unary_rpc_method_handler(rules.sleep),
        "Size": grpc.unary_unary_rpc_method_handler(rules.size),
        "Fail": grpc.unary_unary_rpc_method_handler(rules.fail),
        "Count": grpc.stream_unary_rpc_method_handler(rules.count),
        "Ticks": grpc.unary_stream_rpc_method_handler(rules.ticks),
        "Pipe": grpc.stream_stream_rpc_method_handler(rules.pipe),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Rules", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield rules, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call_of(
    channel: AioChannel, name: str, cardinality: Cardinality = Cardinality.UNARY_UNARY, **kw: Any
) -> AioCallStream:
    """A call of method `name` through `AioChannel.request`, as spear's stubs make one."""
    return channel.request(route(name), cardinality, pb.LogChunk, pb.LogChunk, **kw)


def unary_callable(channel: AioChannel, name: str) -> UnaryCall[pb.LogChunk, pb.LogChunk]:
    return channel.unary(route(name), lambda m: m.SerializeToString(), pb.LogChunk.FromString)


async def unary(channel: AioChannel, name: str, message: pb.LogChunk, **kwargs: Any) -> Any:
    """One unary call through `AioChannel.request`."""
    async with call_of(channel, name, **kwargs) as stream:
        await stream.send_message(message, end=True)
        return await stream.recv_message()


class Deadline:
    def __init__(self, remaining: float) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float:
        return self.remaining


async def test_a_call_sends_the_channels_credentials_and_what_the_caller_adds() -> None:
    async with served() as (_, address):
        channel = AioChannel(address, Credentials(token="secret", namespace="team-a"))
        trace = current_traceparent.set(TRACEPARENT)  # (an untraced channel sends none)
        try:
            by_dict = await unary(channel, "Echo", pb.LogChunk(data=b"hi"), metadata={"a": "1"})
            by_pairs = await unary(channel, "Echo", pb.LogChunk(), metadata=[("b", 2)])
            unary_call = unary_callable(channel, "Echo")
            plain = await unary_call(pb.LogChunk(), metadata={"c": "3"})
        finally:
            current_traceparent.reset(trace)
            await channel.aclose()
    assert by_dict.data == b"hi"
    for reply, extra in ((by_dict, {"a": "1"}), (by_pairs, {"b": "2"}), (plain, {"c": "3"})):
        seen = orjson.loads(reply.stream)
        assert seen["authorization"] == "Bearer secret" and seen["spear-namespace"] == "team-a"
        assert "traceparent" not in seen
        assert {k: seen.get(k) for k in extra} == extra


async def test_a_call_ends_at_its_timeout_or_its_callers_deadline_whichever_is_first() -> None:
    async with served() as (_, address):
        channel = AioChannel(address, Credentials(), name="node-x")
        slow = pb.LogChunk(offset=3000)
        try:
            for timeout, deadline in ((0.3, None), (None, Deadline(0.3)), (30, Deadline(0.3)),
                                      (0.3, Deadline(30)), (0.3, Deadline(0.5))):  # fmt: skip
                with anyio.fail_after(2.5):  # (the sleep answers after 3 s)
                    with pytest.raises(DeadlineExceeded) as caught:
                        await unary(channel, "Sleep", slow, timeout=timeout, deadline=deadline)
                assert str(caught.value) == f"node node-x did not answer {route('Sleep')} in time"
            # A unary callable's own deadline (its status, as a stub's call reports it).
            sleep = unary_callable(channel, "Sleep")
            with anyio.fail_after(2.5), pytest.raises(Unavailable, match="^Deadline Exceeded$"):
                await sleep(slow, deadline_s=0.3)
            assert (await sleep(pb.LogChunk(offset=1), deadline_s=10)).stream == "slept"
            # A client stream's deadline holds from the start of the block.
            count = call_of(channel, "Count", Cardinality.STREAM_UNARY, timeout=0.3,
                            metadata={"authorization": "x"})  # fmt: skip
            async with count as stream:
                await stream.send_message(pb.LogChunk())
                with anyio.fail_after(2.5), pytest.raises(DeadlineExceeded):
                    await stream.recv_message()  # (the request never ends: only time does)
        finally:
            await channel.aclose()


async def test_an_unreachable_server_is_named_as_the_channel_names_it() -> None:
    port = closed_port()
    address = f"127.0.0.1:{port}"
    named = AioChannel(address, Credentials(), name="SMS somewhere")
    anonymous = AioChannel.to(f":{port}", Credentials())
    try:
        assert anonymous.address == anonymous.name == address
        with anyio.fail_after(20):
            for channel, name in ((named, "SMS somewhere"), (anonymous, address)):
                with pytest.raises(Unavailable, match=f"^cannot reach node {name}: "):
                    await unary(channel, "Echo", pb.LogChunk())
            echo = unary_callable(named, "Echo")
            with pytest.raises(Unavailable, match=f"^cannot reach node {address}: "):
                await echo(pb.LogChunk())
            assert not await named.connected(0.2)  # (its last attempt failed: at once)
    finally:
        await named.aclose()
        await anonymous.aclose()
    with pytest.raises(InvalidArgument, match="expects HOST:PORT"):
        AioChannel.to("no port here", Credentials())


async def test_a_channel_is_connected_once_its_server_answers() -> None:
    async with served() as (_, address):
        channel = AioChannel.to(address, Credentials(), name="node-y")
        try:
            assert await channel.connected(10)
            assert await channel.connected(0)  # (READY: no wait)
            assert (await unary(channel, "Echo", pb.LogChunk(data=b"x"))).data == b"x"
        finally:
            await channel.aclose()


async def test_a_channel_still_connecting_is_not_connected_after_the_wait() -> None:
    """A port that takes the connection and never answers gRPC: `connected` waits
    `within_s`, then says no (and the channel's last attempt has not failed yet)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        channel = AioChannel(f"127.0.0.1:{silent.getsockname()[1]}", Credentials())
        try:
            with anyio.fail_after(5):
                assert not await channel.connected(0.5)
        finally:
            await channel.aclose()


async def test_replies_up_to_the_channels_limit_pass_and_larger_ones_are_refused() -> None:
    async with served() as (_, address):
        roomy = AioChannel.to(address, Credentials(), max_message_bytes=8 * MiB, name="big")
        assert roomy.name == "big" and unary_callable(roomy, "Size") is unary_callable(
            roomy, "Size"
        )
        tight = AioChannel(address, Credentials(), max_message_bytes=64 * 1024)
        size = [unary_callable(c, "Size") for c in (roomy, tight)]
        try:
            # Over grpc's own default of 4 MiB: the channel was made with the larger limit.
            assert len((await size[0](pb.LogChunk(offset=5 * MiB))).data) == 5 * MiB
            assert len((await unary(roomy, "Size", pb.LogChunk(offset=5 * MiB))).data) == 5 * MiB
            with pytest.raises(SpearError, match="(?i)message|larger|exceed"):
                await size[1](pb.LogChunk(offset=100 * 1024))
            with pytest.raises(RpcError) as refused:
                await unary(tight, "Size", pb.LogChunk(offset=100 * 1024))
            assert refused.value.status is grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            await roomy.aclose()
            await tight.aclose()


async def test_a_servers_failure_reaches_the_caller_as_it_was_given() -> None:
    async with served() as (_, address):
        channel = AioChannel(address, Credentials(), name="node-z")
        fail = unary_callable(channel, "Fail")
        try:
            # A spear code in the trailer: the status and the code kept for the stub.
            with pytest.raises(RpcError) as coded:
                await unary(
                    channel, "Fail", pb.LogChunk(stream="NOT_FOUND", data=b"gone", offset=1)
                )
            assert (coded.value.status, coded.value.message) == (grpc.StatusCode.NOT_FOUND, "gone")
            assert received_error_code.get() == "not_found"
            # No spear code: UNAVAILABLE is the server unreachable, and out of time is
            # DeadlineExceeded, both naming it; another status is itself.
            with pytest.raises(Unavailable, match="^cannot reach node node-z: busy"):
                await unary(channel, "Fail", pb.LogChunk(stream="UNAVAILABLE", data=b"busy"))
            with pytest.raises(Unavailable, match="^cannot reach node node-z: $"):
                await unary(channel, "Fail", pb.LogChunk(stream="UNAVAILABLE"))
            with pytest.raises(DeadlineExceeded, match="^node node-z did not answer"):
                await unary(channel, "Fail", pb.LogChunk(stream="DEADLINE_EXCEEDED", data=b"x"))
            with pytest.raises(RpcError) as plain:
                await unary(channel, "Fail", pb.LogChunk(stream="ABORTED", data=b"raced"))
            assert plain.value.status is grpc.StatusCode.ABORTED
            assert received_error_code.get() is None
            # The unary callable: spear's errors, the address where no details say more.
            with pytest.raises(Unavailable, match=f"^cannot reach node {address}: busy"):
                await fail(pb.LogChunk(stream="UNAVAILABLE", data=b"busy"))
            with pytest.raises(Unavailable, match=f"^node {address} is unavailable$"):
                await fail(pb.LogChunk(stream="UNAVAILABLE"))
            with pytest.raises(NotFound, match="^gone$"):
                await fail(pb.LogChunk(stream="ABORTED", data=b"gone", offset=1))  # (the code)
        finally:
            await channel.aclose()


async def test_a_unary_stream_is_used_once_and_left_without_a_call_or_after_its_answer() -> None:
    async with served() as (_, address):
        channel = AioChannel(address, Credentials())
        try:
            async with call_of(channel, "Echo") as stream:
                with pytest.raises(SpearError, match=f"^{route('Echo')}: nothing sent yet$"):
                    await stream.recv_message()
            # (left with nothing sent: nothing to cancel, no error)
            async with call_of(channel, "Echo") as stream:
                await stream.send_message(pb.LogChunk(data=b"1"))
                await stream.end()  # (a unary request has no stream to end)
                with pytest.raises(SpearError, match=f"^{route('Echo')} takes one request"):
                    await stream.send_message(pb.LogChunk(data=b"2"))
                assert (await stream.recv_message()).data == b"1"
                assert await stream.recv_message() is None  # answered: nothing more
                await stream.cancel()  # (answered: nothing to cancel)
        finally:
            await channel.aclose()


async def test_a_streamed_answer_reads_to_its_end_and_a_cancel_stops_the_server() -> None:
    async with served() as (rules, address):
        channel = AioChannel(address, Credentials())
        try:
            async with call_of(channel, "Ticks", Cardinality.UNARY_STREAM) as stream:
                await stream.send_message(pb.LogChunk(offset=3), end=True)
                assert [m.offset async for m in stream] == [0, 1, 2]
                assert await stream.recv_message() is None
            assert not rules.cancelled.is_set()
            async with call_of(channel, "Ticks", Cardinality.UNARY_STREAM) as stream:
                await stream.cancel()  # (nothing sent yet: nothing to cancel)
                await stream.send_message(pb.LogChunk(offset=10_000), end=True)
                assert (await stream.recv_message()).offset == 0
                await stream.cancel()
                await stream.cancel()  # (once is enough)
                with pytest.raises(RpcError) as cancelled:
                    await stream.recv_message()
                assert cancelled.value.status is grpc.StatusCode.CANCELLED
                assert cancelled.value.message == "the call was cancelled"
            with anyio.fail_after(10):
                await rules.cancelled.wait()
        finally:
            await channel.aclose()


async def test_a_streamed_request_is_counted_and_a_refusal_before_reading_it_is_the_servers(
) -> None:  # fmt: skip
    async with served() as (rules, address):
        member = AioChannel(address, Credentials(token="t"))
        stranger = AioChannel(address, Credentials(), name="node-w")
        count = ("Count", Cardinality.STREAM_UNARY)
        try:
            async with call_of(member, *count) as stream:
                await stream.send_message(pb.LogChunk())
                await stream.send_message(pb.LogChunk(), end=True)
                assert (await stream.recv_message()).offset == 2
            async with call_of(member, *count) as stream:
                for _ in range(3):
                    await stream.send_message(pb.LogChunk())
                await stream.end()
                assert (await stream.recv_message()).offset == 3
            assert rules.counted == [2, 3]
            # Refused before its request is read, under a write in flight (large ones,
            # back to back: grpc.aio's own status for that write is INTERNAL "Internal
            # error from Core"): the server's refusal, learnt by asking again, empty.
            big = pb.LogChunk(data=b"x" * 200_000)
            for channel, method, metadata, status, message in (
                (stranger, count, None, grpc.StatusCode.UNAUTHENTICATED, "no token"),
                (member, count, {"spear-deny": "1"}, grpc.StatusCode.PERMISSION_DENIED,
                 "not yours"),
                (stranger, ("Pipe", Cardinality.STREAM_STREAM), None,
                 grpc.StatusCode.UNAUTHENTICATED, "no token"),
            ):  # fmt: skip
                with anyio.fail_after(20), pytest.raises(RpcError) as refused:
                    async with call_of(channel, *method, metadata=metadata) as stream:
                        for _ in range(1000):
                            await stream.send_message(big)
                assert (refused.value.status, refused.value.message) == (status, message)
            async with call_of(member, "Pipe", Cardinality.STREAM_STREAM) as stream:
                await stream.send_message(pb.LogChunk(data=b"a"))
                await stream.send_message(pb.LogChunk(data=b"b"), end=True)
                assert [m.data async for m in stream] == [b"a", b"b"]
            # Answered without reading it: the server ended the call, and said nothing.
            unread = call_of(member, *count, metadata={"spear-unread": "1"})
            with anyio.fail_after(20), pytest.raises(Unavailable) as ended:
                async with unread as stream:
                    for _ in range(1000):
                        await stream.send_message(big)
            assert (
                str(ended.value)
                == f"node {address} ended /t.Rules/Count before reading the request"
            )
            # A write after the call ended: the server's own status, details and trailer.
            for channel, metadata, status, message, code in (
                (stranger, None, grpc.StatusCode.UNAUTHENTICATED, "no token", "unauthenticated"),
                (member, {"spear-boom": "1"}, grpc.StatusCode.INTERNAL, "boom", None),
            ):
                async with call_of(channel, *count, metadata=metadata) as stream:
                    await asyncio.sleep(0.3)  # (its status is in)
                    with pytest.raises(RpcError) as late:
                        await stream.send_message(pb.LogChunk())
                assert (late.value.status, late.value.message) == (status, message)
                assert received_error_code.get() == code
        finally:
            await member.aclose()
            await stranger.aclose()
