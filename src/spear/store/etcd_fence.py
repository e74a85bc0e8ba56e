"""Fenced writes on etcd: a leader's writes that etcd refuses once its leadership is gone.

A leader elected with `store/etcd_election.py` holds a key whose create revision names
its term (`Candidate.leader_key`). Every write through a `FencedEtcdKV` is one etcd
transaction that also compares that key's create revision with the term's: when the
leader's lease has expired (its key deleted) or another term began, etcd itself refuses
the write, however late a deposed leader wakes up (a paused process, a slow network).
Reads pass through unfenced: any SMS may serve them.

    fence = Fence()
    kv = FencedEtcdKV.over(plain_kv, fence)
    fence.hold(*candidate.leader_key)   # writes allowed, conditioned on the term
    fence.release()                     # writes refused at once (NotLeader)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from spear.errors import NotLeader
from spear.store._etcd_gen import rpc_pb2 as pb
from spear.store.etcd import EtcdKV, _is_mod, _write_op

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from spear.store.kv import Write


class Fence:
    """The term a process may write in: the leader key and its create revision, or none.

    `refusal()` builds the error a write gets without a term (it may name the leader)."""

    def __init__(self, refusal: Callable[[], NotLeader] | None = None) -> None:
        self.key: bytes | None = None
        self.revision = 0
        self.ended = anyio.Event()  # set when the term held now ends
        self._refusal = refusal or (lambda: NotLeader("this SMS is not the leader"))

    def hold(self, key: bytes, revision: int) -> None:
        self.key, self.revision = key, revision
        self.ended = anyio.Event()

    def release(self) -> None:
        self.key, self.revision = None, 0
        self.ended.set()

    def refusal(self) -> NotLeader:
        return self._refusal()

    def compare(self) -> pb.Compare:
        """The transaction's guard: the term's key still has the term's create revision."""
        if self.key is None:
            raise self.refusal()
        return pb.Compare(
            result=pb.Compare.EQUAL,
            target=pb.Compare.CREATE,
            key=self.key,
            create_revision=self.revision,
        )


class FencedEtcdKV(EtcdKV):
    """An EtcdKV whose every write holds only while `fence`'s term lasts (NotLeader if not).

    A compare-and-swap or commit whose own versions do not match still answers -1, as the
    KV seam says; one refused by the fence raises NotLeader and changed nothing."""

    def __init__(self, kv: EtcdKV, fence: Fence) -> None:
        super().__init__(kv.client, kv.namespace)
        self.fence = fence

    async def _fenced_txn(
        self, compares: list[pb.Compare], ops: list[pb.RequestOp], operation: str
    ) -> pb.TxnResponse | None:
        """The writes if the fence and `compares` hold; None if only `compares` failed."""
        guard = self.fence.compare()
        assert self.fence.key is not None
        # On failure, read the term's key back to tell a stale version from a lost term.
        check = pb.RequestOp(
            request_range=pb.RangeRequest(key=self.fence.key, keys_only=True, count_only=False)
        )
        resp = await self.client.txn(
            pb.TxnRequest(compare=[guard, *compares], success=ops, failure=[check]), operation
        )
        if resp.succeeded:
            return resp
        kvs = resp.responses[0].response_range.kvs if resp.responses else []
        if not kvs or int(kvs[0].create_revision) != guard.create_revision:
            self.fence.release()
            raise self.fence.refusal()
        return None

    async def put(self, key: str, value: bytes) -> int:
        resp = await self._fenced_txn([], [_write_op(self._key(key), value)], "fenced put")
        assert resp is not None
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        resp = await self._fenced_txn([], [_write_op(self._key(key), None)], "fenced delete")
        assert resp is not None
        return int(resp.responses[0].response_delete_range.deleted) > 0

    async def compare_and_swap(self, key: str, value: bytes | None, expected_version: int) -> int:
        raw = self._key(key)
        resp = await self._fenced_txn(
            [_is_mod(raw, expected_version)], [_write_op(raw, value)], "fenced compare-and-swap"
        )
        if resp is None:
            return -1
        return 0 if value is None else int(resp.header.revision)

    async def commit(self, writes: Sequence[Write]) -> int:
        compares, ops = self._commit_parts(writes)
        resp = await self._fenced_txn(compares, ops, "fenced commit")
        return -1 if resp is None else int(resp.header.revision)

    async def aclose(self) -> None:
        """The connection is the plain KV's: closing this view leaves it open."""
