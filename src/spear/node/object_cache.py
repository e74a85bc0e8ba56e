"""A member's cache of current object versions (docs/objects.md, "Cached versions").

A get on a member first needs the key's current version, an SMS round trip. While the
member watches the index (WatchObjects, core/object_leases.py) and its lease runs, a
version it looked up (or wrote) stays current until the SMS says otherwise, so a get of
it asks no one. The rules that keep it correct:

- a record is kept only from an answer of the SMS the watch is open to, in the session
  (one watch stream, after its first lease) the lookup started in, and only if no
  invalidation of that key arrived since the lookup started (the answer may be older);
- a record is served only while the lease runs: renewed by pings the SMS answers, it
  counts from when the ping was sent, so it ends before the SMS's view of it;
- every invalidation is applied before it is acknowledged; a broken or silent watch, or a
  lease that lapsed (even if renewed since), drops everything (the member asks the SMS
  again, as before): the SMS acknowledges writes without waiting for a lapsed lease;
- a commit's invalidation carries the key's new record, kept as current (a get of a
  version written elsewhere then asks no one) unless a newer version of the key is known
  here (pushed, written or looked up, whether that answer was kept or not): two quick
  commits' pushes may arrive out of order, even after this member's own later commit was
  answered, and versions (the KV's revisions) only grow;
- an answer of the SMS drops any older record of its key, kept or not: a member is not
  told of its own commits (the answer carries the record), so an older commit's push that
  arrived while the answer was on its way would otherwise stay current; a commit whose
  answer was lost (it may have been made) stops pushes of the key being kept until
  an SMS answer to a lookup or commit started since names the key's version.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from spear._logging import logger

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from spear.core.object_index import ObjectRecord
    from spear.transport.sms_client import SmsClient

_KEPT = 4096  # records cached
_TOUCHED_KEPT = 4096  # keys' latest invalidations remembered for lookups in flight
_NEWEST_KEPT = 4096  # keys' newest versions known, remembered against late pushes
_UNSURE_KEPT = 4096  # keys whose commit's answer was lost, until an answer names them
_FIRST_LEASE_S = 2.0  # until the SMS says how long its leases are


@dataclass(frozen=True, slots=True)
class Ticket:
    """Taken when a lookup starts: its answer may be kept if nothing moved since."""

    session: int
    seq: int
    address: str
    failovers: int


class VersionCache:
    """Records of current versions, valid while the watch's lease runs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._records: OrderedDict[str, ObjectRecord] = OrderedDict()
        self._touched: OrderedDict[str, int] = OrderedDict()  # key -> seq of its last change
        self._floor = 0  # the seq of every change forgotten from `_touched`
        self._newest: OrderedDict[str, int] = OrderedDict()  # key -> newest version known
        self._newest_floor = 0  # the newest version forgotten from `_newest`
        self._unsure: OrderedDict[str, None] = OrderedDict()  # no push kept (see `unsure`)
        self._seq = 0
        self._session = 0
        self._address: str | None = None  # the SMS a live session watches
        self._expiry = 0.0
        self.hits = 0  # gets answered here (tests and benchmarks read them)

    def fresh(self, key: str) -> ObjectRecord | None:
        """The current record of `key` if cached and the lease runs."""
        if self._address is None or self.clock() >= self._expiry:
            return None
        record = self._records.get(key)
        if record is not None:
            self._records.move_to_end(key)
            self.hits += 1
        return record

    def ticket(self, sms: SmsClient) -> Ticket | None:
        if self._address is None:
            return None
        return Ticket(self._session, self._seq, sms.address, sms.failovers)

    def keep(self, key: str, record: ObjectRecord, ticket: Ticket | None, sms: SmsClient) -> None:
        """Cache `record`, answered to a lookup or commit that started at `ticket`.

        Kept or not, the answer says the key reached `record.version`: a record older
        than that is dropped, and a push older than that refused later. (A member's own
        commit is not pushed to it: if its answer is not kept, because a push of an older
        commit arrived while it was on its way, that push must not stay current.)"""
        self._outdated(key, record.version)
        if (
            ticket is None
            or ticket.session != self._session
            or ticket.address != self._address
            or (sms.address, sms.failovers) != (ticket.address, ticket.failovers)
            or max(self._floor, self._touched.get(key, 0)) > ticket.seq
        ):
            return
        self._unsure.pop(key, None)  # (asked after that commit: its answer covers it)
        held = self._records.get(key)
        if held is not None and held.version > record.version:
            return  # (a slower answer of an older version)
        self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > _KEPT:
            self.touch(next(iter(self._records)))

    def pushed(self, key: str, record: ObjectRecord) -> None:
        """`key` changed to `record` (a commit's invalidation, with its new record)."""
        self.touch(key)
        if self._address is None or key in self._unsure:
            return
        if record.version <= max(self._newest_floor, self._newest.get(key, 0)):
            return  # (a late push: a newer version is known, or may have been)
        self._known(key, record.version)
        self._records[key] = record
        while len(self._records) > _KEPT:
            self.touch(next(iter(self._records)))

    def unsure(self, key: str) -> None:
        """A commit of `key` from here may or may not have been made (its answer was
        lost): no pushed record of it is kept until an answer of the SMS to a lookup or
        commit started since names its version (and so refuses older pushes)."""
        self.touch(key)
        self._unsure[key] = None
        self._unsure.move_to_end(key)
        if len(self._unsure) > _UNSURE_KEPT:  # (forgetting one is unsafe: no push kept)
            self._unsure.popitem(last=False)
            self._newest_floor = max(self._newest_floor, 2**63)

    def _outdated(self, key: str, version: int) -> None:
        """`key` reached `version`: drop an older record; refuse older pushes."""
        held = self._records.get(key)
        if held is not None and held.version < version:
            del self._records[key]
        self._known(key, version)

    def _known(self, key: str, version: int) -> None:
        self._newest[key] = max(version, self._newest.get(key, 0))
        self._newest.move_to_end(key)
        while len(self._newest) > _NEWEST_KEPT:
            _, forgotten = self._newest.popitem(last=False)
            self._newest_floor = max(self._newest_floor, forgotten)

    def touch(self, key: str) -> None:
        """`key` changed (or is about to): drop it; lookups already in flight keep nothing."""
        self._seq += 1
        self._records.pop(key, None)
        self._touched[key] = self._seq
        self._touched.move_to_end(key)
        while len(self._touched) > _TOUCHED_KEPT:
            _, seq = self._touched.popitem(last=False)
            self._floor = max(self._floor, seq)

    def renewed(self, sent_at: float, lease_s: float) -> None:
        if self.clock() >= self._expiry:
            # The lease lapsed: meanwhile the SMS may have acknowledged writes without
            # hearing from us. What was cached, or is being looked up, may be stale.
            self._forget()
        self._expiry = max(self._expiry, sent_at + lease_s)

    def opened(self, address: str) -> None:
        """A new session: the first lease of a watch of the SMS at `address`."""
        self._end()
        self._address = address

    def closed(self) -> None:
        if self._address is not None:
            self._end()

    def _end(self) -> None:
        self._forget()
        self._address = None
        self._expiry = 0.0

    def _forget(self) -> None:
        self._session += 1
        self._seq += 1
        self._floor = self._seq
        self._touched.clear()
        self._records.clear()  # (`_newest` stays: a late push may still come on this stream)


async def watch_index(sms: SmsClient, node: str, cache: VersionCache) -> None:
    """Keep a watch of the object index open for `cache` (until cancelled)."""
    backoff = 0.1
    while True:
        try:
            watch = _Watch(sms, node, cache)
            await watch.run()
            if watch.granted:
                backoff = 0.1
        except Exception as exc:  # (an SMS away or restarting: gets ask it, as before)
            logger.debug("object index watch ended: {}", exc)
        finally:
            cache.closed()
        await anyio.sleep(backoff)
        backoff = min(2 * backoff, 2.0)


class _Watch:
    """One watch stream, until it breaks or falls silent."""

    def __init__(self, sms: SmsClient, node: str, cache: VersionCache) -> None:
        self._sms = sms
        self._node = node
        self._cache = cache
        self._outbox: asyncio.Queue[tuple[str, int, int] | None] = asyncio.Queue()
        self._sent: dict[int, float] = {}  # ping -> when it was sent
        self._answered = cache.clock()  # when the SMS last answered a ping
        self._lease_s = _FIRST_LEASE_S
        self.granted = False  # whether the SMS granted a lease on it

    async def _requests(self) -> AsyncIterator[tuple[str, int, int]]:
        while (request := await self._outbox.get()) is not None:
            yield request

    def _ping(self, number: int) -> None:
        self._sent[number] = self._cache.clock()
        self._outbox.put_nowait((self._node, number, 0))

    async def _pinger(self, scope: anyio.CancelScope) -> None:
        number = 1
        while True:
            await anyio.sleep(self._lease_s / 4)
            if self._cache.clock() - self._answered > 3 * self._lease_s:
                logger.debug("object index watch fell silent; opening another")
                scope.cancel()
                return
            number += 1
            self._ping(number)

    async def run(self) -> None:
        address, events = self._sms.watch_objects(self._requests())
        self._ping(1)
        try:
            async with anyio.create_task_group() as tg, contextlib.aclosing(events):
                tg.start_soon(self._pinger, tg.cancel_scope)
                async for pong, lease_s, seq, keys, record in events:
                    if pong:
                        self._renewed(address, pong, lease_s)
                    if seq:  # (applied before it is acknowledged)
                        if record is not None and keys == (record.key,):
                            self._cache.pushed(record.key, record)
                        else:
                            for key in keys:
                                self._cache.touch(key)
                        self._outbox.put_nowait((self._node, 0, seq))
                tg.cancel_scope.cancel()
        finally:
            self._outbox.put_nowait(None)  # (ends the requests' sender)

    def _renewed(self, address: str, pong: int, lease_s: float) -> None:
        sent_at = self._sent.pop(pong, None)
        for older in [n for n in self._sent if n < pong]:
            del self._sent[older]
        self._answered = self._cache.clock()
        self._lease_s = lease_s or _FIRST_LEASE_S
        if not self.granted:
            self._cache.opened(address)
            self.granted = True
        if sent_at is not None:
            self._cache.renewed(sent_at, self._lease_s)
