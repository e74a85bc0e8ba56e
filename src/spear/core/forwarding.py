"""Forwarding between SPEARlets, as core sees it (issue #17): the `Forwarder` seam the
scheduler hands tasks to (implemented by node/peer.py `Peers`), what a receiver answers
per task, what it took of a batch, and the placement settings a member reads.

A receiver takes a forwarded task only if it fits its free room now (or, for a waited
batch, its bounded backlog) and otherwise refuses it without recording anything, so the
sender can place it again: no task is lost or run twice (core/scheduler.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spear.core.cluster import NodeRecord
    from spear.core.models import FunctionSpec, Resources, Task
    from spear.errors import SpearError


def max_queued_from(extra: Any) -> int:
    """The queue's bound from settings' extra values (`max_queued_tasks`, default 10,000)."""
    raw = extra.get("max_queued_tasks", 10_000)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise InvalidArgument("setting max_queued_tasks must be a whole number") from None
    if value < 1:
        raise InvalidArgument("setting max_queued_tasks must be at least 1")
    return value


def view_refresh_from(extra: Any, heartbeat_s: float) -> float:
    """How often the view is filled from the SMS (`view_refresh_s`, default: once per
    heartbeat period, the SMS's own freshness)."""
    raw = extra.get("view_refresh_s", heartbeat_s)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InvalidArgument("setting view_refresh_s must be a number") from None
    if not value > 0:
        raise InvalidArgument("setting view_refresh_s must be above 0")
    return value


@dataclass(frozen=True, slots=True)
class Forwarded:
    """One task's outcome at the node it was forwarded to: `task` as that node recorded
    it (finished, with its `output`, when waited for), or `refused` (no room there now:
    nothing was recorded, place it again), or `error` (the task itself was refused)."""

    task: Task | None = None
    output: bytes = b""
    refused: bool = False
    error: SpearError | None = None


@dataclass(slots=True)
class Accepted:
    """What a node took of a forwarded batch (`Scheduler.accept_forwarded`)."""

    taken: list[bool] = field(default_factory=list)  # per task, in order
    promised: list[FunctionSpec] = field(default_factory=list)  # given free room now
    backlog: int = 0  # taken to wait here for room
    kept: set[int] = field(default_factory=set)  # (of `promised`) held by the controller


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    outcomes: tuple[Forwarded, ...]
    free: Resources  # the receiver's free resources as it answered


class Forwarder(Protocol):
    """How tasks placed on another node get there (the node package's `Peers`)."""

    async def forward_batch(
        self,
        node: NodeRecord,
        tasks: Sequence[tuple[Task, bytes | None]],
        *,
        wait: bool = False,
        output: bool = False,
    ) -> BatchAnswer:
        """Hand `tasks` (ids kept, each with its stdin) to `node` in one call; with `wait`
        the answer comes once the accepted ones have finished (with their output if
        `output`)."""
        ...
