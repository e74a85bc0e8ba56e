"""The KV seam on etcd v3 (etcd3aio, asyncio over grpc.aio).

An entry's version is etcd's `mod_revision`: the cluster revision of the key's last write.
That is the seam's model exactly (one counter that only grows, 0 = absent), so
compare-and-swap is one transaction comparing `mod_revision` and writing on success.
Every key is stored under `namespace`, so several spear clusters (or tests) can share one
etcd; callers never see the namespace.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from spear.errors import StorageError, Unavailable, map_exceptions
from spear.store.kv import KV, Entry, EventKind, WatchEvent, Write

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

_DEFAULT_TIMEOUT_S = 10.0


def parse_endpoints(url: str) -> list[str]:
    """`etcd://HOST:PORT[,HOST:PORT...]` (or bare `HOST:PORT,...`) -> ['HOST:PORT', ...]."""
    text = url.removeprefix("etcd://").strip().rstrip("/")
    endpoints = [e.strip() for e in text.split(",") if e.strip()]
    if not endpoints:
        raise StorageError(f"no etcd endpoint in {url!r} (expected etcd://HOST:PORT[,...])")
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise StorageError(f"not an etcd endpoint: {endpoint!r} (expected HOST:PORT)")
    return endpoints


@contextlib.contextmanager
def _etcd_errors(operation: str) -> Iterator[None]:
    import grpc  # type: ignore[import-untyped]
    from etcd3aio.errors import EtcdConnectionError, EtcdError, EtcdTransientError

    def describe(exc: BaseException) -> str:
        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        return f"etcd {operation} failed: {detail}"

    with map_exceptions(
        {
            EtcdConnectionError: Unavailable,
            EtcdTransientError: Unavailable,
            TimeoutError: Unavailable,
            EtcdError: StorageError,
            grpc.aio.AioRpcError: StorageError,
        },
        describe,
    ):
        yield


class EtcdKV(KV):
    """etcd behind the KV seam. Use `await EtcdKV.connect(endpoints)`."""

    def __init__(self, client: Any, namespace: str, timeout_s: float) -> None:
        self._client = client
        self._ns = namespace
        self._nsb = namespace.encode()
        self._timeout = timeout_s
        self._closed = False

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str] | str,
        *,
        namespace: str = "spear/",
        timeout_s: float = _DEFAULT_TIMEOUT_S,
        check: bool = True,
    ) -> EtcdKV:
        """Connect to etcd (`['host:port', ...]` or an `etcd://` URL); checks it answers."""
        from etcd3aio import Etcd3Client

        if isinstance(endpoints, str):
            endpoints = parse_endpoints(endpoints)
        client = Etcd3Client(list(endpoints), rpc_max_attempts=3)
        await client.connect()
        kv = cls(client, namespace, timeout_s)
        if check:
            try:
                with _etcd_errors("connect"):
                    await kv._kv().get(b"\x00", timeout=min(timeout_s, 5.0))
            except BaseException:
                await client.close()
                raise
        return kv

    def _key(self, key: str) -> bytes:
        return self._nsb + key.encode()

    def _unkey(self, raw: bytes) -> str:
        return raw[len(self._nsb) :].decode()

    def _kv(self) -> Any:
        if self._closed or self._client.kv is None:
            raise StorageError("the etcd connection is closed")
        return self._client.kv

    async def get(self, key: str) -> Entry | None:
        with _etcd_errors("get"):
            resp = await self._kv().get(self._key(key), timeout=self._timeout)
        if not resp.kvs:
            return None
        item = resp.kvs[0]
        return Entry(key, bytes(item.value), int(item.mod_revision))

    async def put(self, key: str, value: bytes) -> int:
        with _etcd_errors("put"):
            resp = await self._kv().put(self._key(key), value, timeout=self._timeout)
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        with _etcd_errors("delete"):
            resp = await self._kv().delete(self._key(key), timeout=self._timeout)
        return int(resp.deleted) > 0

    async def compare_and_swap(self, key: str, value: bytes | None, expected_version: int) -> int:
        from etcd3aio._protobuf import Compare
        from etcd3aio.kv import KVService

        raw = self._key(key)
        # etcd compares a missing key as if every revision were 0: MOD == 0 means "absent".
        compare = Compare(
            result=Compare.EQUAL, target=Compare.MOD, key=raw, mod_revision=expected_version
        )
        op = KVService.txn_op_delete(raw) if value is None else KVService.txn_op_put(raw, value)
        with _etcd_errors("compare-and-swap"):
            resp = await self._kv().txn([compare], [op], timeout=self._timeout)
        if not resp.succeeded:
            return -1
        return 0 if value is None else int(resp.header.revision)

    async def commit(self, writes: Sequence[Write]) -> int:
        from etcd3aio._protobuf import Compare
        from etcd3aio.kv import KVService

        compares, ops = [], []
        for w in writes:
            raw = self._key(w.key)
            if w.expected_version is not None:
                compares.append(
                    Compare(
                        result=Compare.EQUAL,
                        target=Compare.MOD,
                        key=raw,
                        mod_revision=w.expected_version,
                    )
                )
            if w.value is None:
                ops.append(KVService.txn_op_delete(raw))
            else:
                ops.append(KVService.txn_op_put(raw, w.value))
        with _etcd_errors("commit"):
            resp = await self._kv().txn(compares, ops, timeout=self._timeout)
        if not resp.succeeded:
            return -1
        return int(resp.header.revision)

    async def scan(
        self, prefix: str, *, reverse: bool = False, limit: int | None = None
    ) -> list[Entry]:
        from etcd3aio import SortOrder, SortTarget, prefix_range_end

        start = self._key(prefix)
        with _etcd_errors("scan"):
            resp = await self._kv().get(
                start,
                range_end=prefix_range_end(start),
                limit=limit or 0,
                sort_order=SortOrder.DESCEND if reverse else SortOrder.ASCEND,
                sort_target=SortTarget.KEY,
                timeout=self._timeout,
            )
        return [
            Entry(self._unkey(bytes(item.key)), bytes(item.value), int(item.mod_revision))
            for item in resp.kvs
        ]

    async def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        from etcd3aio import prefix_range_end

        if self._closed or self._client.watch is None:
            raise StorageError("the etcd connection is closed")
        start = self._key(prefix)
        stream = self._client.watch.watch(start, range_end=prefix_range_end(start))
        try:
            while True:
                with _etcd_errors("watch"):
                    try:
                        response = await stream.__anext__()
                    except StopAsyncIteration:
                        return
                for event in response.events:
                    kind = EventKind.DELETE if event.type == 1 else EventKind.PUT
                    yield WatchEvent(
                        kind,
                        self._unkey(bytes(event.kv.key)),
                        b"" if kind is EventKind.DELETE else bytes(event.kv.value),
                        int(event.kv.mod_revision),
                    )
        finally:
            await stream.aclose()

    async def revision(self) -> int:
        """The cluster's current revision (what the next write exceeds)."""
        with _etcd_errors("get"):
            resp = await self._kv().get(self._key(""), timeout=self._timeout, count_only=True)
        return int(resp.header.revision)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.close()
