"""Leases and leader election on etcd: etcd's own recipe, served by etcd itself.

etcd ships the election recipe as a gRPC service (v3election: Campaign, Leader, Observe,
Resign, Proclaim), the same code as its Go client's `concurrency.Election`: each
candidate writes a key under the election's prefix, attached to its lease; the key with
the lowest create revision leads; the others wait for the keys before theirs to go.
Nothing here decides who leads. What the client must do is keep its lease alive, and
stop acting as leader as soon as it cannot be sure the lease still stands:

    async with Lease.keep(kv.client, ttl_s=5) as lease:
        async with Candidate(kv.client, "sms", b"10.0.0.1:7000", lease) as me:
            await me.elected.wait()    # leading until me.deposed is set
    ...
    await leader_value(kv.client, "sms")   # who leads, for followers

A leader whose process dies stops refreshing its lease; etcd deletes its key when the TTL
runs out and the next candidate's Campaign returns: a takeover within about one TTL.
A leader that cannot reach etcd steps down when its last refresh is a TTL old (less a
margin), before etcd can elect anyone else.
"""

from __future__ import annotations

import contextlib
import enum
import time
from typing import TYPE_CHECKING, Any, Self

import anyio
from loguru import logger

from spear.errors import InvalidArgument, SpearError, Unavailable
from spear.store._etcd_gen import v3election_pb2 as epb

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import TaskGroup

    from spear.store._etcd_client import EtcdClient

_ELECTIONS = "spear/election/"
# Step down this much before the lease could have expired on etcd's side (clock rates
# differ a little, and the refresh that would have saved it may be in flight).
_SAFETY_MARGIN = 0.2


def election_name(name: str) -> bytes:
    """The election's prefix in etcd (its candidates' keys are `<prefix>/<lease id>`)."""
    if not name or "/" in name:
        raise InvalidArgument(f"an election name is one non-empty word, not {name!r}")
    return f"{_ELECTIONS}{name}".encode()


class Lease:
    """An etcd lease, refreshed every third of its TTL while its `keep` block runs.

    `lost` is set once the lease is gone (revoked, expired) or could not be refreshed for
    nearly a TTL; a lost lease never comes back.
    """

    def __init__(self, client: EtcdClient, lease_id: int, ttl_s: int, sent: float) -> None:
        self.client = client
        self.id = lease_id
        self.ttl_s = ttl_s
        self.lost = anyio.Event()
        # A refresh sent at `sent` keeps the lease until at least this (monotonic) time.
        self._valid_until = sent + ttl_s * (1 - _SAFETY_MARGIN)
        self._keeper = anyio.CancelScope()

    @classmethod
    @contextlib.asynccontextmanager
    async def keep(cls, client: EtcdClient, ttl_s: int = 5) -> AsyncIterator[Lease]:
        """Grant a lease of `ttl_s` seconds (at least 1), keep it alive in the block,
        revoke it at the end (its keys go at once)."""
        lease = await cls.grant(client, ttl_s)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lease._keep_alive)
                yield lease
                await lease.revoke()
        finally:
            with anyio.CancelScope(shield=True):
                await lease.revoke()

    @classmethod
    async def grant(cls, client: EtcdClient, ttl_s: int) -> Self:
        """A new lease of `ttl_s` seconds (at least 1), not kept alive yet."""
        if ttl_s < 1:
            raise InvalidArgument(f"a lease TTL is at least 1 second, not {ttl_s}")
        sent = time.monotonic()
        resp = await client.lease_grant(ttl_s)
        if resp.error:
            raise Unavailable(f"etcd refused a lease: {resp.error}")
        return cls(client, int(resp.ID), int(resp.TTL), sent)

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and time.monotonic() < self._valid_until

    async def _keep_alive(self) -> None:
        log = logger.bind(lease=f"{self.id:x}")
        with self._keeper:
            while not self.lost.is_set():
                sent = time.monotonic()
                try:
                    ttl = await self.client.lease_keepalive(
                        self.id, within_s=max(0.05, self._valid_until - sent)
                    )
                except SpearError as exc:
                    if time.monotonic() >= self._valid_until:
                        log.warning("etcd lease lost: not refreshed within its TTL ({})", exc)
                        self.lost.set()
                        return
                    await anyio.sleep(min(0.2, self.ttl_s / 10))  # retry soon, within the TTL
                    continue
                if ttl <= 0:
                    log.warning("etcd lease lost: expired or revoked")
                    self.lost.set()
                    return
                self._valid_until = sent + ttl * (1 - _SAFETY_MARGIN)
                await anyio.sleep(self.ttl_s / 3)  # refresh three times per TTL

    async def revoke(self) -> None:
        """Stop refreshing and revoke the lease now. Safe to call twice."""
        self._keeper.cancel()
        if not self.lost.is_set():
            self.lost.set()
            with contextlib.suppress(SpearError):
                await self.client.lease_revoke(self.id)


async def leader_value(client: EtcdClient, name: str) -> bytes | None:
    """The value the current leader of election `name` proclaimed, or None: no leader."""
    from spear.store._etcd_client import REQUIRE_LEADER

    try:
        resp = await client.unary(
            "election leader",
            "/v3electionpb.Election/Leader",
            epb.LeaderRequest(name=election_name(name)),
            epb.LeaderResponse,
            idempotent=True,
            metadata=REQUIRE_LEADER,
        )
    except SpearError as exc:
        if "election: no leader" in str(exc):  # concurrency.ErrElectionNoLeader
            return None
        raise
    return bytes(resp.kv.value) if resp.HasField("kv") else None


async def observe(client: EtcdClient, name: str) -> AsyncIterator[bytes]:
    """Each leader's value of election `name`, as leadership changes (etcd's Observe).

    The stream is held on one member; when that member is lost, it is opened again on the
    next, and a leader already reported is not reported twice.
    """
    from spear.store._etcd_client import StreamResumer

    resumer = StreamResumer(client, "election observe")
    request = epb.LeaderRequest(name=election_name(name))
    last: tuple[bytes, int] | None = None
    while True:
        endpoint = client.current
        try:
            async with client.stream(
                endpoint, "/v3electionpb.Election/Observe", request, epb.LeaderResponse
            ) as responses:
                async for response in responses:
                    resumer.served()
                    if not response.HasField("kv"):
                        continue
                    seen = (bytes(response.kv.key), int(response.kv.mod_revision))
                    if seen != last:
                        last = seen
                        yield bytes(response.kv.value)
        except Exception as exc:
            await resumer.failed(endpoint, exc)


class CandidateState(enum.StrEnum):
    NEW = "new"
    CAMPAIGNING = "campaigning"
    LEADING = "leading"
    DEPOSED = "deposed"
    CLOSED = "closed"


class Candidate:
    """One campaigner in election `name`, on `lease`, proclaiming `value` when it leads.

    `async with` starts the campaign in the background; `elected` is set when it leads,
    `deposed` when it stops leading (its lease lost, or `resign`). A deposed candidate
    does not campaign again: make a new one, on a new lease, to stand again.
    """

    def __init__(self, client: EtcdClient, name: str, value: bytes, lease: Lease) -> None:
        self.client = client
        self.name = name
        self.value = value
        self.lease = lease
        self.state = CandidateState.NEW
        self.elected = anyio.Event()
        self.deposed = anyio.Event()
        self._leader_key: epb.LeaderKey | None = None
        self._prefix = election_name(name)
        self._tasks: TaskGroup | None = None
        self._campaign = anyio.CancelScope()  # campaigning, then leading

    @property
    def leader_key(self) -> tuple[bytes, int] | None:
        """While leading: the etcd key that holds the leadership and its create revision.

        etcd's way to fence a leader's writes: a transaction that also compares this key's
        create revision with the second value fails once the leadership is gone."""
        key = self._leader_key
        return (bytes(key.key), int(key.rev)) if key is not None else None

    @property
    def leading(self) -> bool:
        """True only while it holds the leadership and its lease is surely alive."""
        return self.state is CandidateState.LEADING and self.lease.alive

    async def __aenter__(self) -> Candidate:
        if self._tasks is not None or self.state is not CandidateState.NEW:
            raise InvalidArgument("a candidate campaigns once: make a new one to stand again")
        self.state = CandidateState.CAMPAIGNING
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._run)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._campaign.cancel()
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            # The exception the block ends with goes to the task group: a cancellation of
            # its own scope (its task failed) ends there, instead of leaking out as a
            # cancel of the caller (which stopped an SMS from standing again, for good).
            await tasks.__aexit__(*exc)
        with anyio.CancelScope(shield=True):
            await self.resign()

    async def _run(self) -> None:
        log = logger.bind(election=self.name, lease=f"{self.lease.id:x}")
        # Campaigning and leading both end when the lease is lost (or on `resign`).
        with self._campaign as scope:

            async def end_with_the_lease() -> None:
                await self.lease.lost.wait()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(end_with_the_lease)
                try:
                    resp = await self.client.unary(
                        "election campaign",
                        "/v3electionpb.Election/Campaign",
                        epb.CampaignRequest(
                            name=self._prefix, lease=self.lease.id, value=self.value
                        ),
                        epb.CampaignResponse,
                        idempotent=True,  # the same lease finds its own key again
                        wait=True,
                    )
                except SpearError as exc:
                    log.warning("campaign failed: {}", exc)
                    scope.cancel()
                else:
                    if self.lease.alive:
                        self._leader_key = resp.leader
                        self.state = CandidateState.LEADING
                        self.elected.set()
                        log.info("elected leader")
        if self.state is CandidateState.LEADING and self.lease.lost.is_set():
            log.warning("deposed: lease lost")
        if self.state is not CandidateState.CLOSED:
            self.state = CandidateState.DEPOSED
        self.deposed.set()

    async def resign(self) -> None:
        """Give up leadership (or the campaign) so the next candidate leads at once.

        Safe to call twice. The lease stays the caller's (`Lease.keep` revokes it)."""
        self._campaign.cancel()
        key, self._leader_key = self._leader_key, None
        self.state = CandidateState.CLOSED
        self.deposed.set()
        if key is not None and self.lease.alive:
            with contextlib.suppress(SpearError):
                await self.client.unary(
                    "election resign",
                    "/v3electionpb.Election/Resign",
                    epb.ResignRequest(leader=key),
                    epb.ResignResponse,
                    idempotent=True,
                )
