"""The gRPC status each spear error is answered with, as a stock gRPC client sees it.

Spear's own client rebuilds errors from the `spear-error-code` trailer, so it cannot tell
a wrong status; other gRPC clients (grpcurl, a Go or Java client, a load balancer) only
see the status. Here a stock grpc.aio channel reads it off the wire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest

import spear
from spear import errors
from spear.node.inprocess import InProcessNode
from spear.node.server import serve_spearlet
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport._status import (
    LimitedCodec,
    RpcError,
    client_errors,
    error_from_grpc,
    received_error_code,
)
from spear.transport.aio_client import AioChannel
from spear.transport.channels import NO_CREDENTIALS
from spear.transport.object_transfer import TransferBroken
from spear.transport.services import Cardinality
from spear.transport.serving import Security

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.models import Task

# The error mapping is what these tests check, not authentication (tests/transport/test_auth.py).
OPEN = Security.open()

Status = grpc.StatusCode

# Written out, not read from transport/_status.py: what a stock client relies on.
WIRE_STATUS: dict[type[errors.SpearError], Status] = {
    errors.SpearError: Status.INTERNAL,
    errors.InvalidArgument: Status.INVALID_ARGUMENT,
    errors.InvalidModule: Status.INVALID_ARGUMENT,
    errors.NotFound: Status.NOT_FOUND,
    errors.Conflict: Status.ABORTED,
    errors.ResourceExhausted: Status.RESOURCE_EXHAUSTED,
    errors.NoSpace: Status.RESOURCE_EXHAUSTED,  # (a full disk: its own code, "no_space")
    errors.StorageError: Status.UNAVAILABLE,
    errors.StorageBusy: Status.UNAVAILABLE,
    errors.Unavailable: Status.UNAVAILABLE,
    errors.NotLeader: Status.UNAVAILABLE,  # (a follower SMS: the message names the leader)
    errors.DeadlineExceeded: Status.UNAVAILABLE,
    errors.PermissionDenied: Status.PERMISSION_DENIED,
    errors.Unauthenticated: Status.UNAUTHENTICATED,
    errors.Unimplemented: Status.UNIMPLEMENTED,  # (what grpc answers a method it lacks)
}


def _every_error_class() -> set[type[errors.SpearError]]:
    found: set[type[errors.SpearError]] = set()
    todo = [errors.SpearError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


# Raised where a connection of spear's own broke, never sent as itself (it goes on the
# wire as its parent, Unavailable).
LOCAL_ONLY = {TransferBroken}


def test_every_spear_error_has_a_wire_status_here() -> None:
    # A new error class must be given its status on purpose (and added above).
    assert _every_error_class() - LOCAL_ONLY == set(WIRE_STATUS)


class _Raising(InProcessNode):
    """The node's real API, except that GetTask raises the error its task id names."""

    async def task(self, task_id: str) -> Task:
        cls = {c.__name__: c for c in WIRE_STATUS}[task_id]
        raise cls(f"raised {task_id}")


async def _status_of(address: str, task_id: str) -> tuple[Status, str | None, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        get_task = channel.unary_unary(
            "/spear.v1.Spearlet/GetTask",
            request_serializer=pb.GetTaskRequest.SerializeToString,
            response_deserializer=pb.TaskInfo.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_task(pb.GetTaskRequest(task_id=task_id))
    trailers = dict(caught.value.trailing_metadata() or ())
    return caught.value.code(), caught.value.details(), trailers.get("spear-error-code")


async def test_each_error_is_answered_with_its_status(tmp_path: Path) -> None:
    async with spear.LocalNode(tmp_path / "home") as node:
        server = await serve_spearlet(_Raising(node), "127.0.0.1:0", security=OPEN)
        try:
            assert server.address is not None
            for cls, status in WIRE_STATUS.items():
                seen = await _status_of(server.address, cls.__name__)
                assert seen == (status, f"raised {cls.__name__}", cls.code), cls
        finally:
            await server.close()


async def test_real_failures_carry_their_status(tmp_path: Path) -> None:
    """The same through the node's own code paths, not raised on purpose."""
    async with spear.LocalNode(tmp_path / "home") as node:
        server = await serve_spearlet(node, "127.0.0.1:0", security=OPEN)
        try:
            assert server.address is not None
            status, message, code = await _status_of(server.address, "no-such-task")
            assert (status, code) == (Status.NOT_FOUND, "not_found")
            assert message is not None and "no-such-task" in message
        finally:
            await server.close()


async def test_a_spear_channel_rebuilds_the_exact_error(tmp_path: Path) -> None:
    """What node-to-node calls (peer.py) do: the trailer's code, not the status, decides."""
    async with spear.LocalNode(tmp_path / "home") as node:
        server = await serve_spearlet(_Raising(node), "127.0.0.1:0", security=OPEN)
        try:
            assert server.address is not None
            channel = AioChannel(server.address, NO_CREDENTIALS)
            try:
                for cls in WIRE_STATUS:
                    await _call_get_task(channel, server.address, cls)
            finally:
                await channel.aclose()
        finally:
            await server.close()


async def _call_get_task(channel: AioChannel, address: str, cls: type[errors.SpearError]) -> None:
    with pytest.raises(errors.SpearError) as caught:
        with client_errors(address):
            async with channel.request(
                "/spear.v1.Spearlet/GetTask",
                Cardinality.UNARY_UNARY,
                pb.GetTaskRequest,
                pb.TaskInfo,
            ) as stream:
                await stream.send_message(pb.GetTaskRequest(task_id=cls.__name__), end=True)
                await stream.recv_message()
    assert type(caught.value) is cls
    assert str(caught.value) == f"raised {cls.__name__}"


# Without a trailer (a stock gRPC server, or a proxy in between), the status decides.
ERROR_BY_STATUS: dict[Status, type[errors.SpearError]] = {
    Status.INVALID_ARGUMENT: errors.InvalidArgument,
    Status.NOT_FOUND: errors.NotFound,
    Status.ABORTED: errors.Conflict,
    Status.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    Status.UNAVAILABLE: errors.Unavailable,
    Status.DEADLINE_EXCEEDED: errors.Unavailable,
    Status.PERMISSION_DENIED: errors.PermissionDenied,
    Status.UNAUTHENTICATED: errors.Unauthenticated,
    Status.INTERNAL: errors.SpearError,
    Status.UNKNOWN: errors.SpearError,
}


@pytest.mark.parametrize("status", list(ERROR_BY_STATUS))
def test_a_status_without_a_code_still_gives_a_spear_error(status: Status) -> None:
    received_error_code.set(None)
    error = error_from_grpc(RpcError(status, "what the server said"), "10.0.0.1:5")
    assert type(error) is ERROR_BY_STATUS[status]
    assert str(error) == "what the server said"
    # Without a message: the status's name, or for UNAVAILABLE which node it was.
    bare = error_from_grpc(RpcError(status), "10.0.0.1:5")
    expected = "node 10.0.0.1:5 is unavailable" if status is Status.UNAVAILABLE else None
    assert str(bare) == (expected or status.name.lower())


def test_a_code_received_wins_over_the_status_once() -> None:
    received_error_code.set("busy")
    error = error_from_grpc(RpcError(Status.UNAVAILABLE, "held"), "a:1")
    assert (type(error), str(error)) == (errors.StorageBusy, "held")
    # Used up: the next call's error is decided by its own status.
    assert type(error_from_grpc(RpcError(Status.NOT_FOUND, "x"), "a:1")) is errors.NotFound


def test_the_codec_allows_exactly_its_limit_either_way() -> None:
    message = pb.GetTaskRequest(task_id="x" * 20)
    size = len(message.SerializeToString())
    codec = LimitedCodec(max_bytes=size)
    data = codec.encode(message, pb.GetTaskRequest)
    assert codec.decode(data, pb.GetTaskRequest) == message
    smaller = LimitedCodec(max_bytes=size - 1)
    for call in (
        lambda: smaller.encode(message, pb.GetTaskRequest),
        lambda: smaller.decode(data, pb.GetTaskRequest),
    ):
        with pytest.raises(RpcError) as caught:
            call()
        assert caught.value.status is Status.RESOURCE_EXHAUSTED
        assert caught.value.message == (
            f"message of {size} bytes exceeds the limit of {size - 1} bytes"
        )


async def test_an_error_without_a_code_is_read_from_its_status(tmp_path: Path) -> None:
    """A status the server sent without `spear-error-code` (its codec refused the request
    before any handler ran): the channel must not invent a code."""
    async with spear.LocalNode(tmp_path / "home") as node:
        server = await serve_spearlet(node, "127.0.0.1:0", max_message_bytes=64, security=OPEN)
        try:
            assert server.address is not None
            channel = AioChannel(server.address, NO_CREDENTIALS)
            try:
                with pytest.raises(errors.SpearError) as caught:
                    with client_errors(server.address):
                        async with channel.request(
                            "/spear.v1.Spearlet/GetTask",
                            Cardinality.UNARY_UNARY,
                            pb.GetTaskRequest,
                            pb.TaskInfo,
                        ) as stream:
                            request = pb.GetTaskRequest(task_id="x" * 200)
                            await stream.send_message(request, end=True)
                            await stream.recv_message()
                assert type(caught.value) is errors.ResourceExhausted
                # (grpc's own wording: the server's limit refused it before any handler)
                assert "larger than max (203 vs. 64)" in str(caught.value)
            finally:
                await channel.aclose()
        finally:
            await server.close()
