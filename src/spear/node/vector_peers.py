"""spear.v1.SpearletVectors (vectors.proto): a node's vector collections over gRPC, for
`spear vec --node` and for the members that forward a request to a collection's home
(toolkit/vector_homes.py), and the clients a member forwards with.

The call acts in the namespace its credentials allow (transport/auth.py): a user's token
names its own; a member forwarding for a task names the task's (`spear-namespace`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from spear.core.namespaces import DEFAULT
from spear.errors import InvalidArgument, NotFound, SpearError, Unavailable
from spear.toolkit.vectors import WRITE_OPS, check_request
from spear.transport._gen.pb import vectors_pb2 as vpb
from spear.transport._status import client_errors
from spear.transport.auth import NAMESPACE_KEY, current_namespace
from spear.transport.channels import NO_CREDENTIALS, Credentials
from spear.transport.services import ServiceBase, Stub

if TYPE_CHECKING:
    from spear.core.cluster import Cluster
    from spear.toolkit.vectors import VectorStore
    from spear.transport.aio_client import AioChannel

VECTORS_SERVICE_NAME = "spear.v1.SpearletVectors"
# A forwarded request's bound: an upsert of many records takes a while on a busy node.
FORWARD_TIMEOUT_S = 120.0


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidArgument("a vector request is a JSON object") from None
    check_request(data)
    return data  # type: ignore[no-any-return]


SERVICE = vpb.DESCRIPTOR.services_by_name["SpearletVectors"]


def vectors_stub(channel: Any) -> Stub:
    """A client of a node's vector service over `channel` (an AioChannel)."""
    return Stub(channel, SERVICE)


class VectorService(ServiceBase):
    """spear.v1.SpearletVectors over the node's `VectorStore`."""

    SERVICE = SERVICE

    def __init__(self, store: VectorStore) -> None:
        self.store = store

    async def _serve(self, message: vpb.VectorRequest, *, write: bool) -> vpb.VectorAnswer:
        data = _decode(message.request)
        if (data["op"] in WRITE_OPS) != write:
            rpc = "WriteVectors" if data["op"] in WRITE_OPS else "ReadVectors"
            raise InvalidArgument(f"the vector op {data['op']!r} is asked with {rpc}")
        namespace = current_namespace.get() or DEFAULT
        answer = await self.store.request_async(data, namespace, here=message.here)
        return vpb.VectorAnswer(answer=json.dumps(answer).encode())

    async def read_vectors(self, message: vpb.VectorRequest) -> vpb.VectorAnswer:
        return await self._serve(message, write=False)

    async def write_vectors(self, message: vpb.VectorRequest) -> vpb.VectorAnswer:
        return await self._serve(message, write=True)


async def call_vectors(
    stub: Stub,
    address: str,
    data: dict[str, Any],
    *,
    here: bool = False,
    namespace: str | None = None,
    timeout_s: float | None = FORWARD_TIMEOUT_S,
) -> Any:
    """One vector request to the node behind `stub`; its JSON answer."""
    call = stub.write_vectors if data.get("op") in WRITE_OPS else stub.read_vectors
    request = vpb.VectorRequest(request=json.dumps(data).encode(), here=here)
    metadata = {NAMESPACE_KEY: namespace} if namespace else None
    with client_errors(address):
        answer = await call(request, metadata=metadata, timeout=timeout_s)
    return json.loads(answer.answer)


class VectorPeers:
    """A member's clients for the other members' vector services (one channel each)."""

    def __init__(self, cluster: Cluster, credentials: Credentials = NO_CREDENTIALS) -> None:
        self.cluster = cluster
        self._credentials = credentials
        self._addresses: dict[str, str] = {}
        self._channels: dict[str, tuple[AioChannel, Stub]] = {}

    async def _address(self, node: str, *, fresh: bool) -> str:
        address = None if fresh else self._addresses.get(node)
        if address is None:
            try:
                address = (await self.cluster.node(node)).address
            except NotFound:
                raise Unavailable(f"the home node {node!r} is not in the cluster") from None
            self._addresses[node] = address
        return address

    def _stub(self, address: str) -> Stub:
        found = self._channels.get(address)
        if found is None:
            from spear.transport.aio_client import AioChannel

            channel = AioChannel.to(address, self._credentials)
            stub = vectors_stub(channel)
            found = self._channels[address] = (channel, stub)
        return found[1]

    async def forward(self, node: str, namespace: str, data: dict[str, Any]) -> Any:
        """`data` answered by `node` from its own collections of `namespace`."""
        for fresh in (False, True):
            address = await self._address(node, fresh=fresh)
            try:
                return await call_vectors(
                    self._stub(address), address, data, here=True, namespace=namespace
                )
            except Unavailable:
                if fresh:
                    raise
            except SpearError:
                raise
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        channels = [channel for channel, _ in self._channels.values()]
        self._channels.clear()
        for channel in channels:
            await channel.aclose()


def vector_services(store: VectorStore | None) -> list[Any]:
    """The SpearletVectors service of a node with a vector store."""
    return [] if store is None else [VectorService(store)]


def join_vectors(
    store: VectorStore | None,
    objects: Any,
    node_name: str,
    cluster: Cluster,
    credentials: Credentials,
) -> VectorPeers | None:
    """Make `store` route by home node (a cluster member's); its peers, to close."""
    if store is None:
        return None
    from spear.toolkit.vector_homes import VectorHomes

    peers = VectorPeers(cluster, credentials)
    store.homes = VectorHomes(store, objects, node_name, peers.forward, peers.aclose)
    return peers
