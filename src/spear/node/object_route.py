"""A `Client`'s path for object bytes (docs/objects.md): straight to its node's object
transfer service when the node serves one (cluster members do), so a value is not cut
into protobuf messages through the pure-Python HTTP/2 stack; gRPC otherwise.

Gets take it whatever the size (the answer says how many bytes follow); puts from
`STREAM_MIN_BYTES` up (below that one gRPC message is as quick). Keys, namespaces, roles
and quotas are the node's, as over gRPC. When the service cannot be reached the caller
falls back to gRPC (which fails over to the next node); a conditional put whose answer
was lost is not sent again (as over gRPC).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.errors import SpearError, Unavailable

if TYPE_CHECKING:
    from spear.node.client import Client
    from spear.store.object_info import ObjectInfo
    from spear.transport.channels import Credentials
    from spear.transport.object_transfer import ObjectTransferClient

# Measured (objects_cluster_bench, quiet machine): a 1 MiB put 2-3x quicker this way.
STREAM_MIN_BYTES = 256 * 1024


class ObjectRoute:
    """Where a Client's object bytes go; one per Client, closed with it."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._addresses: dict[str, str] = {}  # node's gRPC address -> its transfer service
        self._transfer: ObjectTransferClient | None = None

    async def _address(self, client: Client) -> str:
        address = self._addresses.get(client.address)
        if address is None:
            try:
                address = (await client.node_info()).object_transfer_address
            except SpearError:  # (gRPC then, which says what is wrong, or fails over)
                return ""
            self._addresses[client.address] = address
        return address

    def _client(self) -> ObjectTransferClient:
        if self._transfer is None:
            from spear.transport.object_transfer import ObjectTransferClient

            self._transfer = ObjectTransferClient(self._credentials)
        return self._transfer

    async def get(self, client: Client, key: str) -> tuple[bytes, ObjectInfo] | None:
        """The value and info of `key`, or None: then gRPC it is."""
        address = await self._address(client)
        if not address:
            return None
        try:
            data, info = await self._client().get_object(address, key)
        except Unavailable as exc:
            if _unreachable(exc):
                self._addresses.pop(client.address, None)
                return None
            raise
        return bytes(data), info

    async def put(
        self, client: Client, key: str, data: bytes, expected_version: int | None
    ) -> ObjectInfo | None:
        """Write `data` under `key` and return its info, or None: then gRPC it is."""
        if len(data) < STREAM_MIN_BYTES:
            return None
        address = await self._address(client)
        if not address:
            return None
        try:
            return await self._client().put_object(address, key, data, expected_version)
        except Unavailable as exc:
            if expected_version is None and _unreachable(exc):
                self._addresses.pop(client.address, None)
                return None  # (an unconditional put may be sent again)
            raise

    async def aclose(self) -> None:
        transfer, self._transfer = self._transfer, None
        if transfer is not None:
            await transfer.aclose()


def _unreachable(exc: Unavailable) -> bool:
    """The service failed to answer, rather than answered that the object is unavailable."""
    from spear.transport.object_transfer import TransferBroken

    return isinstance(exc, TransferBroken)
