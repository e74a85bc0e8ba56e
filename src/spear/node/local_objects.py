"""A standalone daemon's object transfer service (docs/objects.md): clients' object bytes
on a connection of their own, as cluster members serve theirs, not as protobuf messages
through the pure-Python HTTP/2 stack. Same port rules as the daemon's gRPC: who may call
(`Security`), namespaces, roles and the `object_bytes` quota."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from spear.node.cluster import ClusterNode
    from spear.node.inprocess import InProcessNode
    from spear.transport.serving import Security


@contextlib.asynccontextmanager
async def serving_local_objects(
    api: InProcessNode | ClusterNode, address: str, security: Security
) -> AsyncIterator[None]:
    """While inside, the node behind `api` (serving gRPC on `address`) serves its objects
    on a port of its own on the same host, named in its NodeInfo. A cluster member's is
    its object space's (node/object_space.py): nothing happens here for one."""
    from spear.node.cluster import ClusterNode

    store = api.node.services.objects
    if store is None or isinstance(api, ClusterNode):
        yield
        return
    from spear.node.object_space import NamespaceBytes
    from spear.node.quotas import QuotaFile
    from spear.transport.auth import AUTH_DIR
    from spear.transport.object_transfer import ObjectTransferServer
    from spear.transport.serving import format_address, parse_listen

    quotas = QuotaFile(api.node.settings.data_dir / AUTH_DIR)
    server = ObjectTransferServer(store, security, admit_put=NamespaceBytes(store, quotas).admit)
    host, _ = parse_listen(address)
    api.object_transfer_address = await server.start(format_address(host, 0))
    try:
        yield
    finally:
        api.object_transfer_address = ""
        await server.close()
