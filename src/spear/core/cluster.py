"""The Cluster seam: what a SPEARlet knows of other nodes (DESIGN.md, seams).

Local mode has no cluster (the container passes None). In distributed mode the
implementation is the SMS client (transport/sms_client.py); the metadata server's own
logic (core/sms.py) implements the same interface in process, which is what its tests and
the SMS's gRPC service call.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anyio.abc import AsyncResource

from spear.core.models import Resources
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spear.core.models import Task, TaskState

# A FunctionSpec label with this key names the task's input objects (comma-separated):
# a placement hint for data affinity, not a node selector.
INPUTS_LABEL = "spear/inputs"
# This one narrows the MCP tools the task may call (toolkit/mcp_config.py): it describes
# the task, and no node carries it. Every other label is a node selector.
MCP_ALLOW_LABEL = "mcp.allow"
TASK_SIDE_LABELS = frozenset({INPUTS_LABEL, MCP_ALLOW_LABEL})


class NodeHealth(enum.StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # heartbeats missed: listed, not chosen for new tasks
    DEAD = "dead"  # silent for longer: its unfinished tasks are FAILED "node lost"
    LEFT = "left"  # deregistered on a clean stop

    @property
    def live(self) -> bool:
        return self in (NodeHealth.HEALTHY, NodeHealth.UNHEALTHY)


@dataclass(frozen=True, slots=True)
class ClusterTimings:
    """How often nodes report, and how long a silence the SMS tolerates."""

    heartbeat_s: float = 1.0
    unhealthy_after_s: float = 3.0
    dead_after_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s <= self.unhealthy_after_s <= self.dead_after_s:
            raise InvalidArgument(
                "cluster timings need 0 < heartbeat <= unhealthy-after <= dead-after"
            )

    @classmethod
    def from_extra(cls, extra: Any) -> ClusterTimings:
        """From settings' extra values (`heartbeat_s`, `unhealthy_after_s`, `dead_after_s`)."""
        values = {}
        for name in ("heartbeat_s", "unhealthy_after_s", "dead_after_s"):
            if extra.get(name) is not None:
                try:
                    values[name] = float(extra[name])
                except (TypeError, ValueError):
                    raise InvalidArgument(f"setting {name} must be a number") from None
        timings = cls(**values)
        if "unhealthy_after_s" not in values and "heartbeat_s" in values:
            timings = cls(
                timings.heartbeat_s,
                3 * timings.heartbeat_s,
                max(timings.dead_after_s, 3 * timings.heartbeat_s),
            )
        return timings


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """A worker agent a node offers (worker-agent metadata in the SMS)."""

    runtime: str
    version: str = ""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node as the SMS knows it. Times are the SMS's clock."""

    name: str
    address: str
    capacity: Resources = field(default_factory=lambda: Resources(0, 0))
    free: Resources = field(default_factory=lambda: Resources(0, 0))
    labels: tuple[tuple[str, str], ...] = ()
    agents: tuple[AgentInfo, ...] = ()
    running_tasks: int = 0
    queued_tasks: int = 0
    registered_at: float = 0.0
    last_heartbeat: float = 0.0
    health: NodeHealth = NodeHealth.HEALTHY
    incarnation: str = ""

    @property
    def runtimes(self) -> tuple[str, ...]:
        return tuple(a.runtime for a in self.agents)

    def has_labels(self, wanted: tuple[tuple[str, str], ...]) -> bool:
        own = set(self.labels)
        return all(pair in own for pair in wanted)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "capacity": [self.capacity.cpu_millis, self.capacity.memory_bytes],
            "free": [self.free.cpu_millis, self.free.memory_bytes],
            "labels": [list(p) for p in self.labels],
            "agents": [[a.runtime, a.version] for a in self.agents],
            "running_tasks": self.running_tasks,
            "queued_tasks": self.queued_tasks,
            "registered_at": self.registered_at,
            "last_heartbeat": self.last_heartbeat,
            "health": self.health.value,
            "incarnation": self.incarnation,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeRecord:
        return cls(
            name=data["name"],
            address=data["address"],
            capacity=Resources(*data["capacity"]),
            free=Resources(*data["free"]),
            labels=tuple((str(k), str(v)) for k, v in data.get("labels", ())),
            agents=tuple(AgentInfo(str(r), str(v)) for r, v in data.get("agents", ())),
            running_tasks=int(data.get("running_tasks", 0)),
            queued_tasks=int(data.get("queued_tasks", 0)),
            registered_at=float(data.get("registered_at", 0.0)),
            last_heartbeat=float(data.get("last_heartbeat", 0.0)),
            health=NodeHealth(data.get("health", "healthy")),
            incarnation=str(data.get("incarnation", "")),
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    node: NodeRecord
    objects_held: int = 0


@dataclass(frozen=True, slots=True)
class Placement:
    """The SMS's answer to "who could run this": nodes with room now, and whether any
    live node could ever run it (if not, `reason` says why, and `no_live_node` whether
    that is because no node at all is live)."""

    candidates: tuple[Candidate, ...]
    could_ever_fit: bool
    reason: str = ""
    no_live_node: bool = False


@dataclass(frozen=True, slots=True)
class PlacementQuery:
    need: Resources
    runtime: str
    labels: tuple[tuple[str, str], ...] = ()
    objects: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ObjectLocation:
    key: str
    node: str
    version: int = 0
    size: int = 0


def selector_labels(labels: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """A spec's labels that select nodes (all but those that describe the task)."""
    return tuple((k, v) for k, v in labels if k not in TASK_SIDE_LABELS)


def input_objects(labels: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """The object keys a spec names as its inputs (the `spear/inputs` label)."""
    out: list[str] = []
    for k, v in labels:
        if k == INPUTS_LABEL:
            out.extend(key.strip() for key in v.split(",") if key.strip())
    return tuple(out)


class Cluster(AsyncResource):
    """The node registry, task registry and object index of a cluster (the SMS)."""

    @abc.abstractmethod
    async def register(self, node: NodeRecord) -> NodeRecord: ...

    @abc.abstractmethod
    async def heartbeat(
        self, name: str, incarnation: str, free: Resources, running: int, queued: int
    ) -> NodeRecord | None:
        """Record a node's load; None when the SMS does not know it (register again)."""

    @abc.abstractmethod
    async def deregister(self, name: str, incarnation: str) -> bool: ...

    @abc.abstractmethod
    async def node(self, name: str) -> NodeRecord: ...

    @abc.abstractmethod
    async def nodes(self, *, live_only: bool = False) -> list[NodeRecord]: ...

    @abc.abstractmethod
    async def find_nodes(self, query: PlacementQuery) -> Placement: ...

    @abc.abstractmethod
    async def report_task(self, task: Task) -> Task:
        """Record a task's current state; returns the record the SMS keeps."""

    async def report_tasks(self, tasks: Sequence[Task]) -> None:
        """`report_task` for each of `tasks` (of different tasks), in one call where the
        SMS is remote."""
        for task in tasks:
            await self.report_task(task)

    @abc.abstractmethod
    async def task(self, task_id: str) -> Task: ...

    @abc.abstractmethod
    async def tasks(
        self, state: TaskState | None = None, limit: int | None = None, node: str | None = None
    ) -> list[Task]: ...

    @abc.abstractmethod
    async def put_object_location(self, location: ObjectLocation) -> ObjectLocation: ...

    @abc.abstractmethod
    async def remove_object_location(self, key: str, node: str) -> bool: ...

    @abc.abstractmethod
    async def locate_object(self, key: str) -> list[ObjectLocation]: ...

    async def keep_task_input(self, task_id: str, stdin: bytes) -> None:
        """Keep a retryable task's stdin, for a retry placed by the SMS elsewhere
        (core/task_inputs.py). A cluster that places no retries keeps nothing."""
        return None

    async def aclose(self) -> None:
        return None
