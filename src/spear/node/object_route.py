"""A `Client`'s path for object bytes (docs/objects.md), the quickest its node offers:

1. the node's object socket, when the node runs on this host (transport/object_socket.py:
   a get maps the value's file, a put hands over a memfd; no byte crosses TCP or TLS);
   known to be this node's by its `hello` (name, pid and start, as its NodeInfo says),
   and used only with a token (the socket knows no certificates);
2. the node's object transfer service, when it serves one (cluster members and
   standalone daemons do), so a value is not cut into protobuf messages through the
   pure-Python HTTP/2 stack: gets whatever the size, puts from `STREAM_MIN_BYTES` up
   (below that one gRPC message is as quick);
3. gRPC otherwise.

Keys, namespaces, roles and quotas are the node's on every path. When a path cannot be
reached the caller takes the next (gRPC fails over to the next node); a conditional put
whose answer was lost is not sent again (as over gRPC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from spear.errors import NotFound, SpearError, Unavailable
from spear.transport.object_transfer import TransferBroken, answer_info

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.models import NodeInfo
    from spear.node.client import Client
    from spear.store.object_info import ObjectInfo
    from spear.transport.channels import Credentials
    from spear.transport.object_socket import ObjectSocketClient
    from spear.transport.object_transfer import ObjectTransferClient

# Measured (objects_cluster_bench, quiet machine): a 1 MiB put 2-3x quicker this way.
STREAM_MIN_BYTES = 256 * 1024


@dataclass
class _Paths:
    """What one node offers this client besides gRPC."""

    socket: ObjectSocketClient | None
    transfer: str  # the transfer service's address, or ""


class ObjectRoute:
    """Where a Client's object bytes go; one per Client, closed with it."""

    def __init__(self, credentials: Credentials, *, socket: bool = True) -> None:
        """`socket` false: never the object socket (the transfer service, else gRPC)."""
        self._credentials = credentials
        self._use_socket = socket
        self._paths: dict[str, _Paths] = {}  # node's gRPC address -> what it offers
        self._transfer: ObjectTransferClient | None = None

    async def _paths_of(self, client: Client) -> _Paths:
        paths = self._paths.get(client.address)
        if paths is None:
            try:
                info = await client.node_info()
            except SpearError:  # (gRPC then, which says what is wrong, or fails over)
                return _Paths(None, "")
            socket = await self._socket(info)
            paths = self._paths[client.address] = _Paths(socket, info.object_transfer_address)
        return paths

    async def _socket(self, info: NodeInfo) -> ObjectSocketClient | None:
        """The node's object socket, if it is on this host and this node's own."""
        if not (self._use_socket and info.object_socket and self._credentials.token):
            return None
        from spear.transport.object_socket import ObjectSocketClient

        socket = ObjectSocketClient(info.object_socket, self._credentials)
        try:
            hello = await socket.hello()
        except SpearError:  # (no such socket here: another host's node; or refused)
            await socket.aclose()
            return None
        if (hello.get("node"), hello.get("pid"), hello.get("started_at")) != (
            info.name,
            info.pid,
            info.started_at,
        ):  # (a path that names another node's socket here: not this one)
            await socket.aclose()
            return None
        return socket

    def _client(self) -> ObjectTransferClient:
        if self._transfer is None:
            from spear.transport.object_transfer import ObjectTransferClient

            self._transfer = ObjectTransferClient(self._credentials)
        return self._transfer

    async def get(self, client: Client, key: str) -> tuple[bytes, ObjectInfo] | None:
        """The value and info of `key`, or None: then gRPC it is."""
        paths = await self._paths_of(client)
        if paths.socket is not None:
            try:
                data, answer = await paths.socket.get(key, info=True)
                return data, answer_info(key, answer)
            except Unavailable as exc:
                if not _unreachable(exc):
                    raise
                await self._forget(client)
                paths = await self._paths_of(client)
        if not paths.transfer:
            return None
        try:
            value, info = await self._client().get_object(paths.transfer, key)
        except Unavailable as exc:
            if _unreachable(exc):
                await self._forget(client)
                return None
            raise
        return value, info

    async def put(
        self, client: Client, key: str, data: bytes, expected_version: int | None
    ) -> ObjectInfo | None:
        """Write `data` under `key` and return its info, or None: then gRPC it is."""
        paths = await self._paths_of(client)
        if paths.socket is not None:
            try:
                answer = await paths.socket.put(key, data, expected_version, info=True)
                return answer_info(key, answer)
            except Unavailable as exc:
                if expected_version is not None or not _unreachable(exc):
                    raise
                await self._forget(client)  # (an unconditional put may be sent again)
                paths = await self._paths_of(client)
        if len(data) < STREAM_MIN_BYTES or not paths.transfer:
            return None
        try:
            return await self._client().put_object(paths.transfer, key, data, expected_version)
        except Unavailable as exc:
            if expected_version is None and _unreachable(exc):
                await self._forget(client)
                return None  # (an unconditional put may be sent again)
            raise

    async def put_file(
        self, client: Client, key: str, source: Path, expected_version: int | None
    ) -> ObjectInfo | None:
        """Write the file `source` under `key` without reading it in here (the object
        socket takes the file itself, the transfer service has it sent by `sendfile`), or
        None: then the caller reads it and puts the bytes."""
        paths = await self._paths_of(client)
        try:
            if paths.socket is not None:
                answer = await paths.socket.put_file(key, source, expected_version, info=True)
                return answer_info(key, answer)
            if paths.transfer:
                await self._client().put_file(paths.transfer, key, source, expected_version)
                return await _after_put(client, key)
        except FileNotFoundError:
            raise NotFound(f"no such file: {source}") from None
        except Unavailable as exc:
            if expected_version is not None or not _unreachable(exc):
                raise
            await self._forget(client)  # (an unconditional put may be sent again)
        return None

    async def _forget(self, client: Client) -> None:
        paths = self._paths.pop(client.address, None)
        if paths is not None and paths.socket is not None:
            await paths.socket.aclose()

    async def aclose(self) -> None:
        transfer, self._transfer = self._transfer, None
        if transfer is not None:
            await transfer.aclose()
        paths, self._paths = self._paths, {}
        for known in paths.values():
            if known.socket is not None:
                await known.socket.aclose()


async def _after_put(client: Client, key: str) -> ObjectInfo:
    for info in await client.list_objects(key):
        if info.key == key:
            return info
    raise Unavailable(f"object {key!r} was written but could not be read back")


def _unreachable(exc: Unavailable) -> bool:
    """The service failed to answer, rather than answered that the object is unavailable."""
    return isinstance(exc, TransferBroken)
