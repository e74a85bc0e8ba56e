"""Node liveness as leases held by the leading SMS, checkpointed to the KV in batches.

A heartbeat renews its node's lease: the leader notes the time and the node's load in
memory and answers, with no KV write (the KV round trips were most of a heartbeat's
cost: a read and a compare-and-swap of the node's record, on etcd two consensus-backed
calls). Every checkpoint (`flush`, called by the leader's sweep loop a few times per
heartbeat period) writes the records whose lease or load changed since the last one, up
to `BATCH` records in one atomic commit (etcd's default limit is 128 operations a
transaction), each on the version it was last written at. etcd keeps its own leases
the same way: renewed in its leader's memory, checkpointed now and then.

What the KV holds is therefore at most one checkpoint old: followers answer reads from
it, and a new leader starts from it, giving every node a full period to speak before
judging it (MetadataServer.take_over). Only the leader writes node records, so its
memory is the truth while it leads; it forgets everything when it stops leading.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from spear.core.cluster import NodeHealth
from spear.store.kv import Write

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from spear.core.cluster import NodeRecord
    from spear.core.models import Resources
    from spear.store.kv import KV

BATCH = 100  # node records in one checkpoint commit


@dataclasses.dataclass(slots=True)
class _Lease:
    record: NodeRecord  # the KV's record with this SMS's newer heartbeat fields
    version: int  # the KV version it was last read or written at
    dirty: bool = False  # changed since written


class Liveness:
    """The leader's table of node leases (a lease is renewed by each heartbeat)."""

    def __init__(self) -> None:
        self._leases: dict[str, _Lease] = {}
        self._names: list[str] | None = []  # sorted, None when a name was added
        self.checkpoints = 0  # commits written by `flush`
        # Whether every node record of the KV is held here (`load`): the leader then
        # answers from memory, since no one else writes them (no scan, no decoding).
        self.complete = False

    def __len__(self) -> int:
        return len(self._leases)

    def clear(self) -> None:
        """Forget every lease (this SMS stops leading, or starts to)."""
        self._leases.clear()
        self._names = []
        self.complete = False

    def remember(self, record: NodeRecord, version: int) -> None:
        """`record` was just read from or written to the KV at `version`."""
        if record.name not in self._leases:
            self._names = None
        self._leases[record.name] = _Lease(record, version)

    def load(self, stored: list[tuple[NodeRecord, int]]) -> None:
        """Every node record of the KV with its version, as just scanned: held from now
        on (a record this SMS holds already is newer, and kept)."""
        for record, version in stored:
            if record.name not in self._leases:
                self.remember(record, version)
        self.complete = True

    def records(self) -> list[NodeRecord]:
        """Every record held, in name order (as a KV scan lists them)."""
        if self._names is None:
            self._names = sorted(self._leases)
        leases = self._leases
        return [leases[name].record for name in self._names]

    def record(self, name: str) -> NodeRecord | None:
        lease = self._leases.get(name)
        return None if lease is None else lease.record

    def renew(
        self,
        name: str,
        incarnation: str,
        now: float,
        free: Resources,
        running: int,
        queued: int,
    ) -> NodeRecord | None:
        """A heartbeat of a healthy node known here: renewed in memory, the new record.
        None when the KV must decide (unknown here, another incarnation, not healthy)."""
        lease = self._leases.get(name)
        if (
            lease is None
            or lease.record.incarnation != incarnation
            or lease.record.health is not NodeHealth.HEALTHY
        ):
            return None
        lease.record = dataclasses.replace(
            lease.record,
            free=free,
            running_tasks=running,
            queued_tasks=queued,
            last_heartbeat=now,
        )
        lease.dirty = True
        return lease.record

    def current(self, stored: NodeRecord) -> NodeRecord:
        """`stored` (as read from the KV) with what this SMS heard since it was written."""
        lease = self._leases.get(stored.name)
        if lease is None or lease.record.incarnation != stored.incarnation:
            return stored
        if lease.record.health is not stored.health:
            return stored  # the KV moved on (another writer): it wins
        return lease.record

    async def flush(
        self,
        kv: KV,
        key_of: Callable[[str], str],
        encode: Callable[[NodeRecord], bytes],
        rewrite: Callable[[str], Awaitable[NodeRecord | None]],
    ) -> int:
        """Checkpoint every changed lease; how many records were written.

        A batch whose versions no longer match (the record changed under us) is written
        record by record with `rewrite(name)`, a compare-and-swap that reapplies them
        (None: the record is gone, and its lease is forgotten)."""
        due = [(name, lease) for name, lease in self._leases.items() if lease.dirty]
        written = 0
        for start in range(0, len(due), BATCH):
            chunk = due[start : start + BATCH]
            snapshot = [(name, lease, lease.record) for name, lease in chunk]
            for _, lease in chunk:
                lease.dirty = False
            writes = [
                Write(key_of(name), encode(record), lease.version)
                for name, lease, record in snapshot
            ]
            revision = await kv.commit(writes)
            self.checkpoints += 1
            if revision > 0:
                for name, lease, _ in snapshot:
                    if self._leases.get(name) is lease:
                        lease.version = revision
                written += len(snapshot)
                continue
            for name, lease, _ in snapshot:
                if self._leases.get(name) is lease:
                    if await rewrite(name) is None:  # gone from the KV: forget it too
                        self._leases.pop(name, None)
                        self._names = None
                    else:
                        written += 1
        return written
