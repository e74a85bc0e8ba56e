"""The node controller (seed §2.1): registers a SPEARlet with the SMS, reports its health
and load on a period, registers again when the SMS has forgotten it (a restart on an empty
KV, or the node was declared dead while it was cut off), and deregisters on a clean stop.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio

from spear._logging import logger
from spear.errors import NotFound, SpearError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus

    from spear.core.cluster import Cluster, ClusterTimings, NodeRecord
    from spear.core.models import Resources


class Membership(enum.StrEnum):
    JOINING = "joining"  # not yet registered (or the SMS forgot us)
    MEMBER = "member"  # registered; heartbeats are accepted
    CUT_OFF = "cut-off"  # the SMS does not answer; heartbeats continue
    LEFT = "left"


class NodeController:
    """Keeps one node registered with the cluster while `run()` runs."""

    def __init__(
        self,
        cluster: Cluster,
        describe: Callable[[], NodeRecord],
        load: Callable[[], tuple[Resources, int, int]],
        timings: ClusterTimings,
    ) -> None:
        """`describe()` is the node's record to register (name, address, labels, capacity,
        agents); `load()` is (free resources, running tasks, queued tasks) right now."""
        self.cluster = cluster
        self._describe = describe
        self._load = load
        self.timings = timings
        self.incarnation = secrets.token_hex(8)
        self.state = Membership.JOINING
        self.registrations = 0
        self.heartbeats = 0
        # Called after every (re-)registration, e.g. to report this node's tasks again:
        # with whether the SMS knew this node before (False: it kept nothing of it, say it
        # restarted on an empty store).
        self.on_registered: Callable[[bool], Awaitable[None]] | None = None

    @property
    def name(self) -> str:
        return self._describe().name

    async def _register(self) -> None:
        record = self._describe()
        free, running, queued = self._load()
        known = await self._known(record.name)
        await self.cluster.register(
            replace(
                record,
                incarnation=self.incarnation,
                free=free,
                running_tasks=running,
                queued_tasks=queued,
            )
        )
        self.registrations += 1
        self.state = Membership.MEMBER
        logger.info("registered with the cluster as {} ({})", record.name, self.incarnation)
        if self.on_registered is not None:
            await self.on_registered(known)

    async def _known(self, name: str) -> bool:
        """Whether the SMS has a record of a node of this name (of any incarnation)."""
        try:
            await self.cluster.node(name)
        except NotFound:
            return False
        return True

    async def beat(self) -> None:
        """One period's work: register if needed, else heartbeat. Raises if the SMS is down."""
        if self.state in (Membership.JOINING, Membership.LEFT):
            await self._register()
            return
        free, running, queued = self._load()
        known = await self.cluster.heartbeat(self.name, self.incarnation, free, running, queued)
        self.heartbeats += 1
        if known is None:
            logger.warning("the SMS does not know this node (restarted?): registering again")
            self.state = Membership.JOINING
            await self._register()
        else:
            self.state = Membership.MEMBER

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Register, then heartbeat forever. Reports started once the first attempt ended."""
        started = False
        while True:
            try:
                await self.beat()
            except SpearError as exc:
                if self.state is Membership.MEMBER:
                    logger.warning("the SMS did not answer ({}); retrying", exc)
                    self.state = Membership.CUT_OFF
                elif self.state is Membership.JOINING:
                    logger.warning("cannot register with the SMS yet ({}); retrying", exc)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(self.timings.heartbeat_s)

    async def leave(self, timeout_s: float = 3.0) -> bool:
        """Deregister (best effort: a dead SMS must not hold up a clean stop)."""
        if self.registrations == 0 or self.state is Membership.LEFT:
            return False
        self.state = Membership.LEFT
        with anyio.move_on_after(timeout_s):
            try:
                return await self.cluster.deregister(self.name, self.incarnation)
            except SpearError as exc:
                logger.warning("could not deregister from the SMS: {}", exc)
        return False
