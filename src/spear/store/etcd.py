"""The KV seam on etcd v3, over spear's own gRPC stack (store/_etcd_client.py).

An entry's version is etcd's `mod_revision`: the cluster revision of the key's last write.
That is the seam's model exactly (one counter that only grows, 0 = absent), so
compare-and-swap is one transaction comparing `mod_revision` and writing on success.
Every key is stored under `namespace`, so several spear clusters (or tests) can share one
etcd; callers never see the namespace. Given several endpoints (the members of a
cluster), requests fail over between them, and a watch resumes on another member from the
revision after the last one it delivered, so no change is lost or repeated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.errors import StorageError
from spear.store._etcd_client import EtcdClient, StreamResumer, prefix_range_end
from spear.store._etcd_gen import kv_pb2
from spear.store._etcd_gen import rpc_pb2 as pb
from spear.store.kv import KV, Entry, EventKind, WatchEvent, Write

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

_DEFAULT_TIMEOUT_S = 10.0
_TXN_OPS = 128  # operations in one transaction (etcd's --max-txn-ops default)


def parse_endpoints(url: str) -> list[str]:
    """`etcd://HOST:PORT[,HOST:PORT...]` (or bare `HOST:PORT,...`) -> ['HOST:PORT', ...]."""
    text = url.strip().removeprefix("etcd://").strip().rstrip("/")
    endpoints = [e.strip() for e in text.split(",") if e.strip()]
    if not endpoints:
        raise StorageError(f"no etcd endpoint in {url!r} (expected etcd://HOST:PORT[,...])")
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise StorageError(f"not an etcd endpoint: {endpoint!r} (expected HOST:PORT)")
    return endpoints


def _is_mod(raw: bytes, version: int) -> pb.Compare:
    # etcd compares a missing key as if every revision were 0: MOD == 0 means "absent".
    return pb.Compare(
        result=pb.Compare.EQUAL,
        target=pb.Compare.MOD,
        key=raw,
        mod_revision=version,
    )


def _write_op(raw: bytes, value: bytes | None) -> pb.RequestOp:
    if value is None:
        return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=raw))
    return pb.RequestOp(request_put=pb.PutRequest(key=raw, value=value))


class EtcdKV(KV):
    """etcd behind the KV seam. Use `await EtcdKV.connect(endpoints)`."""

    def __init__(self, client: EtcdClient, namespace: str) -> None:
        self._client = client
        self._ns = namespace
        self._nsb = namespace.encode()

    @property
    def client(self) -> EtcdClient:
        """The connection (leases and elections use it too: store/etcd_election.py)."""
        return self._client

    @property
    def namespace(self) -> str:
        """The prefix every key is stored under (a fenced view shares it: etcd_fence.py)."""
        return self._ns

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
        if isinstance(endpoints, str):
            endpoints = parse_endpoints(endpoints)
        client = EtcdClient(list(endpoints), timeout_s=timeout_s)
        kv = cls(client, namespace)
        if check:
            try:
                await kv.revision()
            except BaseException:
                await client.aclose()
                raise
        return kv

    def _key(self, key: str) -> bytes:
        return self._nsb + key.encode()

    def _unkey(self, raw: bytes) -> str:
        return raw[len(self._nsb) :].decode()

    async def get(self, key: str) -> Entry | None:
        resp = await self._client.range(pb.RangeRequest(key=self._key(key)))
        return _entry(key, resp.kvs)

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        entries: list[Entry | None] = []
        for start in range(0, len(keys), _TXN_OPS):
            part = keys[start : start + _TXN_OPS]
            ops = [pb.RequestOp(request_range=pb.RangeRequest(key=self._key(k))) for k in part]
            resp = await self._client.txn(pb.TxnRequest(success=ops), "read")
            for key, answer in zip(part, resp.responses, strict=True):
                entries.append(_entry(key, answer.response_range.kvs))
        return entries

    async def put(self, key: str, value: bytes) -> int:
        resp = await self._client.put(pb.PutRequest(key=self._key(key), value=value))
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        resp = await self._client.delete_range(pb.DeleteRangeRequest(key=self._key(key)))
        return int(resp.deleted) > 0

    async def compare_and_swap(self, key: str, value: bytes | None, expected_version: int) -> int:
        raw = self._key(key)
        request = pb.TxnRequest(
            compare=[_is_mod(raw, expected_version)], success=[_write_op(raw, value)]
        )
        resp = await self._client.txn(request, "compare-and-swap")
        if not resp.succeeded:
            return -1
        return 0 if value is None else int(resp.header.revision)

    def _commit_parts(self, writes: Sequence[Write]) -> tuple[list[pb.Compare], list[pb.RequestOp]]:
        """A commit's transaction: its version compares and its writes."""
        compares, ops = [], []
        for w in writes:
            raw = self._key(w.key)
            if w.expected_version is not None:
                compares.append(_is_mod(raw, w.expected_version))
            ops.append(_write_op(raw, w.value))
        return compares, ops

    async def commit(self, writes: Sequence[Write]) -> int:
        compares, ops = self._commit_parts(writes)
        resp = await self._client.txn(pb.TxnRequest(compare=compares, success=ops), "commit")
        if not resp.succeeded:
            return -1
        return int(resp.header.revision)

    async def scan(
        self, prefix: str, *, reverse: bool = False, limit: int | None = None
    ) -> list[Entry]:
        start = self._key(prefix)
        order = pb.RangeRequest.DESCEND if reverse else pb.RangeRequest.ASCEND
        resp = await self._client.range(
            pb.RangeRequest(
                key=start,
                range_end=prefix_range_end(start),
                limit=limit or 0,
                sort_order=order,
                sort_target=pb.RangeRequest.KEY,
            )
        )
        return [
            Entry(self._unkey(bytes(item.key)), bytes(item.value), int(item.mod_revision))
            for item in resp.kvs
        ]

    async def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        start = self._key(prefix)
        end = prefix_range_end(start)
        resumer = StreamResumer(self._client, "watch")
        next_revision = 0  # 0: from now on; after the first stream, the one after the last seen
        while True:
            endpoint = self._client.current
            request = pb.WatchRequest(
                create_request=pb.WatchCreateRequest(
                    key=start, range_end=end, start_revision=next_revision
                )
            )
            try:
                async with self._client.stream(
                    endpoint, "/etcdserverpb.Watch/Watch", request, pb.WatchResponse
                ) as responses:
                    async for response in responses:
                        if response.created:
                            resumer.served()
                            if next_revision == 0:
                                next_revision = int(response.header.revision) + 1
                        if response.canceled:
                            raise StorageError(
                                "etcd watch canceled: history compacted to revision "
                                f"{response.compact_revision}"
                                if response.compact_revision
                                else f"etcd watch canceled: {response.cancel_reason}"
                            )
                        for event in response.events:
                            kv = event.kv
                            next_revision = int(kv.mod_revision) + 1
                            deleted = event.type == kv_pb2.Event.DELETE
                            yield WatchEvent(
                                EventKind.DELETE if deleted else EventKind.PUT,
                                self._unkey(bytes(kv.key)),
                                b"" if deleted else bytes(kv.value),
                                int(kv.mod_revision),
                            )
            except Exception as exc:
                await resumer.failed(endpoint, exc)

    async def revision(self) -> int:
        """The cluster's current revision (what the next write exceeds)."""
        resp = await self._client.range(pb.RangeRequest(key=self._key(""), count_only=True))
        return int(resp.header.revision)

    async def aclose(self) -> None:
        await self._client.aclose()


def _entry(key: str, kvs: Sequence[kv_pb2.KeyValue]) -> Entry | None:
    """The entry of `key` from a range's answer (None: absent)."""
    if not kvs:
        return None
    return Entry(key, bytes(kvs[0].value), int(kvs[0].mod_revision))
