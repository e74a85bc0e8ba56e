"""The rules of cached object versions, each on its own (core/object_leases.py, the SMS's
side; node/object_cache.py, a member's): clocks are given, nothing sleeps. The same rules
against a real SMS and real members: tests/cluster/test_object_version_cache.py."""

# ruff: noqa: F811  (the kv fixture imported from test_sms.py is used as an argument)
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from test_sms import kv  # noqa: F401 - the KV fixture (LevelDB and etcd)

from spear.core.object_index import ObjectRecord
from spear.core.object_leases import LEASE_KEY, LEASE_S, ObjectLeases, lease_from
from spear.errors import InvalidArgument
from spear.node.object_cache import VersionCache

if TYPE_CHECKING:
    from spear.store.kv import KV


class _Sms:
    """What the cache reads of an SmsClient: where calls go, and how often that moved."""

    address = "sms:1"
    failovers = 0


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _record(version: int) -> ObjectRecord:
    return ObjectRecord(key="k", version=version, size=1)


def _leased_cache() -> tuple[VersionCache, _Clock, Any]:
    clock = _Clock()
    cache = VersionCache(clock)
    cache.opened("sms:1")
    cache.renewed(clock.now, 2.0)
    return cache, clock, _Sms()


def test_a_kept_record_is_served_only_while_the_lease_runs() -> None:
    cache, clock, sms = _leased_cache()
    cache.keep("k", _record(5), cache.ticket(sms), sms)
    assert cache.fresh("k") == _record(5)
    clock.now += 2.0  # (the lease counts from when the ping was sent)
    assert cache.fresh("k") is None


def test_a_lease_that_lapsed_drops_the_cache_even_once_renewed() -> None:
    # (meanwhile the SMS acknowledged writes without waiting for this member)
    cache, clock, sms = _leased_cache()
    cache.keep("k", _record(5), cache.ticket(sms), sms)
    in_flight = cache.ticket(sms)
    clock.now += 2.5
    cache.renewed(clock.now - 0.1, 2.0)
    assert cache.fresh("k") is None
    cache.keep("k", _record(5), in_flight, sms)  # (read before the lapse: maybe stale)
    assert cache.fresh("k") is None
    cache.keep("k", _record(6), cache.ticket(sms), sms)
    assert cache.fresh("k") == _record(6)
    clock.now += 1.0
    cache.renewed(clock.now, 2.0)  # renewed in time: kept
    assert cache.fresh("k") == _record(6)


def test_an_answer_older_than_an_invalidation_is_not_kept() -> None:
    cache, _, sms = _leased_cache()
    ticket = cache.ticket(sms)  # a lookup starts
    cache.touch("k")  # an invalidation of k arrives while it is in flight
    cache.keep("k", _record(5), ticket, sms)
    assert cache.fresh("k") is None
    cache.keep("k", _record(6), cache.ticket(sms), sms)  # a lookup started after it
    assert cache.fresh("k") == _record(6)


def test_a_slower_answer_never_replaces_a_newer_version() -> None:
    cache, _, sms = _leased_cache()
    slow = cache.ticket(sms)
    cache.keep("k", _record(7), cache.ticket(sms), sms)
    cache.keep("k", _record(6), slow, sms)
    assert cache.fresh("k") == _record(7)


def test_nothing_is_kept_outside_a_session_or_from_another_sms() -> None:
    clock = _Clock()
    cache, sms = VersionCache(clock), _Sms()
    assert cache.ticket(sms) is None  # no lease granted yet: nothing to keep
    cache.opened("sms:1")
    cache.renewed(clock.now, 2.0)
    ticket = cache.ticket(sms)
    cache.closed()  # the watch broke while the lookup was in flight
    cache.opened("sms:1")
    cache.renewed(clock.now, 2.0)
    cache.keep("k", _record(5), ticket, sms)
    assert cache.fresh("k") is None
    moved = _Sms()
    ticket = cache.ticket(moved)
    moved.failovers = 1  # the call went elsewhere: the watched SMS did not note it
    cache.keep("k", _record(5), ticket, moved)
    assert cache.fresh("k") is None


def test_forgotten_invalidations_still_refuse_answers_in_flight() -> None:
    cache, _, sms = _leased_cache()
    ticket = cache.ticket(sms)
    cache.touch("k")
    for i in range(5000):  # (more keys than it remembers)
        cache.touch(f"other-{i}")
    cache.keep("k", _record(5), ticket, sms)
    assert cache.fresh("k") is None


def test_a_pushed_record_is_served_as_current() -> None:
    cache, _, sms = _leased_cache()
    cache.keep("k", _record(5), cache.ticket(sms), sms)
    in_flight = cache.ticket(sms)
    cache.pushed("k", _record(7))
    assert cache.fresh("k") == _record(7)
    cache.keep("k", _record(5), in_flight, sms)  # (an answer older than the push)
    assert cache.fresh("k") == _record(7)


def test_a_late_push_of_an_older_version_is_never_kept() -> None:
    # Two quick commits' pushes may arrive out of order: the older must not win.
    cache, clock, _ = _leased_cache()
    cache.pushed("k", _record(7))
    cache.pushed("k", _record(6))
    assert cache.fresh("k") is None  # (dropped: asking the SMS again is always safe)
    cache.pushed("k", _record(8))
    assert cache.fresh("k") == _record(8)
    # Not after a lapsed lease either (the push may still be on its way on this stream),
    clock.now += 5.0
    cache.renewed(clock.now, 2.0)
    cache.pushed("k", _record(6))
    assert cache.fresh("k") is None
    # nor once the newer version was forgotten among many other keys' pushes.
    for i in range(5000):
        cache.pushed(f"other-{i}", ObjectRecord(key=f"other-{i}", version=100 + i, size=1))
    cache.pushed("k", _record(50))
    assert cache.fresh("k") is None
    cache.pushed("k", _record(10_000))
    assert cache.fresh("k") == _record(10_000)


def test_a_late_push_never_replaces_what_this_member_wrote_since() -> None:
    # node-3's commit (6) is pushed late, after this member's own commit (7) was answered
    # and dropped again by another change (a reference released: no record pushed).
    cache, _, sms = _leased_cache()
    cache.touch("k")  # (a commit starts)
    cache.keep("k", _record(7), cache.ticket(sms), sms)
    cache.touch("k")
    cache.pushed("k", _record(6))
    assert cache.fresh("k") is None


def test_an_older_push_that_beat_this_members_own_commit_is_dropped_by_its_answer() -> None:
    # The third race of examples/counter on three nodes: this member commits 15 while
    # node-2's commit of 14 is pushed to it; the push arrives first (and, as a change of
    # the key, keeps the commit's answer from being cached). The SMS does not tell a
    # writer of its own commit, so 14 would stay current here after 15 was acknowledged.
    cache, _, sms = _leased_cache()
    cache.touch("k")  # (this member's commit starts)
    ticket = cache.ticket(sms)
    cache.pushed("k", _record(14))
    assert cache.fresh("k") == _record(14)
    cache.keep("k", _record(15), ticket, sms)  # the answer: 15, not kept (see above)
    assert cache.fresh("k") is None  # and 14 is not current any more
    cache.pushed("k", _record(14))  # nor when pushed once more, late
    assert cache.fresh("k") is None
    cache.keep("k", _record(15), cache.ticket(sms), sms)  # a lookup after it is kept
    assert cache.fresh("k") == _record(15)
    cache.keep("k", _record(14), ticket, sms)  # (an older answer drops nothing newer)
    assert cache.fresh("k") == _record(15)


def test_after_a_commit_whose_answer_was_lost_no_push_of_its_key_is_kept() -> None:
    cache, _, sms = _leased_cache()
    cache.pushed("k", _record(14))
    cache.unsure("k")  # a commit's call failed: 15 may have been written, unheard
    assert cache.fresh("k") is None
    cache.pushed("k", _record(16))
    assert cache.fresh("k") is None  # (only a lookup says what is current now)
    cache.keep("k", _record(16), cache.ticket(sms), sms)
    assert cache.fresh("k") == _record(16)
    cache.pushed("other", ObjectRecord(key="other", version=17, size=1))
    assert cache.fresh("other") == ObjectRecord(key="other", version=17, size=1)
    # That answer named k's version: pushes of k are kept again, older ones still refused,
    cache.pushed("k", _record(16))
    assert cache.fresh("k") is None
    cache.pushed("k", _record(18))
    assert cache.fresh("k") == _record(18)
    # and forgetting k among many other keys' versions refuses nothing newer.
    for i in range(5000):
        cache.pushed(f"many-{i}", ObjectRecord(key=f"many-{i}", version=100 + i, size=1))
    cache.pushed("k", _record(10_000))
    assert cache.fresh("k") == _record(10_000)


def test_an_answer_to_a_lookup_older_than_the_lost_commit_leaves_it_unsure() -> None:
    cache, _, sms = _leased_cache()
    before = cache.ticket(sms)  # a lookup starts, then a commit's answer is lost
    cache.unsure("k")
    cache.keep("k", _record(14), before, sms)  # (it may predate that commit)
    cache.pushed("k", _record(15))
    assert cache.fresh("k") is None


def test_nothing_pushed_is_kept_outside_a_session() -> None:
    clock = _Clock()
    cache = VersionCache(clock)
    cache.pushed("k", _record(5))
    cache.opened("sms:1")
    cache.renewed(clock.now, 2.0)
    assert cache.fresh("k") is None


async def test_a_write_waits_for_the_members_that_may_cache_its_key(kv: KV) -> None:
    leases = ObjectLeases(lease_s=30.0)
    reader = leases.watch("node-2")
    await leases.renew(kv, reader, 1)
    assert await reader.outbox.get() == (1, 30.0, 0, (), None)
    assert float((await kv.get(LEASE_KEY)).value) > 0  # (for a restarted SMS)
    leases.noted("node-2", "k")  # node-2 looked k up
    leases.noted("node-3", "k")  # (never leased: it caches nothing)
    write = asyncio.ensure_future(leases.changed(kv, "k", writer="node-1"))
    assert await reader.outbox.get() == (0, 0.0, 1, ("k",), None)
    await asyncio.sleep(0)
    assert not write.done()  # not acknowledged before node-2 applied it
    reader.acked(1)
    await asyncio.wait_for(write, 5)
    # node-2 is no longer noted for k: the next write does not wait for it.
    await asyncio.wait_for(leases.changed(kv, "k"), 5)
    assert reader.outbox.empty()


async def test_a_silent_member_is_waited_for_until_its_lease_ends(kv: KV) -> None:
    leases = ObjectLeases(lease_s=0.05)
    member = leases.watch("node-2")
    await leases.renew(kv, member, 1)
    leases.noted("node-2", "k")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(leases.changed(kv, "k"), 5)  # never acked
    assert loop.time() - started >= 0.05  # (its lease, at least)


def test_the_lease_setting_is_read_and_bounded() -> None:
    assert lease_from({}) == LEASE_S
    assert lease_from({"object_lease_s": 5}) == 5.0
    for bad in (0.1, 61, "soon"):
        with pytest.raises(InvalidArgument, match="^setting object_lease_s must be seconds"):
            lease_from({"object_lease_s": bad})


async def test_a_commit_whose_newer_one_was_announced_goes_as_a_plain_invalidation(
    kv: KV,
) -> None:
    # Two commits of k reach `changed` in the wrong order (each runs after its own
    # compare-and-swap). node-2 was not noted when the newer one was announced; it is
    # noted before the older one's turn (its own commit lost the compare-and-swap, so it
    # learnt nothing). Caching the older record would serve it after the newer write
    # was acknowledged.
    leases = ObjectLeases(lease_s=30.0)
    reader = leases.watch("node-2")
    await leases.renew(kv, reader, 1)
    await reader.outbox.get()
    await asyncio.wait_for(leases.changed(kv, "k", record=_record(15)), 5)
    assert reader.outbox.empty()
    leases.noted("node-2", "k")
    late = asyncio.ensure_future(leases.changed(kv, "k", record=_record(14)))
    _, _, seq, keys, record = await asyncio.wait_for(reader.outbox.get(), 5)
    assert (keys, record) == (("k",), None)
    reader.acked(seq)
    await asyncio.wait_for(late, 5)
    # The newest still goes with its record, and node-2 stays noted for it.
    leases.noted("node-2", "k")
    newest = asyncio.ensure_future(leases.changed(kv, "k", record=_record(16)))
    _, _, seq, _, record = await asyncio.wait_for(reader.outbox.get(), 5)
    assert record == _record(16)
    reader.acked(seq)
    await asyncio.wait_for(newest, 5)


# -- the watch that keeps a member's lease (node/object_cache.py: watch_index, _Watch) ----
# A scripted SMS answers the watch's requests; the cache's clock is given and anyio's
# sleep only records what was asked and yields, so each rule is exact and nothing waits.

L = 2.0**-4  # a lease (and its quarter) exact in binary: the silence bound is exact too


class _ScriptedSms(_Sms):
    """watch_objects as an SmsClient's: requests (node, ping, ack) in, events out, one
    stream per call. `answer(request)` gives the events a request brings (a list), or
    None to end the stream; `refuse` makes the next calls fail before any event."""

    def __init__(self, answer: Any, *, refuse: int = 0) -> None:
        self.answer = answer
        self.refuse = refuse
        self.streams: list[list[tuple[str, int, int]]] = []

    def watch_objects(self, requests: Any) -> tuple[str, Any]:
        sent: list[tuple[str, int, int]] = []
        self.streams.append(sent)
        refused = self.refuse > 0
        self.refuse -= 1

        async def events() -> Any:
            if refused:
                raise ConnectionError("refused")
            async for request in requests:
                sent.append(request)
                answers = self.answer(request)
                if answers is None:
                    return
                for event in answers:
                    yield event

        return self.address, events()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Each anyio.sleep asked for, answered at once (one turn of the loop)."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(anyio, "sleep", sleep)
    return asked


async def test_a_watch_pings_every_quarter_lease_and_ends_after_three_silent_leases(
    sleeps: list[float],
) -> None:
    from spear.node.object_cache import _Watch

    clock = _Clock()
    cache = VersionCache(clock)

    def answer(request: tuple[str, int, int]) -> list[Any]:
        _, ping, _ = request
        if ping == 1:
            return [(1, L, 0, (), None)]  # only the first ping is answered: a lease of L
        clock.now += L / 4  # (each later ping a quarter lease later, unanswered)
        return []

    sms = _ScriptedSms(answer)
    watch = _Watch(sms, "node-1", cache)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        await watch.run()  # (ends by itself: the SMS fell silent)
    pings = [ping for _, ping, _ in sms.streams[0]]
    # Answered at 100.0; silent once more than 3 leases passed: the 14th ping is sent at
    # exactly 3 leases (12 quarters after the answer), the 15th never.
    assert pings == list(range(1, 15)) and watch.granted
    assert set(sleeps) == {L / 4} and len(sleeps) == 14
    assert all(node == "node-1" for node, _, _ in sms.streams[0])
    # The lease counted from when ping 1 was sent: the cache served until 100 + L.
    clock.now = 100.0 + L - 0.001
    cache._records["k"] = _record(1)  # (as `keep` would)
    assert cache.fresh("k") == _record(1)
    clock.now = 100.0 + L
    assert cache.fresh("k") is None


async def test_a_pong_without_a_lease_means_the_first_lease_and_acks_follow_events(
    sleeps: list[float],
) -> None:
    from spear.node.object_cache import _FIRST_LEASE_S, _Watch

    clock = _Clock()
    cache = VersionCache(clock)
    pushed = ObjectRecord(key="k", version=7, size=1)

    def answer(request: tuple[str, int, int]) -> list[Any] | None:
        _, ping, ack = request
        if ping == 1:  # a pong naming no lease, then a push and a plain invalidation
            return [(1, 0.0, 0, (), None), (0, 0.0, 5, ("k",), pushed), (0, 0.0, 6, ("j",), None)]
        return None if ack == 6 else []  # (the stream ends once both are acknowledged)

    sms = _ScriptedSms(answer)
    watch = _Watch(sms, "node-1", cache)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        await watch.run()
    assert sms.streams[0] == [("node-1", 1, 0), ("node-1", 0, 5), ("node-1", 0, 6)]
    assert watch._lease_s == _FIRST_LEASE_S
    assert cache.fresh("k") == pushed  # (the push was applied before its ack)
    clock.now += _FIRST_LEASE_S
    assert cache.fresh("k") is None


async def test_a_broken_watch_is_opened_again_after_a_doubling_backoff(
    sleeps: list[float],
) -> None:
    from spear.node.object_cache import _FIRST_LEASE_S, watch_index

    clock = _Clock()
    cache = VersionCache(clock)
    granted = {"count": 0}

    def answer(request: tuple[str, int, int]) -> list[Any] | None:
        if request[1] == 1 and granted["count"] == 0:
            granted["count"] += 1
            return [(1, L, 0, (), None)]  # the 8th stream is granted a lease, then ends
        return None

    sms = _ScriptedSms(answer, refuse=7)
    backoffs: list[float] = []
    pings = (L / 4, _FIRST_LEASE_S / 4)  # (each stream's pinger: before and after a lease)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_index, sms, "node-1", cache)
            while len(backoffs := [s for s in sleeps if s not in pings]) < 11:
                await asyncio.sleep(0)
            tg.cancel_scope.cancel()
    # Doubling from 0.1 to at most 2 s while refused; from 0.1 again after a granted
    # watch (which ended: its session closed), then doubling again.
    assert backoffs[:11] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 0.1, 0.2, 0.4, 0.8]
    assert cache.ticket(sms) is None  # (closed: nothing cached is served)


def test_past_the_bound_of_unsure_keys_no_push_is_kept_for_any_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spear.node import object_cache

    monkeypatch.setattr(object_cache, "_UNSURE_KEPT", 2)
    cache, _, _ = _leased_cache()
    cache.unsure("a")
    cache.unsure("b")  # (at the bound: other keys' pushes are still kept)
    c = ObjectRecord(key="c", version=5, size=1)
    cache.pushed("c", c)
    assert cache.fresh("c") == c
    cache.unsure("d")  # past it: one unsure key forgotten, so no push can be trusted
    for key, version in (("e", 1000), ("a", 2**62), ("c", 6)):
        cache.pushed(key, ObjectRecord(key=key, version=version, size=1))
        assert cache.fresh(key) is None, key


# -- the cache's own bounds and edges (its mutation run's survivors) ---------------------


def _rec(key: str, version: int, refs: int = 0) -> ObjectRecord:
    return ObjectRecord(key=key, version=version, size=1, refs=refs)


def test_an_answer_without_a_session_or_from_an_older_one_is_not_kept() -> None:
    cache, _, sms = _leased_cache()
    cache.keep("k", _record(5), None, sms)  # (a lookup started with no session)
    assert cache.fresh("k") is None
    ticket = cache.ticket(sms)
    cache.closed()
    cache.opened("sms:1")  # the same SMS, a new session: the old ticket is refused
    cache.renewed(cache.clock(), 2.0)
    cache.keep("k", _record(5), ticket, sms)
    assert cache.fresh("k") is None
    cache.keep("k", _record(5), cache.ticket(sms), sms)
    assert cache.fresh("k") == _record(5)


def test_a_lease_renewed_exactly_at_its_end_had_lapsed() -> None:
    cache, clock, sms = _leased_cache()  # leased until 102.0
    cache.keep("k", _record(5), cache.ticket(sms), sms)
    clock.now = 102.0
    cache.renewed(101.5, 2.0)  # (answered at the very end: the SMS may not have waited)
    assert cache.fresh("k") is None
    cache.keep("k", _record(5), cache.ticket(sms), sms)
    assert cache.fresh("k") == _record(5)  # (leased again, until 103.5)
    clock.now = 103.4
    cache.renewed(103.3, 2.0)  # renewed before its end: nothing is forgotten
    assert cache.fresh("k") == _record(5)


def test_a_closed_watch_serves_nothing_and_every_hit_is_counted() -> None:
    cache, _, sms = _leased_cache()
    cache.keep("k", _record(5), cache.ticket(sms), sms)
    assert [cache.fresh("k") for _ in range(3)] == [_record(5)] * 3 and cache.hits == 3
    assert cache.fresh("other") is None and cache.hits == 3
    cache.closed()
    assert cache.fresh("k") is None and cache.ticket(sms) is None


def test_a_push_of_the_first_version_is_kept() -> None:
    cache, _, _ = _leased_cache()
    cache.pushed("k", _record(1))
    assert cache.fresh("k") == _record(1)


def test_an_answer_of_the_version_held_replaces_it_and_a_refused_one_leaves_it() -> None:
    cache, _, sms = _leased_cache()
    stale = cache.ticket(sms)
    cache.touch("k")  # (a change since `stale` was taken)
    cache.keep("k", _rec("k", 5), cache.ticket(sms), sms)
    cache.keep("k", _rec("k", 5, refs=1), cache.ticket(sms), sms)  # (its refs moved)
    assert cache.fresh("k") == _rec("k", 5, refs=1)
    cache.keep("k", _rec("k", 5), stale, sms)  # refused: the record held stays
    assert cache.fresh("k") == _rec("k", 5, refs=1)


def test_the_newest_version_known_never_goes_back() -> None:
    cache, _, sms = _leased_cache()
    cache.pushed("k", _record(10))
    cache.keep("k", _record(8), cache.ticket(sms), sms)  # (an older answer, late)
    cache.pushed("k", _record(9))  # older than 10: not kept, whatever came in between
    assert cache.fresh("k") is None  # (a push drops what was held, kept or not)


def test_the_bounds_keep_exactly_their_size_forgetting_the_oldest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spear.node import object_cache

    for name in ("_KEPT", "_NEWEST_KEPT", "_TOUCHED_KEPT"):
        monkeypatch.setattr(object_cache, name, 2)
    cache, _, sms = _leased_cache()
    # Records: two kept (by answers, then by pushes); a third lets the oldest go.
    cache.keep("a", _rec("a", 5), cache.ticket(sms), sms)
    cache.keep("b", _rec("b", 6), cache.ticket(sms), sms)
    assert cache.fresh("a") == _rec("a", 5) and cache.fresh("b") == _rec("b", 6)
    cache.keep("c", _rec("c", 7), cache.ticket(sms), sms)  # (b was used last: a goes)
    assert cache.fresh("c") == _rec("c", 7)
    assert [cache.fresh(k) is not None for k in "ab"] == [False, True]  # (c, b: b last)
    cache.pushed("d", _rec("d", 8))  # (c goes)
    assert cache.fresh("d") == _rec("d", 8) and cache.fresh("c") is None
    assert cache.fresh("b") == _rec("b", 6)
    # Newest versions: two remembered; the oldest forgotten raises the floor to its own
    # version only (a later push above it is kept).
    cache2, _, _ = _leased_cache()
    for key, version in (("a", 5), ("b", 6), ("c", 7)):
        cache2.pushed(key, _rec(key, version))
    cache2.pushed("a", _rec("a", 6))
    assert cache2.fresh("a") == _rec("a", 6)
    cache2.pushed("e", _rec("e", 5))  # (at the floor: may be older than what was known)
    assert cache2.fresh("e") is None
    # Touched keys: two remembered; a lookup that started after the one forgotten is
    # still kept for an untouched key.
    cache3, _, sms3 = _leased_cache()
    cache3.touch("x")
    after_x = cache3.ticket(sms3)
    cache3.touch("y")
    cache3.touch("z")  # (x's change forgotten: the floor is x's, not z's)
    cache3.keep("w", _rec("w", 3), after_x, sms3)
    assert cache3.fresh("w") == _rec("w", 3)
    cache3.keep("y", _rec("y", 3), after_x, sms3)  # (y changed after it: refused)
    assert cache3.fresh("y") is None


async def test_a_watch_never_answered_ends_after_three_first_leases(
    sleeps: list[float],
) -> None:
    from spear.node.object_cache import _FIRST_LEASE_S, _Watch

    clock = _Clock()
    cache = VersionCache(clock)

    def answer(request: tuple[str, int, int]) -> list[Any]:
        if request[1] > 1:
            clock.now += _FIRST_LEASE_S / 4
        return []

    sms = _ScriptedSms(answer)
    watch = _Watch(sms, "node-1", cache)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        await watch.run()
    assert [ping for _, ping, _ in sms.streams[0]] == list(range(1, 15))
    assert not watch.granted and cache.ticket(sms) is None


async def test_a_late_answer_to_an_older_ping_renews_nothing_and_breaks_nothing(
    sleeps: list[float],
) -> None:
    from spear.node.object_cache import _Watch

    clock = _Clock()
    cache = VersionCache(clock)

    def answer(request: tuple[str, int, int]) -> list[Any] | None:
        ping = request[1]
        if ping == 1:
            return [(1, L, 0, (), None)]
        if ping == 3:  # ping 3 answered, then ping 2's answer, late
            clock.now += 1.0
            return [(3, L, 0, (), None), (2, L, 0, (), None)]
        return None if ping == 4 else []

    sms = _ScriptedSms(answer)
    watch = _Watch(sms, "node-1", cache)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        await watch.run()  # (ended by the SMS at ping 4, not by an error)
    assert [ping for _, ping, _ in sms.streams[0]] == [1, 2, 3, 4]
    cache._records["k"] = _record(1)  # (as `keep` would)
    clock.now = 100.0 + L - 0.001  # leased from ping 1's sending (at 100.0) and no later
    assert cache.fresh("k") == _record(1)
    clock.now = 100.0 + L
    assert cache.fresh("k") is None
