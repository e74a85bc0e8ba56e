"""ForwardTasks on a members' port (issue 17): a member serves it on a port of its own
beside its node port, requiring the cluster's client certificate at the handshake, names
that port in its NodeInfo (`peer_address`), and forwards to the peers that name one
there; to a peer that names none (the setting off there, or an older node) on its node
port. Both ports are grpc.aio (transport/aio_server.py).

Setting `peer_transport`: "grpc.aio" (default) or "node-port" (neither serve nor call the
members' port; "grpclib" is its old name, from when the node port was grpclib's):
docs/scheduling.md.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from spear.node.cluster import ClusterNode


@contextlib.asynccontextmanager
async def serving_peer_aio(api: ClusterNode, address: str) -> AsyncIterator[str]:
    """While inside, the member behind `api` (serving gRPC on `address`) serves ForwardTasks
    on grpc.aio on the same host (a free port; "" with `peer_transport = "node-port"`), and
    forwards over grpc.aio to the peers that serve it."""
    settings = api.node.settings
    if settings.peer_transport != "grpc.aio":
        yield ""
        return
    from spear.core.artifacts import ArtifactStore
    from spear.node.peer import PEER_SERVICE_NAME, PeerService
    from spear.transport._status import DEFAULT_MAX_MESSAGE_BYTES
    from spear.transport.aio_server import AioServer
    from spear.transport.cluster_tokens import with_cluster_tokens
    from spear.transport.serving import Security, format_address, parse_listen

    artifacts = ArtifactStore(settings.data_dir / "artifacts", settings.object_max_bytes)
    service = PeerService(api.scheduler, artifacts, api.local)
    server = AioServer(
        service.aio_methods(),
        name=PEER_SERVICE_NAME,
        security=with_cluster_tokens(Security.for_settings(settings), api),
        max_message_bytes=api.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
        traced=api.node.services.tracing is not None,
    )
    host, _ = parse_listen(address)
    bound = await server.start(format_address(host, 0))
    api.local.peer_address = bound
    api.peers.use_aio = True
    try:
        yield bound
    finally:
        api.local.peer_address = ""
        with anyio.CancelScope(shield=True):
            await server.close()
