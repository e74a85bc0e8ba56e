"""The cluster's object index (docs/objects.md): the SMS's authority over every object.

One entry per key in the SMS's KV, `objidx/<key>`, holding the object's size, references,
pin, times and holders (node -> the address of its object transfer service). The object's
version is the KV revision of the commit that wrote its value (kept explicitly once a
reference or holder change rewrites the entry), so versions only grow, across nodes and
across a delete and re-create, on LevelDB and on etcd alike.

Every change is a compare-and-swap on the entry, so of many nodes committing against the
same expected version exactly one wins and the others get `Conflict`; this is what makes
optimistic concurrency cluster-wide. The bytes stay on the nodes: a commit names the
writer as the only holder of the new version; a node that fetched a copy adds itself
(`hold`), for that version only.

Small values (at most `INLINE_MAX` bytes) are kept in the entry itself (base64 in its
JSON), and LookupObject answers with them: a node reads one from the index in the round
trip it makes anyway, with no hop to a holder (the small-object fast path). The value is
replaced in the same compare-and-swap as the version, so it is always that version's.

A deleted object stays deleted. Its copies on nodes that were away (or that had not yet
dropped theirs) are named in a tombstone, `objgone/<key>` (its last version, when, and
those holders), written in the same transaction as the delete; a node coming back that
announces such a copy is told it is stale instead of having it adopted. A tombstone names
every holder but the node that asked for an explicit delete (it drops its own copy at
once), and for a collection every holder, live or not (a live one drops its copy at its
next sweep, but may restart before it). A holder is struck off when it announces the
copy, or when it says it dropped that version or a later one (each member's collection
names the copies its last sweep dropped); a tombstone with no holder left, or older than
`TOMBSTONE_KEEP_S`, is removed.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from spear.core.object_leases import ObjectLeases
from spear.errors import Conflict, InvalidArgument, NotFound
from spear.store.kv import Write

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Sequence

    from spear.store.kv import KV, Entry

INDEX = "objidx/"
GONE = "objgone/"  # tombstones of deleted keys whose copies some nodes may still hold
TOMBSTONE_KEEP_S = 30 * 86400.0  # a holder away longer than this finds its copy adopted
INLINE_MAX = 4096  # values up to this size live in the index entry (as the node's store inlines)
CHANGES = ("ref", "unref", "release", "pin", "unpin", "delete", "force-delete")


@dataclass(frozen=True, slots=True)
class ObjectHolder:
    node: str
    address: str
    live: bool = True


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """What the cluster knows of one object; `holders` live ones first."""

    key: str
    version: int
    size: int
    holders: tuple[ObjectHolder, ...] = ()
    refs: int = 0
    pinned: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    value: bytes | None = None  # the value itself, kept in the index (small ones; lookups)

    def holder_names(self) -> tuple[str, ...]:
        return tuple(h.node for h in self.holders)


def _load(entry: Entry) -> tuple[dict[str, Any], int]:
    data: dict[str, Any] = orjson.loads(entry.value)
    return data, int(data.get("version") or entry.version)


def _record(
    key: str, data: dict[str, Any], version: int, live: set[str] | None, *, value: bool = False
) -> ObjectRecord:
    holders = [
        ObjectHolder(node, address, live is None or node in live)
        for node, address in sorted(data.get("holders", {}).items())
    ]
    holders.sort(key=lambda h: not h.live)
    return ObjectRecord(
        key=key,
        version=version,
        size=int(data["size"]),
        holders=tuple(holders),
        refs=int(data.get("refs", 0)),
        pinned=bool(data.get("pinned", False)),
        created_at=float(data.get("created", 0.0)),
        updated_at=float(data.get("updated", 0.0)),
        value=_inline(data) if value else None,
    )


def _inline(data: dict[str, Any]) -> bytes | None:
    inline = data.get("inline")
    return None if inline is None else base64.b64decode(inline)


# Whether a commit's invalidation carries its new record for members to cache
# (core/object_leases.py, node/object_cache.py). Off: members drop the key and look it up
# again (one SMS round trip more for the first get of a version written elsewhere).
PUSH_RECORDS = True


class ObjectIndex:
    """The index over the SMS's KV. `live_nodes` names the nodes a holder may be served by."""

    def __init__(
        self,
        kv: KV,
        live_nodes: Callable[[], Awaitable[set[str]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self._live_nodes = live_nodes
        self._clock = clock
        # Members that may have cached versions, told of each change (object_leases.py).
        self.leases = ObjectLeases()

    async def _live(self) -> set[str] | None:
        return None if self._live_nodes is None else await self._live_nodes()

    async def commit(
        self,
        key: str,
        node: str,
        address: str,
        size: int,
        expected_version: int | None,
        value: bytes | None = None,
    ) -> ObjectRecord:
        """A new value of `key`, written on `node`: the new version, or `Conflict`. `value`
        (the bytes themselves, if at most INLINE_MAX) is kept in the entry."""
        if not key or not node:
            raise InvalidArgument("an object commit needs a key and a node")
        if expected_version is not None and expected_version < 0:
            raise InvalidArgument("an expected version must be 0 (absent) or a version")
        self.leases.noted(node, key)  # (before reading: see object_leases.py)
        while True:
            entry = await self.kv.get(INDEX + key)
            now = self._clock()
            if entry is None:
                if expected_version:
                    raise Conflict(
                        f"object {key!r} does not exist (expected version {expected_version})"
                    )
                data: dict[str, Any] = {"refs": 0, "pinned": False, "created": now}
            else:
                data, current = _load(entry)
                if expected_version is not None and expected_version != current:
                    raise Conflict(
                        f"object {key!r} is at version {current}, not {expected_version}"
                    )
                data.pop("version", None)
            data.update(size=size, holders={node: address}, updated=now)
            data.pop("inline", None)
            if value is not None and len(value) == size <= INLINE_MAX:
                data["inline"] = base64.b64encode(value).decode()
            rev = await self.kv.compare_and_swap(
                INDEX + key, orjson.dumps(data), entry.version if entry else 0
            )
            if rev > 0:
                live = await self._live()
                pushed = _record(key, data, rev, live, value=True) if PUSH_RECORDS else None
                await self.leases.changed(self.kv, key, writer=node, record=pushed)
                return _record(key, data, rev, live)

    async def lookup(self, key: str, node: str | None = None) -> ObjectRecord:
        """The current record of `key`; `node`: the member asking (it may cache it)."""
        self.leases.noted(node, key)  # (before reading: see object_leases.py)
        entry = await self.kv.get(INDEX + key)
        if entry is None:
            raise NotFound(f"no such object: {key}")
        data, version = _load(entry)
        return _record(key, data, version, await self._live(), value=True)

    async def hold(self, key: str, node: str, address: str, version: int) -> ObjectRecord | None:
        """`node` holds `version` of `key`; None (nothing changed) if that is not current."""
        while True:
            entry = await self.kv.get(INDEX + key)
            if entry is None:
                return None
            data, current = _load(entry)
            if current != version:
                return None
            if data.get("holders", {}).get(node) != address:
                data["version"] = current
                data.setdefault("holders", {})[node] = address
                if (
                    await self.kv.compare_and_swap(INDEX + key, orjson.dumps(data), entry.version)
                    <= 0
                ):
                    continue
            return _record(key, data, current, await self._live())

    async def change(
        self,
        key: str,
        change: str,
        count: int = 1,
        expected_version: int | None = None,
        asker: str | None = None,
    ) -> tuple[ObjectRecord, bool]:
        """Apply one lifecycle change; (the record as it now is or was last, deleted?).

        `unref` to no references on an unpinned object deletes it (as on one node);
        `release` drops `count` references without collecting (a task that ended).
        `asker`: the member that asked (it drops its own copy of a deleted object)."""
        if change not in CHANGES:
            raise InvalidArgument(f"unknown object change {change!r}: one of {', '.join(CHANGES)}")
        while True:
            entry = await self.kv.get(INDEX + key)
            if entry is None:
                raise NotFound(f"no such object: {key}")
            data, version = _load(entry)
            if expected_version is not None and expected_version != version:
                raise Conflict(f"object {key!r} is at version {version}, not {expected_version}")
            refs, pinned = int(data.get("refs", 0)), bool(data.get("pinned", False))
            delete = False
            if change == "ref":
                refs += 1
            elif change == "unref":
                if refs <= 0:
                    raise InvalidArgument(f"object {key!r} has no references to remove")
                refs -= 1
                delete = refs == 0 and not pinned
            elif change == "release":
                refs = max(0, refs - count)
            elif change in ("pin", "unpin"):
                pinned = change == "pin"
            elif change == "delete" and (pinned or refs > 0):
                held = "pinned" if pinned else f"referenced {refs} time(s)"
                raise Conflict(f"object {key!r} is {held}; unpin it, or delete with force")
            else:
                delete = True
            data.update(refs=refs, pinned=pinned, version=version, updated=self._clock())
            if delete:
                away = set(data.get("holders", {})) - {asker}
                done = await self._delete(entry, key, version, away)
            else:
                done = (
                    await self.kv.compare_and_swap(INDEX + key, orjson.dumps(data), entry.version)
                    >= 0
                )
            if done:
                await self.leases.changed(self.kv, key)
                return _record(key, data, version, await self._live()), delete

    async def _delete(self, entry: Entry, key: str, version: int, holders: set[str]) -> bool:
        """Delete the index entry of `key` (at `entry`'s version: else False), leaving a
        tombstone naming `holders` (with those of an earlier one) if there are any."""
        if not holders:
            return await self.kv.compare_and_swap(entry.key, None, entry.version) >= 0
        old = await self.kv.get(GONE + key)
        if old is not None:
            holders |= set(orjson.loads(old.value).get("holders", ()))
        stone = {"version": version, "at": self._clock(), "holders": sorted(holders)}
        writes = [Write(entry.key, None, entry.version), Write(GONE + key, orjson.dumps(stone))]
        return await self.kv.commit(writes) >= 0

    async def list(self, prefix: str = "") -> builtins.list[ObjectRecord]:
        live = await self._live()
        out = []
        for entry in await self.kv.scan(INDEX + prefix):
            data, version = _load(entry)
            out.append(_record(entry.key[len(INDEX) :], data, version, live))
        return out

    async def announce(
        self, node: str, address: str, held: Sequence[tuple[str, int, int]]
    ) -> tuple[builtins.list[str], builtins.list[tuple[str, int]]]:
        """A node (re)joining holds these (key, version, size)s. It is entered as a holder
        of those that are current. Keys the index does not know (an SMS that lost its
        store) are adopted under a new version, so the copy is kept and versions still only
        grow: (stale keys, adopted (key, new version)s). Stale copies (overwritten or
        deleted meanwhile) are for the node to drop."""
        stale: builtins.list[str] = []
        adopted: builtins.list[tuple[str, int]] = []
        for key, version, size in held:
            if await self.hold(key, node, address, version) is not None:
                continue
            if await self._buried(key, version, node):  # deleted while this node was away
                stale.append(key)
                continue
            if await self.kv.get(INDEX + key) is None:
                try:
                    record = await self.commit(key, node, address, size, 0)
                    adopted.append((key, record.version))
                    continue
                except Conflict:  # created meanwhile by someone else
                    pass
            stale.append(key)
        return stale, adopted

    async def _buried(self, key: str, version: int, node: str) -> bool:
        """Whether `version` of `key` was deleted (a tombstone at or past it); `node`, which
        announced that copy and now drops it, is struck off the tombstone."""
        entry = await self.kv.get(GONE + key)
        if entry is None:
            return False
        stone = orjson.loads(entry.value)
        if int(stone["version"]) < version:
            return False
        if node in stone["holders"]:
            await self._strike(entry, stone, {node})
        return True

    async def _strike(self, entry: Entry, stone: dict[str, Any], nodes: set[str]) -> None:
        """Take `nodes` off a tombstone; remove it when no holder is left. (A tombstone
        changed meanwhile is left as it is: it is struck again later.)"""
        holders = [n for n in stone["holders"] if n not in nodes]
        value = orjson.dumps({**stone, "holders": holders}) if holders else None
        await self.kv.compare_and_swap(entry.key, value, entry.version)

    async def collect(
        self,
        grace_s: float,
        asker: str | None = None,
        dropped: Sequence[tuple[str, int]] = (),
    ) -> builtins.list[ObjectRecord]:
        """Delete entries with no references and no pin idle for `grace_s`; their records.
        `asker`: the member whose sweep this is, which `dropped` these (key, version)
        copies since its last one (core docstring: tombstones)."""
        now = self._clock()
        deleted = []
        for entry in await self.kv.scan(INDEX):
            data, version = _load(entry)
            idle = now - float(data.get("updated", 0.0))
            if data.get("refs", 0) > 0 or data.get("pinned") or idle < grace_s:
                continue
            holders = set(data.get("holders", {}))
            if await self._delete(entry, entry.key[len(INDEX) :], version, holders):
                await self.leases.changed(self.kv, entry.key[len(INDEX) :])
                deleted.append(_record(entry.key[len(INDEX) :], data, version, None))
        if asker:
            for key, version in dropped:
                await self._dropped(key, version, asker)
        await self._prune(now)
        return deleted

    async def _dropped(self, key: str, version: int, node: str) -> None:
        """`node` dropped its copy of `key` at `version`: struck off the key's tombstone if
        that is the version buried or a later one (a copy of an earlier version says
        nothing of one it may have fetched since)."""
        entry = await self.kv.get(GONE + key)
        if entry is not None:
            stone = orjson.loads(entry.value)
            if version >= int(stone["version"]) and node in stone["holders"]:
                await self._strike(entry, stone, {node})

    async def _prune(self, now: float) -> None:
        """Remove tombstones past `TOMBSTONE_KEEP_S`."""
        for entry in await self.kv.scan(GONE):
            if now - float(orjson.loads(entry.value)["at"]) > TOMBSTONE_KEEP_S:
                await self.kv.compare_and_swap(entry.key, None, entry.version)
