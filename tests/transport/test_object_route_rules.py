"""Which path a client's object bytes take (node/object_route.py), rule by rule, with the
node's answers scripted: the object socket when it is this node's and the client has a
token, else the transfer service, else gRPC (None); a path that cannot be reached is
forgotten and the next one taken, but a conditional put whose answer was lost is never
sent again (it may have been written). Real paths end to end are in
tests/transport/test_local_object_transfer.py and tests/cluster/test_object_route.py."""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

import pytest

from spear.errors import NotFound, SpearError, Unavailable
from spear.node.object_route import STREAM_MIN_BYTES, ObjectRoute
from spear.store.object_info import ObjectInfo
from spear.transport import object_socket, object_transfer
from spear.transport.channels import Credentials
from spear.transport.object_transfer import TransferBroken

if TYPE_CHECKING:
    from pathlib import Path

ANSWER = {"ok": True, "version": 3, "size": 5, "refs": 2, "pinned": True, "locations": ["n1"]}
INFO = ObjectInfo("k", 3, 5, refs=2, pinned=True, locations=("n1",))
THIS_NODE = {"node": "n1", "pid": 42, "started_at": 7.0}  # (its hello: as `_Client.info`)


class _Client:
    """What ObjectRoute asks of a `Client`: its address, its node's info (scripted; a
    SpearError in `info_fails` makes the ask fail), and the node's objects by prefix."""

    def __init__(
        self, *, socket: str = "/node/objects.sock", transfer: str = "127.0.0.1:9"
    ) -> None:
        self.address = "127.0.0.1:8"
        self.info = types.SimpleNamespace(
            name="n1",
            pid=42,
            started_at=7.0,
            object_socket=socket,
            object_transfer_address=transfer,
        )
        self.asked = 0
        self.info_fails: SpearError | None = None
        self.objects: list[ObjectInfo] = []

    async def node_info(self) -> Any:
        self.asked += 1
        if self.info_fails is not None:
            raise self.info_fails
        return self.info

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        return [o for o in self.objects if o.key.startswith(prefix)]


class _Socket:
    """The node's object socket (made by ObjectRoute as ObjectSocketClient): who it says
    it is, and what each call does (`fails`: raised by every get and put)."""

    made: list[_Socket] = []
    hello_answer: dict[str, Any] = THIS_NODE
    fails: Exception | None = None

    def __init__(self, path: str, credentials: Credentials) -> None:
        self.path, self.closed = path, False
        self.calls: list[tuple[Any, ...]] = []
        _Socket.made.append(self)

    async def hello(self) -> dict[str, Any]:
        return dict(_Socket.hello_answer)

    async def _call(self, *call: Any) -> dict[str, Any]:
        self.calls.append(call)
        if _Socket.fails is not None:
            raise _Socket.fails
        return dict(ANSWER)

    async def get(self, key: str, *, info: bool = False) -> tuple[bytes, dict[str, Any]]:
        return b"value", await self._call("get", key, info)

    async def put(self, key: str, data: bytes, expected: int | None, *, info: bool) -> Any:
        return await self._call("put", key, len(data), expected, info)

    async def put_file(self, key: str, source: Path, expected: int | None, *, info: bool) -> Any:
        source.stat()  # (the real one opens it: a missing file is FileNotFoundError)
        return await self._call("put_file", key, source, expected, info)

    async def aclose(self) -> None:
        self.closed = True


class _Transfer:
    """The node's transfer service's client (made as ObjectTransferClient)."""

    made: list[_Transfer] = []
    fails: Exception | None = None

    def __init__(self, credentials: Credentials) -> None:
        self.calls: list[tuple[Any, ...]] = []
        _Transfer.made.append(self)

    async def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if _Transfer.fails is not None:
            raise _Transfer.fails

    async def get_object(self, address: str, key: str) -> tuple[bytes, ObjectInfo]:
        await self._call("get", address, key)
        return b"value", INFO

    async def put_object(self, address: str, key: str, data: bytes, expected: int | None) -> Any:
        await self._call("put", address, key, len(data), expected)
        return INFO

    async def put_file(self, address: str, key: str, source: Path, expected: int | None) -> None:
        await self._call("put_file", address, key, source, expected)

    async def aclose(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(object_socket, "ObjectSocketClient", _Socket)
    monkeypatch.setattr(object_transfer, "ObjectTransferClient", _Transfer)
    _Socket.made, _Socket.fails, _Transfer.made, _Transfer.fails = [], None, [], None
    _Socket.hello_answer = dict(THIS_NODE)


def _node(**kwargs: Any) -> Any:
    """A scripted `Client` (typed as any: it is not one)."""
    return _Client(**kwargs)


def _route(token: str | None = "t", **kwargs: Any) -> ObjectRoute:
    return ObjectRoute(Credentials(token=token), **kwargs)


def _transfer_calls() -> list[tuple[Any, ...]]:
    return [call for made in _Transfer.made for call in made.calls]


async def test_the_socket_is_used_when_it_is_this_nodes_with_the_objects_info() -> None:
    route, client = _route(), _node()
    assert await route.get(client, "k") == (b"value", INFO)
    assert await route.put(client, "k", b"small", 2) == INFO
    [socket] = _Socket.made
    assert socket.path == "/node/objects.sock"
    assert socket.calls == [("get", "k", True), ("put", "k", 5, 2, True)]
    assert client.asked == 1  # (what the node offers is asked once)
    assert _transfer_calls() == []


@pytest.mark.parametrize(
    ("token", "socket", "offered", "hello"),
    [
        (None, True, "/node/objects.sock", "n1"),  # no token: the socket knows no certificates
        ("t", False, "/node/objects.sock", "n1"),  # the caller asked for no socket
        ("t", True, "", "n1"),  # the node offers none (another host's, say)
        ("t", True, "/node/objects.sock", "n2"),  # a socket there, but another node's
    ],
)
async def test_otherwise_the_transfer_service(
    token: str | None, socket: bool, offered: str, hello: str
) -> None:
    _Socket.hello_answer = {**THIS_NODE, "node": hello}
    route, client = _route(token, socket=socket), _node(socket=offered)
    assert await route.get(client, "k") == (b"value", INFO)
    assert _transfer_calls() == [("get", "127.0.0.1:9", "k")]
    assert all(s.calls == [] for s in _Socket.made)
    assert all(s.closed for s in _Socket.made)  # (one made to ask who it is: closed)


async def test_a_node_that_cannot_say_what_it_offers_is_asked_again_next_time() -> None:
    route, client = _route(), _node()
    client.info_fails = Unavailable("the node is away")
    assert await route.get(client, "k") is None  # (gRPC then: it says what is wrong)
    assert await route.put(client, "k", b"x" * STREAM_MIN_BYTES, None) is None
    assert _transfer_calls() == [] and _Socket.made == []
    client.info_fails = None
    assert await route.get(client, "k") == (b"value", INFO)
    assert client.asked == 3


async def test_a_get_whose_socket_broke_forgets_it_and_takes_the_next_path() -> None:
    route, client = _route(), _node()
    await route.get(client, "k")
    _Socket.fails = TransferBroken("the socket closed")
    _Socket.hello_answer = {"node": "n2"}  # (asked again: the socket is not this node's now)
    assert await route.get(client, "k") == (b"value", INFO)
    first = _Socket.made[0]
    assert first.closed and client.asked == 2
    assert _transfer_calls() == [("get", "127.0.0.1:9", "k")]
    # An answer that the object is unavailable is the caller's, not a path's failure.
    _Socket.fails, _Socket.hello_answer = None, dict(THIS_NODE)
    route = _route()
    await route.get(client, "k")
    _Socket.fails = Unavailable("no live holder")
    with pytest.raises(Unavailable, match="^no live holder$"):
        await route.get(client, "k")


async def test_a_put_whose_socket_broke_is_sent_again_only_if_unconditional() -> None:
    big = b"x" * STREAM_MIN_BYTES
    route, client = _route(), _node()
    _Socket.fails = TransferBroken("the socket closed")
    with pytest.raises(TransferBroken):  # (it may have been written: not sent again)
        await route.put(client, "k", big, 1)
    assert _transfer_calls() == []
    _Socket.hello_answer = {"node": "n2"}  # (asked again: not this node's now)
    assert await route.put(client, "k", big, None) == INFO
    assert _Socket.made[0].closed and client.asked == 2
    assert _transfer_calls() == [("put", "127.0.0.1:9", "k", STREAM_MIN_BYTES, None)]
    # The socket's answer that the node refuses the put is the caller's.
    _Socket.fails, _Socket.hello_answer = (
        Unavailable("quota"),
        dict(THIS_NODE),
    )
    with pytest.raises(Unavailable, match="^quota$"):
        await _route().put(client, "k", big, None)


async def test_only_a_put_from_the_streaming_size_up_takes_the_transfer_service() -> None:
    route, client = _route(None), _node()  # (no token: no socket)
    assert await route.put(client, "k", b"x" * (STREAM_MIN_BYTES - 1), None) is None
    assert await route.put(client, "k", b"x" * STREAM_MIN_BYTES, 4) == INFO
    assert _transfer_calls() == [("put", "127.0.0.1:9", "k", STREAM_MIN_BYTES, 4)]
    none_offered = _node(transfer="")
    assert await _route(None).put(none_offered, "k", b"x" * STREAM_MIN_BYTES, None) is None


async def test_a_put_whose_transfer_broke_is_left_to_grpc_only_if_unconditional() -> None:
    big = b"x" * STREAM_MIN_BYTES
    route, client = _route(None), _node()
    _Transfer.fails = TransferBroken("connection reset")
    with pytest.raises(TransferBroken):
        await route.put(client, "k", big, 1)
    assert client.asked == 1  # (kept: a conditional put's path is not forgotten)
    assert await route.put(client, "k", big, None) is None  # (gRPC sends it)
    await route.put(client, "k", big, None)
    assert client.asked == 2  # (forgotten, then asked again)
    _Transfer.fails = Unavailable("quota")
    with pytest.raises(Unavailable, match="^quota$"):
        await route.put(client, "k", big, None)


async def test_a_get_whose_transfer_broke_is_left_to_grpc() -> None:
    route, client = _route(None), _node()
    _Transfer.fails = TransferBroken("connection reset")
    assert await route.get(client, "k") is None
    await route.get(client, "k")
    assert client.asked == 2
    _Transfer.fails = Unavailable("no live holder")
    with pytest.raises(Unavailable, match="^no live holder$"):
        await route.get(client, "k")


async def test_a_file_is_put_by_the_socket_or_the_transfer_service(tmp_path: Path) -> None:
    source = tmp_path / "value"
    source.write_bytes(b"hello")
    route, client = _route(), _node()
    assert await route.put_file(client, "k", source, 2) == INFO
    assert _Socket.made[0].calls == [("put_file", "k", source, 2, True)]
    # By the transfer service: the object's info read back after.
    plain, other = _route(None), _node()
    other.objects = [ObjectInfo("k-other", 1, 1), INFO]
    assert await plain.put_file(other, "k", source, 5) == INFO
    assert _transfer_calls() == [("put_file", "127.0.0.1:9", "k", source, 5)]
    other.objects = [ObjectInfo("k-other", 1, 1)]
    with pytest.raises(Unavailable, match="^object 'k' was written but could not be read back$"):
        await plain.put_file(other, "k", source, None)
    with pytest.raises(NotFound, match=f"^no such file: {tmp_path / 'missing'}$"):
        await route.put_file(client, "k", tmp_path / "missing", None)
    assert await _route(None).put_file(_node(transfer=""), "k", source, None) is None


async def test_a_file_put_whose_path_broke_is_left_to_the_caller_only_if_unconditional(
    tmp_path: Path,
) -> None:
    source = tmp_path / "value"
    source.write_bytes(b"hello")
    route, client = _route(), _node()
    _Socket.fails = TransferBroken("the socket closed")
    with pytest.raises(TransferBroken):
        await route.put_file(client, "k", source, 1)
    assert not _Socket.made[0].closed
    assert await route.put_file(client, "k", source, None) is None  # (the caller sends it)
    assert _Socket.made[0].closed
    _Socket.fails = Unavailable("quota")
    with pytest.raises(Unavailable, match="^quota$"):
        await _route().put_file(client, "k", source, None)


async def test_closing_closes_the_sockets_and_forgets_every_node() -> None:
    route, client = _route(), _node()
    await route.get(client, "k")
    await route.aclose()
    assert _Socket.made[0].closed
    await route.get(client, "k")
    assert client.asked == 2
    # Forgotten twice (two calls that broke at once each forget it): nothing the second.
    await route._forget(client)
    await route._forget(client)
