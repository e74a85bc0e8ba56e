"""Which SMS leads: only the leader writes, sweeps and checkpoints; the others serve reads.

On LevelDB one SMS holds the store, so it leads alone (`SoleLeader`). On etcd several SMS
processes may share the cluster: each stands in etcd's election (`ElectedLeader`, over
`store/etcd_election.py`, the recipe etcd serves itself) with its gRPC address as its
value. The winner's writes are fenced (`store/etcd_fence.py`): each is conditioned on its
term's leader key, so a deposed leader that wakes up late cannot write. A follower
refuses every write with NotLeader naming the leader (`leader_named_in` reads it back),
and SPEARlets' SMS clients follow it (transport/sms_client.py). A leader whose process
dies stops refreshing its lease: etcd deletes its key after the lease's TTL and the next
candidate leads, starting from the checkpointed records with a full grace period.
"""

from __future__ import annotations

import abc
import re
import time
from typing import TYPE_CHECKING, Any

import anyio

from spear._logging import logger
from spear.errors import InvalidArgument, NotLeader, SpearError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anyio.abc import TaskStatus

    from spear.core.sms import MetadataServer
    from spear.store.etcd import EtcdKV
    from spear.store.etcd_election import Candidate
    from spear.store.etcd_fence import FencedEtcdKV
    from spear.store.kv import KV

ELECTION = "sms"
DEFAULT_LEASE_TTL_S = 3
_LEADER_AT = "the leader is at "
_LEADER_RE = re.compile(re.escape(_LEADER_AT) + r"(\S+)")
_STAND_AGAIN_S = 0.2


def not_leader(leader: str | None) -> NotLeader:
    """The refusal a follower answers a write with (it names the leader when known)."""
    if leader:
        return NotLeader(f"this SMS does not lead; {_LEADER_AT}{leader}")
    return NotLeader("this SMS does not lead, and no leader is elected yet")


def leader_named_in(error: SpearError) -> str | None:
    """The leader's address a NotLeader refusal names, if any."""
    match = _LEADER_RE.search(str(error))
    return match.group(1) if match else None


class Leadership(abc.ABC):
    """Whether this SMS leads, who does, and the leader's duties while it does."""

    leader: str | None = None  # the leader's gRPC address, as last seen

    @property
    @abc.abstractmethod
    def leading(self) -> bool: ...

    def require(self) -> None:
        """Raise NotLeader (naming the leader) unless this SMS leads now."""
        if not self.leading:
            raise not_leader(self.leader)

    @abc.abstractmethod
    async def run(
        self, sms: MetadataServer, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Stand (or simply lead), and do the leader's duties whenever this SMS leads."""


class SoleLeader(Leadership):
    """The only SMS on its store (LevelDB): it always leads."""

    @property
    def leading(self) -> bool:
        return True

    async def run(
        self, sms: MetadataServer, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await sms.run_sweeper()


async def _first(*events: anyio.Event) -> None:
    """Return once any of `events` is set."""
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)


class ElectedLeader(Leadership):
    """One SMS of several on one etcd, standing in election `ELECTION` as `address`.

    `kv` is the fenced view of `plain` the MetadataServer must write through."""

    def __init__(
        self, plain: EtcdKV, address: str, ttl_s: int = DEFAULT_LEASE_TTL_S, name: str = ELECTION
    ) -> None:
        from spear.store.etcd_fence import Fence, FencedEtcdKV

        self.address = address
        self.ttl_s = ttl_s
        self.name = name
        self._client = plain.client
        self.fence = Fence(lambda: not_leader(self.leader))
        self.kv: FencedEtcdKV = FencedEtcdKV(plain, self.fence)
        self._me: Candidate | None = None
        self.terms = 0  # how many times this SMS was elected
        self.elected_at: float | None = None  # time.time() of the current term's start

    @property
    def leading(self) -> bool:
        me = self._me
        return me is not None and me.leading and self.fence.key is not None

    async def run(
        self, sms: MetadataServer, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow)
            task_status.started()
            while True:
                try:
                    await self._stand(sms)
                except SpearError as exc:
                    logger.warning("SMS election: {}; standing again", exc)
                await anyio.sleep(_STAND_AGAIN_S)

    async def _follow(self) -> None:
        """Keep `leader` current (etcd's Observe), for followers' refusals."""
        from spear.store.etcd_election import observe

        while True:
            try:
                async for value in observe(self._client, self.name):
                    self.leader = value.decode()
            except SpearError as exc:
                logger.warning("cannot observe the SMS election: {}", exc)
            await anyio.sleep(_STAND_AGAIN_S)

    async def _stand(self, sms: MetadataServer) -> None:
        """One candidacy on a new lease: campaign, then lead until deposed."""
        from spear.store.etcd_election import Candidate
        from spear.store.etcd_lease_thread import ThreadedLease

        # Refreshed on a thread of its own: a loop swamped by requests must not cost the
        # lease (and the leadership with it) exactly when load is highest.
        async with (
            ThreadedLease.keep(self._client, self.ttl_s) as lease,
            Candidate(self._client, self.name, self.address.encode(), lease) as me,
        ):
            await _first(me.elected, me.deposed)
            if not me.leading or me.leader_key is None:
                return
            self.fence.hold(*me.leader_key)
            self._me = me
            self.leader = self.address
            self.terms += 1
            self.elected_at = time.time()
            sms.take_over()
            logger.info("this SMS ({}) leads (term {})", self.address, me.leader_key[1])
            try:
                async with anyio.create_task_group() as duties:
                    duties.start_soon(sms.run_sweeper)
                    await _first(me.deposed, self.fence.ended)
                    duties.cancel_scope.cancel()
            finally:
                self._me = None
                self.fence.release()
                sms.liveness.clear()
                if self.leader == self.address:
                    self.leader = None
                logger.warning("this SMS ({}) no longer leads", self.address)


def sms_leadership(kv: KV, address: str, extra: Mapping[str, Any]) -> tuple[Leadership, KV]:
    """The leadership for an SMS serving on `address` over `kv`, and the KV it must write
    through: elected and fenced on etcd (setting `sms_lease_ttl_s`, default 3), sole on
    any other store."""
    from spear.store.etcd import EtcdKV

    if not isinstance(kv, EtcdKV):
        return SoleLeader(), kv
    raw = extra.get("sms_lease_ttl_s", DEFAULT_LEASE_TTL_S)
    try:
        ttl = float(raw)
    except (TypeError, ValueError):
        ttl = 0.0
    if not ttl.is_integer() or ttl < 2:
        raise InvalidArgument(
            f"setting sms_lease_ttl_s must be whole seconds, at least 2, not {raw!r}"
        )
    elected = ElectedLeader(kv, address, int(ttl))
    return elected, elected.kv
