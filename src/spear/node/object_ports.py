"""Where a daemon serves its objects' bytes to clients (docs/objects.md), besides gRPC:

- the object transfer service, on a TCP port of its own: a standalone daemon's here (a
  cluster member's is its object space's, node/object_space.py);
- the object socket, a Unix socket in the data dir for clients on the same host
  (transport/object_socket.py): every daemon's.

Both keep the daemon's rules: who may call (`Security`), namespaces, roles, and the
`object_bytes` quota of each namespace."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine

    from spear.node.cluster import ClusterNode
    from spear.node.inprocess import InProcessNode
    from spear.store.objects import ObjectStore
    from spear.transport.serving import Security


@contextlib.asynccontextmanager
async def serving_object_ports(
    api: InProcessNode | ClusterNode, address: str, security: Security
) -> AsyncIterator[None]:
    """While inside, the node behind `api` (serving gRPC on `address`) serves its objects
    on the transfer port (standalone) and the object socket, named in its NodeInfo."""
    from spear.node.cluster import ClusterNode
    from spear.node.object_space import NamespaceBytes
    from spear.node.quotas import QuotaFile
    from spear.transport.auth import AUTH_DIR
    from spear.transport.object_socket import serving_object_socket, socket_path

    store = api.node.services.objects
    if store is None:
        yield
        return
    local = api.local if isinstance(api, ClusterNode) else api
    settings = api.node.settings
    admit = NamespaceBytes(store, QuotaFile(settings.data_dir / AUTH_DIR)).admit
    hello = {"node": api.node.name, "pid": os.getpid(), "started_at": local.started_at}
    standalone = not isinstance(api, ClusterNode)
    async with (
        _transfer_port(store, address, security, admit, standalone) as transfer,
        serving_object_socket(
            store, security, socket_path(settings.data_dir), hello, admit
        ) as path,
    ):
        local.object_transfer_address, local.object_socket = transfer, path
        try:
            yield
        finally:
            local.object_transfer_address, local.object_socket = "", ""


@contextlib.asynccontextmanager
async def _transfer_port(
    store: ObjectStore,
    address: str,
    security: Security,
    admit: Callable[[str, str, int], Coroutine[Any, Any, None]],
    standalone: bool,
) -> AsyncIterator[str]:
    """A standalone daemon's object transfer service on the host of `address`; its
    address ("" for a cluster member: its object space serves one)."""
    if not standalone:
        yield ""
        return
    from spear.transport.object_transfer import ObjectTransferServer
    from spear.transport.serving import format_address, parse_listen

    server = ObjectTransferServer(store, security, admit_put=admit)
    host, _ = parse_listen(address)
    try:
        yield await server.start(format_address(host, 0))
    finally:
        await server.close()
