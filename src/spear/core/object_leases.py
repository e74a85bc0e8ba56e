"""Which members may have cached an object's version, and telling them when it changes
(docs/objects.md, "Cached versions"): the SMS's side of the members' version caches.

A member watching the index (WatchObjects) holds a *lease*: it renews it with pings, and
it may answer a get from a cached version only while the lease runs (counted from when it
sent the ping the SMS answered, so its lease always ends before the SMS thinks it does).
Each lookup (and each commit) by a leased member is noted against the key *before* the
index is read, so a write that completes afterwards finds the member to tell. A write
that changes a key (commit, change, collect) is acknowledged only once every member noted
for that key applied the invalidation, or its lease surely ended (a member that stopped
answering, a broken stream, a partition): no member serves the old version after the
writer heard "done".

A commit's invalidation carries the key's new record: a member caches it as current (a
get of the new version then asks no one), so it stays noted for the key's next change.
Two quick commits of a key may reach `changed` in either order (each after its own
compare-and-swap): versions are the KV's revisions, which only grow, so a record older
than one already announced for that key goes as a plain invalidation instead (a member
noted in between, by a commit that lost its compare-and-swap, must not cache it), and a
member keeps a pushed record only if no newer one is known there (node/object_cache.py).

A restarted SMS, or one that (again) leads, does not know which leases the last leader
granted: the time the last grant runs to is kept in the KV (`objlease/until`, wall
clock), and a write waits until then (read again whenever this SMS is not granting leases
itself). Only the leader grants leases (WatchObjects is a write).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from spear.core.object_index import ObjectRecord
    from spear.store.kv import KV

LEASE_S = 2.0  # how long a member may serve cached versions after a renewal answered
LEASE_RANGE_S = (0.5, 60.0)  # what the setting `object_lease_s` may be
_MARGIN_S = 0.1  # clock rates differ a little between the SMS and its members
LEASE_KEY = "objlease/until"  # wall-clock time the last lease granted may run to
_ANNOUNCED_KEPT = 65536  # keys' newest announced versions remembered against late ones

# What a watch sends: (pong, lease_s, seq, keys, the new record of a commit's key or None).
Event = tuple[int, float, int, tuple[str, ...], "ObjectRecord | None"]


def lease_from(extra: Mapping[str, Any]) -> float:
    """The setting `object_lease_s` (an SMS's): how long a member may serve cached versions
    after a renewal the SMS answered. Shorter: a write waits less for a member cut off
    (partitioned, stalled) and members ping more often (every quarter of it)."""
    raw = extra.get("object_lease_s", LEASE_S)
    low, high = LEASE_RANGE_S
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if not low <= value <= high:
        raise InvalidArgument(
            f"setting object_lease_s must be seconds from {low} to {high:g}, not {raw!r}"
        )
    return value


@dataclass(eq=False)
class Watcher:
    """One member's open watch: what to send it, and the invalidations it has not acked."""

    node: str
    outbox: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    pending: dict[int, asyncio.Future[bool]] = field(default_factory=dict)
    seq: int = 0

    def acked(self, seq: int) -> None:
        future = self.pending.pop(seq, None)
        if future is not None and not future.done():
            future.set_result(True)

    def close(self) -> None:
        self.outbox.put_nowait(None)
        for future in self.pending.values():
            if not future.done():
                future.set_result(False)  # not applied: its waiter waits out the lease
        self.pending.clear()


class ObjectLeases:
    """The leases the SMS granted and the keys each leased member may have cached."""

    def __init__(
        self,
        lease_s: float = LEASE_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.lease_s = lease_s
        self._clock = clock
        self._wall = wall
        self._watchers: dict[str, Watcher] = {}
        self._lease_until: dict[str, float] = {}  # node -> its lease surely ended by (clock)
        self._cached_by: dict[str, set[str]] = {}  # key -> nodes that may have it cached
        self._announced: OrderedDict[str, int] = OrderedDict()  # key -> newest version
        self._announced_floor = 0  # the newest version forgotten from `_announced`
        self._persisted = 0.0  # wall-clock time written to the KV: no lease runs past it
        self._grace: float | None = None  # wall clock: the last SMS's leases ran to this

    # -- the watch stream -------------------------------------------------------------

    def watch(self, node: str) -> Watcher:
        """A member opened a watch (a previous one of it ends)."""
        old = self._watchers.pop(node, None)
        if old is not None:
            old.close()
        watcher = Watcher(node)
        self._watchers[node] = watcher
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        if self._watchers.get(watcher.node) is watcher:
            del self._watchers[watcher.node]
        watcher.close()

    async def renew(self, kv: KV, watcher: Watcher, ping: int) -> None:
        """Answer a ping: the member's lease runs `lease_s` from when it sent it."""
        await self._load_grace(kv)
        end_wall = self._wall() + self.lease_s
        if end_wall > self._persisted:  # (written at most every half lease)
            self._persisted = end_wall + self.lease_s / 2
            await kv.put(LEASE_KEY, repr(self._persisted).encode())
        # Set before the pong is queued: a write that queues an invalidation after this
        # point finds the pong ahead of it, so the member's lease is bounded by this.
        self._lease_until[watcher.node] = self._clock() + self.lease_s + _MARGIN_S
        watcher.outbox.put_nowait((ping, self.lease_s, 0, (), None))

    # -- reads and writes of the index --------------------------------------------------

    def noted(self, node: str | None, key: str) -> None:
        """`node` is about to read `key` from the index (and may cache what it reads)."""
        if node is not None and node in self._lease_until:
            self._cached_by.setdefault(key, set()).add(node)

    async def changed(
        self, kv: KV, key: str, writer: str | None = None, record: ObjectRecord | None = None
    ) -> None:
        """`key` changed in the index: return once no member can serve its old version.
        `writer` (the member that wrote it, told by the answer itself) is not waited for,
        and stays noted: it caches what it wrote. `record` (a commit's new record) goes
        with each invalidation: the members told cache it, so they stay noted too."""
        if self._persisted < self._wall():
            # Not granting leases now: another SMS may have since (a leadership that
            # moved away and back), so read again how long its leases may run.
            self._grace = None
        await self._load_grace(kv)
        assert self._grace is not None
        left = self._grace - self._wall()
        if left > 0:  # the first writes after a restart: the last SMS's leases may run
            await asyncio.sleep(left + _MARGIN_S)
        if record is not None and not self._newest(key, record.version):
            record = None  # (a later commit's record went out already)
        nodes = self._cached_by.pop(key, set())
        if writer is not None and writer in nodes:
            nodes.discard(writer)
            self._cached_by.setdefault(key, set()).add(writer)
        if not nodes:
            return
        now = self._clock()
        waits = []
        for node in nodes:
            until = self._lease_until.get(node, 0.0)
            if until <= now:
                continue  # its lease ended: it serves nothing cached until it asks again
            watcher = self._watchers.get(node)
            if watcher is not None and record is not None:  # it will cache the pushed record
                self._cached_by.setdefault(key, set()).add(node)
            waits.append(self._invalidate(watcher, key, until - now, record))
        if waits:
            await asyncio.gather(*waits)

    def _newest(self, key: str, version: int) -> bool:
        """Whether `version` of `key` is newer than any announced (and remember it)."""
        if version <= max(self._announced_floor, self._announced.get(key, 0)):
            return False
        self._announced[key] = version
        self._announced.move_to_end(key)
        while len(self._announced) > _ANNOUNCED_KEPT:
            _, forgotten = self._announced.popitem(last=False)
            self._announced_floor = max(self._announced_floor, forgotten)
        return True

    async def _invalidate(
        self, watcher: Watcher | None, key: str, lease_left: float, record: ObjectRecord | None
    ) -> None:
        if watcher is None:  # (its stream broke: its lease may still run)
            await asyncio.sleep(lease_left)
            return
        watcher.seq += 1
        seq = watcher.seq
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        watcher.pending[seq] = future
        watcher.outbox.put_nowait((0, 0.0, seq, (key,), record))
        deadline = self._clock() + lease_left
        try:
            applied = await asyncio.wait_for(asyncio.shield(future), lease_left)
        except TimeoutError:  # it stopped answering: its lease has run out by now
            watcher.pending.pop(seq, None)
            return
        if not applied:  # its stream closed first: wait its lease out
            await asyncio.sleep(max(0.0, deadline - self._clock()))

    async def _load_grace(self, kv: KV) -> None:
        if self._grace is not None:
            return
        entry = await kv.get(LEASE_KEY)
        grace = 0.0
        with contextlib.suppress(ValueError):
            if entry is not None:  # (bounded, should the clock have jumped back)
                grace = min(float(entry.value.decode()), self._wall() + 2 * self.lease_s)
        if self._grace is None:
            self._grace = grace
