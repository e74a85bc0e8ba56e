"""One object space across the cluster (docs/objects.md): a member's side of it.

`ClusterObjects` is the ObjectAuthority a member's object store defers to: versions,
references and pins are the SMS's object index (compare-and-swap there), bytes come from
the holders' object transfer services. `sharing_objects` serves this node's copies and
puts the authority in place for as long as the node is a member; every writer of the
store (CLI and gRPC puts, WASM hostcalls, the Python SDK, task results) goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING

import anyio

from spear._logging import logger
from spear.core import namespaces as ns
from spear.core.object_index import INLINE_MAX
from spear.errors import Conflict, NotFound, ResourceExhausted, SpearError, Unavailable
from spear.node.object_cache import VersionCache, watch_index
from spear.node.object_commits import CommitQueue
from spear.transport._object_convert import record_info
from spear.transport.sms_client import ObjectCommit

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Mapping, Sequence
    from pathlib import Path

    from spear.core.cluster import NodeRecord
    from spear.core.object_index import ObjectRecord
    from spear.node.quotas import QuotaFile
    from spear.store.object_info import ObjectInfo
    from spear.store.objects import ObjectStore
    from spear.transport.channels import Credentials
    from spear.transport.object_transfer import ObjectTransferClient
    from spear.transport.serving import Security
    from spear.transport.sms_client import SmsClient

REPAIR_EVERY_S = 2.0  # how often a member looks whether the live members changed
REPAIR_LOOKS = 15  # and a repair pass every this many looks whatever it saw
_RECORDS_KEPT = 1024  # records of recent lookups, so a fetch need not look up again


class ClusterObjects:
    """The ObjectAuthority of a member named `node` whose transfer service is `address`."""

    def __init__(
        self, sms: SmsClient, node: str, address: str, transfer: ObjectTransferClient
    ) -> None:
        self._sms = sms
        self.node = node
        self.address = address
        self._transfer = transfer
        self._records: OrderedDict[str, ObjectRecord] = OrderedDict()
        self._holding: set[asyncio.Task[None]] = set()
        self._commits = CommitQueue(sms)  # (grouped while one is on the wire)
        self.replicas: Replicas | None = None  # setting object_replicas > 1
        self.cache = VersionCache()  # current versions, while the index's watch runs

    async def commit(
        self, key: str, size: int, expected_version: int | None, value: bytes | None = None
    ) -> int:
        self.cache.touch(key)
        ticket = self.cache.ticket(self._sms)
        try:
            record = await self._commits.commit(
                ObjectCommit(key, self.node, self.address, size, expected_version, value)
            )
        except Conflict:
            raise  # (refused: nothing was written)
        except BaseException:
            self.cache.unsure(key)  # (it may have been written, unheard)
            raise
        self.cache.keep(key, record, ticket, self._sms)
        if self.replicas is not None and size > INLINE_MAX:  # (the index holds small ones)
            self.replicas.copy(key)
        return record.version

    async def commit_many(
        self, commits: Sequence[tuple[str, int, int | None, bytes | None]]
    ) -> builtins.list[int | Exception]:
        for key, *_ in commits:
            self.cache.touch(key)
        ticket = self.cache.ticket(self._sms)
        try:
            outcomes = await self._commits.commit_many(
                [
                    ObjectCommit(key, self.node, self.address, size, expected, value)
                    for key, size, expected, value in commits
                ]
            )
        except BaseException:
            for key, *_ in commits:
                self.cache.unsure(key)  # (any of them may have been written, unheard)
            raise
        answers: builtins.list[int | Exception] = []
        for (key, size, *_), outcome in zip(commits, outcomes, strict=True):
            if isinstance(outcome, Exception):
                if not isinstance(outcome, Conflict):
                    self.cache.unsure(key)
                answers.append(outcome)
                continue
            self.cache.keep(key, outcome, ticket, self._sms)
            if self.replicas is not None and size > INLINE_MAX:
                self.replicas.copy(key)
            answers.append(outcome.version)
        return answers

    async def aclose(self) -> None:
        """Stop committing (commits still waiting fail with Unavailable, their keys unsure)."""
        await self._commits.aclose()

    def small_value(self, key: str, version: int) -> bytes | None:
        record = self._records.get(key)
        if record is None or record.version != version:
            return None
        return record.value

    async def current(self, key: str) -> ObjectInfo:
        record = self.cache.fresh(key)
        if record is None:
            ticket = self.cache.ticket(self._sms)
            record = await self._sms.lookup_object(key)
            self.cache.keep(key, record, ticket, self._sms)
        self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > _RECORDS_KEPT:
            self._records.popitem(last=False)
        return record_info(record)

    async def fetch(self, key: str, info: ObjectInfo, dest: Path) -> None:
        record = self._records.pop(key, None)
        if record is None or record.version != info.version:
            record = await self._sms.lookup_object(key)
        try:
            await self._fetch_from(record, key, dest)
        except Unavailable:
            # A cached record may not name holders added since: ask the index once more.
            fresh = await self._sms.lookup_object(key)
            if fresh.version != record.version or fresh.holders == record.holders:
                raise
            await self._fetch_from(fresh, key, dest)

    async def _fetch_from(self, record: ObjectRecord, key: str, dest: Path) -> None:
        others = [h for h in record.holders if h.node != self.node]
        failures = []
        for holder in others:
            if not holder.live:
                failures.append(f"{holder.node} is not live")
                continue
            try:
                # (`over`: the store may have placed a spare file at `dest` to write over)
                await self._transfer.fetch(holder.address, key, record.version, dest, over=True)
                return
            except Unavailable as exc:
                failures.append(f"{holder.node}: {exc}")
        if not others:
            raise Unavailable(f"object {key!r} (version {record.version}) has no holder")
        raise Unavailable(
            f"object {key!r} (version {record.version}) could not be read from any holder: "
            + "; ".join(failures)
        )

    async def hold(self, key: str, version: int) -> None:
        """Entered in the background: the reader need not wait a round trip for it (until
        it is, other nodes fetch from the holders they know)."""
        task = asyncio.get_running_loop().create_task(self._hold(key, version))
        self._holding.add(task)
        task.add_done_callback(self._holding.discard)

    async def _hold(self, key: str, version: int) -> None:
        try:
            await self._sms.hold_object(key, self.node, self.address, version)
        except SpearError as exc:  # (a cache nobody hears of is still a cache)
            logger.debug("copy of {} not entered in the index: {}", key, exc)

    async def change(
        self, key: str, change: str, count: int = 1, expected_version: int | None = None
    ) -> tuple[ObjectInfo, bool]:
        record, deleted = await self._sms.change_object(key, change, count, expected_version)
        return record_info(record), deleted

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        return [record_info(r) for r in await self._sms.list_object_records(prefix)]

    async def collect(
        self, grace_s: float, dropped: Sequence[tuple[str, int]] = ()
    ) -> builtins.list[str]:
        return [r.key for r in await self._sms.collect_objects(grace_s, dropped)]

    async def announce(
        self, held: Sequence[tuple[str, int, int]]
    ) -> tuple[builtins.list[str], builtins.list[tuple[str, int]]]:
        return await self._sms.announce_objects(self.node, self.address, held)


async def announce_held(store: ObjectStore, authority: ClusterObjects) -> None:
    """Tell the SMS what this node holds (after each registration); drop stale copies."""
    try:
        held = await store.held()
        stale, adopted = await authority.announce(held) if held else ([], [])
        for key in stale:
            await store.drop_local(key)
        versions = {key: version for key, version, _ in held}
        for key, version in adopted:
            await store.relabel(key, versions[key], version)
        if held:
            logger.info("announced {} object(s), {} stale copies dropped", len(held), len(stale))
    except SpearError as exc:  # the next registration tries again
        logger.warning("objects not announced to the SMS: {}", exc)


class Replicas:
    """Copies of each new value on `count - 1` other live members besides its writer
    (setting object_replicas): each is asked, in the background, to hold the current
    version (a prefetch: it pulls the value from a holder and enters itself in the index).
    Small values need none: the index holds them. A copy that fails is logged; the value
    still has its writer, and the next put tries again.

    Copies lost later are made again (`repairing`): when the live members change, each
    value this member holds that has fewer than `count` live holders gets copies on other
    live members, made by the first of its live holders by name (one member repairs each
    value; the others see it held enough by their next look)."""

    def __init__(
        self,
        sms: SmsClient,
        node: str,
        transfer: ObjectTransferClient,
        credentials: Credentials,
        count: int,
    ) -> None:
        self._sms = sms
        self._node = node
        self._transfer = transfer
        self._credentials = credentials
        self._count = count
        self._addresses: dict[tuple[str, str], str] = {}  # (node, incarnation) -> service
        self._copying: set[asyncio.Task[None]] = set()

    async def repairing(self, store: ObjectStore, every_s: float = REPAIR_EVERY_S) -> None:
        """Until cancelled: a repair pass whenever the live members changed since the last
        look (one died, or one joined where there was no room for a copy before), and
        every `REPAIR_LOOKS` looks in any case (a copy that failed is tried again)."""
        known: set[str] | None = None
        looks = 0
        while True:
            try:
                live = {n.name: n for n in await self._sms.nodes(live_only=True)}
                looks += 1
                if set(live) != known or looks >= REPAIR_LOOKS:
                    await self.repair(store, live)
                    looks = 0
                known = set(live)
            except SpearError as exc:  # (the SMS away: look again later)
                logger.debug("object copies not checked: {}", exc)
            await anyio.sleep(every_s)

    async def repair(self, store: ObjectStore, live: Mapping[str, NodeRecord]) -> int:
        """Copies made again of the values this member holds that have fewer than `count`
        live holders (`live`: the live members by name); how many were asked for."""
        asked = 0
        for key, version, size in await store.held():
            if size <= INLINE_MAX:
                continue  # (the index holds it)
            try:
                record = await self._sms.lookup_object(key)
            except NotFound:
                continue
            holders = set(record.holder_names())
            alive = sorted(holders & live.keys())
            if record.version != version or not alive or alive[0] != self._node:
                continue  # (not current here, or another live holder repairs it)
            missing = self._count - len(alive)
            if missing <= 0:
                continue
            for member in _ring(key, [n for n in live.values() if n.name not in holders])[:missing]:
                asked += 1
                await self._copy_to(key, member)
        return asked

    async def _copy_to(self, key: str, member: NodeRecord) -> None:
        """Ask `member` to hold the current version of `key` (it pulls it from a holder)."""
        try:
            address = await self._address(member)
            if address:
                await self._transfer.prefetch(address, key)
        except SpearError as exc:
            logger.warning("no copy of {} on {}: {}", key, member.name, exc)

    def copy(self, key: str) -> None:
        task = asyncio.get_running_loop().create_task(self._copy(key))
        self._copying.add(task)
        task.add_done_callback(self._copying.discard)

    async def _copy(self, key: str) -> None:
        try:
            others = [n for n in await self._sms.nodes(live_only=True) if n.name != self._node]
        except SpearError as exc:
            logger.warning("no copies of {} made: {}", key, exc)
            return
        for member in _ring(key, others)[: self._count - 1]:
            await self._copy_to(key, member)

    async def _address(self, record: NodeRecord) -> str:
        """The member's transfer service (from its NodeInfo, once per incarnation)."""
        known = self._addresses.get((record.name, record.incarnation))
        if known is None:
            from spear.node.client import Client

            async with Client(record.address, credentials=self._credentials) as client:
                known = (await client.node_info()).object_transfer_address
            self._addresses[(record.name, record.incarnation)] = known
        return known

    async def aclose(self) -> None:
        for task in list(self._copying):
            task.cancel()


def _ring(key: str, members: Sequence[NodeRecord]) -> list[NodeRecord]:
    """`members` in the order a key's copies go to: by name, from a place of the ring the
    key decides (so keys spread over the members)."""
    ordered = sorted(members, key=lambda n: n.name)
    start = zlib.crc32(key.encode()) % len(ordered) if ordered else 0
    return ordered[start:] + ordered[:start]


class NamespaceBytes:
    """A namespace's object-bytes quota (node/quotas.py) for puts through the transfer
    service, counted as `NamespacedNode` counts it for puts over gRPC."""

    def __init__(self, store: ObjectStore, quotas: QuotaFile) -> None:
        self._store = store
        self._quotas = quotas

    async def admit(self, namespace: str, key: str, size: int) -> None:
        quota = self._quotas.get(namespace)
        if quota is None or quota.object_bytes is None:
            return
        used = 0
        for info in await self._store.list(ns.stored_prefix(namespace, "")):
            if ns.user_key(namespace, info.key) not in (None, key):
                used += info.size
        if used + size > quota.object_bytes:
            raise ResourceExhausted(
                f"namespace {namespace!r} is at its quota of {quota.object_bytes} object"
                f" bytes ({used} used; this object is {size})"
            )


@contextlib.asynccontextmanager
async def sharing_objects(
    store: ObjectStore | None,
    sms: SmsClient,
    node: str,
    host: str,
    security: Security,
    credentials: Credentials,
    *,
    encrypt: bool = True,
    seal: bool = True,
    quotas: QuotaFile | None = None,
    replicas: int = 1,
) -> AsyncIterator[ClusterObjects | None]:
    """While inside, `store` is part of the cluster's object space: its copies served on
    `host` (a port of its own), its versions decided by the SMS."""
    if store is None:
        yield None
        return
    from spear.transport.object_transfer import ObjectTransferClient, ObjectTransferServer
    from spear.transport.serving import format_address

    admit = NamespaceBytes(store, quotas).admit if quotas is not None else None
    server = ObjectTransferServer(
        store, security, allow_plain=not encrypt, allow_seal=seal, admit_put=admit
    )
    transfer = ObjectTransferClient(credentials, encrypt=encrypt, seal=seal)
    address = await server.start(format_address(host, 0))
    authority = ClusterObjects(sms, node, address, transfer)
    if replicas > 1:
        authority.replicas = Replicas(sms, node, transfer, credentials, replicas)
    store.authority = authority
    loop = asyncio.get_running_loop()
    background = [loop.create_task(watch_index(sms, node, authority.cache))]
    if authority.replicas is not None:
        background.append(loop.create_task(authority.replicas.repairing(store)))
    try:
        yield authority
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        authority.cache.closed()
        store.authority = None
        await authority.aclose()
        if authority.replicas is not None:
            await authority.replicas.aclose()
        await server.close()
        await transfer.aclose()
