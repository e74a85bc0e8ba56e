"""The grpc.aio server and client that carry ForwardTasks between members
(transport/aio_server.py, aio_client.py): real servers on loopback with the cluster's
certificates (a client certificate required), refusing who the node's port refuses and
answering errors as it does."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest

from spear import errors
from spear.node.peer import FORWARD_TASKS
from spear.tracing.base import current_traceparent
from spear.transport import tls
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport.aio_client import AioChannel
from spear.transport.aio_server import AioServer
from spear.transport.auth import Authorizer, Role, TokenStore, current_principal
from spear.transport.channels import Credentials
from spear.transport.services import ServedMethod
from spear.transport.serving import Security

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

# Written out, not read from transport/_status.py: what a stock gRPC client relies on
# (as tests/transport/test_wire_status.py has it for the node's server).
WIRE_STATUS: dict[type[errors.SpearError], grpc.StatusCode] = {
    errors.SpearError: grpc.StatusCode.INTERNAL,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.StorageError: grpc.StatusCode.UNAVAILABLE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.UNAVAILABLE,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
MAX = 64 * 1024


class Handler:
    """ForwardTasks' messages; what `from_node` asks: answer, raise a SpearError class
    by name, or fail with a bug. Records each call's principal and trace context."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str | None]] = []

    async def __call__(self, request: pb.ForwardTasksRequest) -> pb.ForwardTasksResponse:
        principal = current_principal.get()
        self.calls.append((principal and principal.name, current_traceparent.get()))
        what = request.from_node
        if what.startswith("raise:"):
            cls = {c.__name__: c for c in WIRE_STATUS}[what[len("raise:") :]]
            raise cls(f"raised {cls.__name__}")
        if what == "bug":
            raise RuntimeError("a bug")
        return pb.ForwardTasksResponse(outcomes=[pb.ForwardOutcome(refused=True)])


def _methods(handler: Handler) -> dict[str, ServedMethod]:
    return {
        FORWARD_TASKS: ServedMethod(
            lambda request, _context: handler(request),
            decode=pb.ForwardTasksRequest.FromString,
            encode=pb.ForwardTasksResponse.SerializeToString,
        )
    }


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    tls.create_ca(directory)
    return directory


def _member(ca: Path, name: str, directory: Path) -> Credentials:
    tls.issue(ca, name, directory)
    return Credentials(tls=tls.TlsFiles(directory))


@pytest.fixture
async def server(tmp_path: Path, ca: Path) -> AsyncIterator[tuple[AioServer, Handler]]:
    """A member's server: its certificate, the node's tokens, traced."""
    own = tmp_path / "node-1"
    tls.issue(ca, "node-1", own)
    security = Security(Authorizer(TokenStore(tmp_path / "data")), tls.TlsFiles(own))
    handler = Handler()
    served = AioServer(
        _methods(handler), name="peer", security=security, max_message_bytes=MAX, traced=True
    )
    await served.start("127.0.0.1:0")
    try:
        yield served, handler
    finally:
        await served.close()


async def _forward(
    address: str, credentials: Credentials, what: str = "", *, metadata: Any = None, size: int = 0
) -> pb.ForwardTasksResponse:
    channel = AioChannel(address, credentials, max_message_bytes=4 * MAX)
    try:
        call = channel.unary(
            FORWARD_TASKS,
            pb.ForwardTasksRequest.SerializeToString,
            pb.ForwardTasksResponse.FromString,
        )
        tasks = [pb.ForwardedTask(stdin=b"x" * size)] if size else []
        request = pb.ForwardTasksRequest(from_node=what, tasks=tasks)
        answer: pb.ForwardTasksResponse = await call(request, deadline_s=20, metadata=metadata)
        return answer
    finally:
        await channel.aclose()


async def test_a_member_certificate_is_admitted_as_that_member(
    server: tuple[AioServer, Handler], ca: Path, tmp_path: Path
) -> None:
    served, handler = server
    assert served.address is not None
    member = _member(ca, "node-2", tmp_path / "node-2")
    answer = await _forward(served.address, member, metadata={"traceparent": TRACEPARENT})
    assert [o.refused for o in answer.outcomes] == [True]
    assert handler.calls == [("node-2", TRACEPARENT)]


async def test_a_caller_without_a_certificate_is_refused_before_the_handler(
    server: tuple[AioServer, Handler], ca: Path, tmp_path: Path
) -> None:
    """A user's CA-only TLS (and an admin token) does not reach ForwardTasks: members only."""
    served, handler = server
    assert served.address is not None
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(ca / tls.CA_CERT, user / tls.CA_CERT)
    token = TokenStore(tmp_path / "data").issue("ops", Role.ADMIN)
    credentials = Credentials(token=token, tls=tls.TlsFiles(user))
    with pytest.raises(errors.Unavailable):
        await _forward(served.address, credentials)
    assert handler.calls == []


async def test_a_certificate_of_another_ca_is_refused_before_the_handler(
    server: tuple[AioServer, Handler], ca: Path, tmp_path: Path
) -> None:
    served, handler = server
    assert served.address is not None
    other_ca = tmp_path / "other-ca"
    tls.create_ca(other_ca, name="another cluster")
    intruder = tmp_path / "intruder"
    tls.issue(other_ca, "node-1", intruder)  # (even naming a real member)
    shutil.copy(ca / tls.CA_CERT, intruder / tls.CA_CERT)  # it trusts our server
    with pytest.raises(errors.Unavailable):
        await _forward(served.address, Credentials(tls=tls.TlsFiles(intruder)))
    assert handler.calls == []


async def test_the_authorizer_decides_each_call(
    server: tuple[AioServer, Handler], ca: Path, tmp_path: Path
) -> None:
    """The same Authorizer as the node port's: a malformed namespace is refused by it."""
    served, handler = server
    assert served.address is not None
    member = _member(ca, "node-2", tmp_path / "node-2")
    with pytest.raises(errors.InvalidArgument, match="namespace"):
        await _forward(served.address, member, metadata={"spear-namespace": "Not A Name!"})
    assert handler.calls == []


@pytest.mark.parametrize("cls", list(WIRE_STATUS), ids=lambda c: c.__name__)
async def test_a_spear_error_comes_back_as_itself(
    server: tuple[AioServer, Handler], ca: Path, tmp_path: Path, cls: type[errors.SpearError]
) -> None:
    served, _ = server
    assert served.address is not None
    member = _member(ca, "node-2", tmp_path / "node-2")
    with pytest.raises(errors.SpearError) as caught:
        await _forward(served.address, member, f"raise:{cls.__name__}")
    assert type(caught.value) is cls
    assert str(caught.value) == f"raised {cls.__name__}"


async def test_stock_clients_see_the_status_and_the_code_trailer(
    server: tuple[AioServer, Handler], ca: Path, tmp_path: Path
) -> None:
    served, _ = server
    assert served.address is not None
    member = tmp_path / "node-2"
    tls.issue(ca, "node-2", member)
    credentials = grpc.ssl_channel_credentials(
        (member / tls.CA_CERT).read_bytes(),
        (member / tls.NODE_KEY).read_bytes(),
        (member / tls.NODE_CERT).read_bytes(),
    )
    async with grpc.aio.secure_channel(served.address, credentials) as channel:
        call = channel.unary_unary(FORWARD_TASKS)  # (bytes either way: no codec)
        for cls, status in WIRE_STATUS.items():
            request = pb.ForwardTasksRequest(from_node=f"raise:{cls.__name__}")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request.SerializeToString(), timeout=20)
            assert caught.value.code() is status
            assert (("spear-error-code", cls.code),) == tuple(
                (k, v) for k, v in caught.value.trailing_metadata() if k == "spear-error-code"
            )
        with pytest.raises(grpc.aio.AioRpcError) as bug:
            await call(pb.ForwardTasksRequest(from_node="bug").SerializeToString(), timeout=20)
        assert bug.value.code() is grpc.StatusCode.INTERNAL
        assert "RuntimeError: a bug" in (bug.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as malformed:
            await call(b"\xff\xff\xff", timeout=20)
        assert malformed.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_message_over_the_limit_is_refused_before_the_handler(
    server: tuple[AioServer, Handler], ca: Path, tmp_path: Path
) -> None:
    served, handler = server
    assert served.address is not None
    member = _member(ca, "node-2", tmp_path / "node-2")
    with pytest.raises(errors.ResourceExhausted):
        await _forward(served.address, member, size=2 * MAX)
    assert handler.calls == []
    await _forward(served.address, member, size=MAX // 2)  # under it: served
    assert len(handler.calls) == 1


async def test_close_is_safe_twice_and_before_start(tmp_path: Path) -> None:
    server = AioServer({}, name="peer", security=Security.open())
    await server.close()
    await server.start("127.0.0.1:0")
    await server.close()
    await server.close()
    assert server.address is None
