"""The metadata server's logic (seed §2.2, §2.3): nodes, tasks, worker agents, objects.

Everything lives in the KV; the object holds no state of its own beyond its KV handle and
timings, so a restarted SMS (or a second one on the same etcd) loses nothing. Keys:

    nodes/<name>                  a NodeRecord (JSON)
    tasks/<id>                    a Task (JSON), as last reported
    node-tasks/<node>/<id>        an unfinished task placed on <node> (for "node lost")
    objects/<key>\\x00<node>       <node> holds object <key> (an ObjectLocation)

Every read-modify-write is a compare-and-swap on the entry's version, so concurrent
reports, heartbeats and sweeps never lose each other's changes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

import anyio

from spear._logging import logger
from spear.core.cluster import (
    Candidate,
    Cluster,
    ClusterTimings,
    NodeHealth,
    NodeRecord,
    ObjectLocation,
    Placement,
    PlacementQuery,
)
from spear.core.liveness import Liveness
from spear.core.models import TaskState
from spear.core.object_index import ObjectIndex
from spear.core.sms_leader import SoleLeader
from spear.core.stats import SmsStats
from spear.core.tasks.codec import decode_task, encode_task
from spear.core.worker import EXIT_LOST
from spear.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from spear.core.models import Resources, Task
    from spear.core.retry_placement import RetryPlacement
    from spear.core.sms_leader import Leadership
    from spear.store.kv import KV

_NODES = "nodes/"
_TASKS = "tasks/"
_NODE_TASKS = "node-tasks/"
_OBJECTS = "objects/"
_SEP = "\x00"

NODE_LOST = "node lost"


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class MetadataServer(Cluster):
    """The SMS over a KV. `sweep()` applies heartbeat timeouts; `run_sweeper` loops it."""

    def __init__(
        self,
        kv: KV,
        timings: ClusterTimings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.timings = timings or ClusterTimings()
        self._clock = clock
        # Silence is counted from this SMS's start at the earliest: the time it was down
        # itself is not the nodes' fault (they could not reach it), so a restarted SMS
        # gives every node a full period to speak before judging it.
        self._started = clock()
        self.stats = SmsStats()  # read by the SMS's /metrics (spear/web/metrics.py)
        self.retries: RetryPlacement | None = None  # a lost node's tasks run again (issue 16)
        # Heartbeats renew leases in memory, checkpointed in batches (core/liveness.py);
        # only the leader writes (core/sms_leader.py: SoleLeader on LevelDB, else elected).
        self.liveness = Liveness()
        self.leadership: Leadership = SoleLeader()
        # The authority for each object's version, holders, references (docs/objects.md).
        self.objects = ObjectIndex(kv, self._live_node_names, clock)

    def take_over(self) -> None:
        """This SMS starts leading: silence counts from now, and memory starts empty."""
        self._started = self._clock()
        self.liveness.clear()

    # -- nodes ------------------------------------------------------------------------

    async def _update_node(
        self, name: str, change: Callable[[NodeRecord], NodeRecord | None]
    ) -> NodeRecord | None:
        """Apply `change` to a node's record by compare-and-swap; None if absent or refused."""
        while True:
            entry = await self.kv.get(_NODES + name)
            if entry is None:
                return None
            stored = NodeRecord.from_json(json.loads(entry.value))
            new = change(self.liveness.current(stored))
            if new is None:
                return None
            version = await self.kv.compare_and_swap(
                _NODES + name, _dump(new.to_json()), entry.version
            )
            if version > 0:
                self.liveness.remember(new, version)
                return new

    async def register(self, node: NodeRecord) -> NodeRecord:
        if not node.name or not node.address:
            raise InvalidArgument("a node needs a name and an address to register")
        now = self._clock()
        record = dataclasses.replace(
            node, registered_at=now, last_heartbeat=now, health=NodeHealth.HEALTHY
        )
        previous = await self.kv.get(_NODES + node.name)
        version = await self.kv.put(_NODES + node.name, _dump(record.to_json()))
        self.liveness.remember(record, version)
        if previous is not None:
            old = NodeRecord.from_json(json.loads(previous.value))
            if old.incarnation != node.incarnation and old.health.live:
                # The node restarted before we noticed it died: its old tasks are gone.
                await self._fail_tasks_of(node.name, NODE_LOST)
        logger.info("node {} registered at {}", node.name, node.address)
        return record

    async def heartbeat(
        self, name: str, incarnation: str, free: Resources, running: int, queued: int
    ) -> NodeRecord | None:
        now = self._clock()
        self.stats.heartbeats += 1
        renewed = self.liveness.renew(name, incarnation, now, free, running, queued)
        if renewed is not None:
            return renewed

        def beat(rec: NodeRecord) -> NodeRecord | None:
            if rec.incarnation != incarnation or not rec.health.live:
                return None
            return dataclasses.replace(
                rec,
                free=free,
                running_tasks=running,
                queued_tasks=queued,
                last_heartbeat=now,
                health=NodeHealth.HEALTHY,
            )

        return await self._update_node(name, beat)

    async def deregister(self, name: str, incarnation: str) -> bool:
        def leave(rec: NodeRecord) -> NodeRecord | None:
            if rec.incarnation != incarnation:
                return None
            return dataclasses.replace(rec, health=NodeHealth.LEFT, running_tasks=0)

        left = await self._update_node(name, leave)
        if left is None:
            return False
        await self._fail_tasks_of(name, "node left the cluster")
        logger.info("node {} left", name)
        return True

    async def node(self, name: str) -> NodeRecord:
        if self._from_memory():
            held = self.liveness.record(name)
            if held is None:
                raise NotFound(f"no such node: {name}")
            return held
        entry = await self.kv.get(_NODES + name)
        if entry is None:
            raise NotFound(f"no such node: {name}")
        return self.liveness.current(NodeRecord.from_json(json.loads(entry.value)))

    async def nodes(self, *, live_only: bool = False) -> list[NodeRecord]:
        if self._from_memory():
            out = self.liveness.records()
        else:
            entries = await self.kv.scan(_NODES)
            stored = [(NodeRecord.from_json(json.loads(e.value)), e.version) for e in entries]
            if self.leadership.leading:
                self.liveness.load(stored)
            current = self.liveness.current
            out = [current(record) for record, _ in stored]
        if live_only:
            out = [n for n in out if self._healthy(n)]
        return out

    def _from_memory(self) -> bool:
        """The leader holds every node record (core/liveness.py): no KV read needed."""
        return self.liveness.complete and self.leadership.leading

    def _healthy(self, node: NodeRecord) -> bool:
        # Judged on the clock as well, so a lagging sweeper never offers a silent node.
        return (
            node.health is NodeHealth.HEALTHY
            and self._silence(node, self._clock()) <= self.timings.unhealthy_after_s
        )

    def _silence(self, node: NodeRecord, now: float) -> float:
        return now - max(node.last_heartbeat, self._started)

    async def sweep(self) -> list[tuple[str, NodeHealth]]:
        """Mark silent nodes unhealthy, then dead (failing their tasks). Returns changes."""
        now = self._clock()
        changed: list[tuple[str, NodeHealth]] = []
        for node in await self.nodes():
            if not node.health.live:
                continue
            silent = self._silence(node, now)
            if silent > self.timings.dead_after_s:
                target = NodeHealth.DEAD
            elif silent > self.timings.unhealthy_after_s and node.health is NodeHealth.HEALTHY:
                target = NodeHealth.UNHEALTHY
            else:
                continue

            def mark(
                rec: NodeRecord, seen: NodeRecord = node, target: NodeHealth = target
            ) -> NodeRecord | None:
                if rec.last_heartbeat != seen.last_heartbeat or rec.incarnation != seen.incarnation:
                    return None  # it spoke in between
                return dataclasses.replace(rec, health=target)

            if await self._update_node(node.name, mark) is None:
                continue
            changed.append((node.name, target))
            if target is NodeHealth.DEAD:
                failed = await self._fail_tasks_of(node.name, NODE_LOST)
                logger.warning("node {} is dead; {} task(s) failed", node.name, failed)
            else:
                logger.warning("node {} missed its heartbeats", node.name)
        return changed

    async def checkpoint(self) -> int:
        """Write the node leases renewed since the last checkpoint (core/liveness.py)."""
        return await self.liveness.flush(
            self.kv,
            lambda name: _NODES + name,
            lambda record: _dump(record.to_json()),
            lambda name: self._update_node(name, lambda rec: rec),
        )

    async def run_sweeper(self) -> None:
        """Sweep and checkpoint forever, a few times per heartbeat period (the leader)."""
        while True:
            try:
                await self.checkpoint()
                await self.sweep()
                if self.retries is not None:
                    await self.retries.place_due()
            except Exception:  # a KV hiccup must not end the loop
                logger.exception("the node sweep failed")
            await anyio.sleep(self.timings.heartbeat_s / 2)

    # -- placement ----------------------------------------------------------------------

    async def find_nodes(self, query: PlacementQuery) -> Placement:
        t0 = time.perf_counter()
        try:
            return await self._find_nodes(query)
        finally:
            self.stats.placement.observe(time.perf_counter() - t0)

    async def _find_nodes(self, query: PlacementQuery) -> Placement:
        live = [n for n in await self.nodes() if n.health.live]
        with_runtime = [n for n in live if query.runtime in n.runtimes]
        with_labels = [n for n in with_runtime if n.has_labels(query.labels)]
        big_enough = [n for n in with_labels if query.need.fits_in(n.capacity)]
        if not big_enough:
            why = _why_not(query, live, with_runtime, with_labels)
            return Placement((), False, why, no_live_node=not live)
        holders: dict[str, int] = {}
        for key in query.objects:
            for loc in await self.locate_object(key):
                holders[loc.node] = holders.get(loc.node, 0) + 1
        candidates = tuple(
            Candidate(n, holders.get(n.name, 0))
            for n in big_enough
            if self._healthy(n) and n.name not in query.exclude and query.need.fits_in(n.free)
        )
        return Placement(candidates, True)

    # -- tasks --------------------------------------------------------------------------

    async def report_task(self, task: Task) -> Task:
        while True:
            entry = await self.kv.get(_TASKS + task.id)
            expected = 0 if entry is None else entry.version
            old = None if entry is None else decode_task(entry.value)
            if old is not None and old.state.terminal:
                return old  # a finished task stays as it finished (e.g. "node lost")
            if old is not None and len(old.history) > len(task.history):
                return old  # a late report of an earlier state
            if self.retries is not None and task.state is TaskState.FAILED:
                task = self.retries.next_attempt(task) or task  # (e.g. found lost on restart)
            if await self.kv.compare_and_swap(_TASKS + task.id, encode_task(task), expected) > 0:
                break
        if old is not None and old.node and old.node != task.node:
            await self.kv.delete(f"{_NODE_TASKS}{old.node}/{task.id}")
        if task.node:
            index = f"{_NODE_TASKS}{task.node}/{task.id}"
            if task.state.terminal:
                await self.kv.delete(index)
            else:
                await self.kv.put(index, b"")
        if (
            task.attempts
            and task.node is None
            and task.state is TaskState.PENDING  # (not a retry cancelled while it waited)
            and self.retries is not None
        ):
            await self.retries.queue(task)
        return task

    async def report_tasks(self, tasks: Sequence[Task]) -> None:
        """Each report applied as `report_task` applies it, in batched commits
        (core/task_registry.py)."""
        from spear.core.task_registry import apply_reports

        if self.retries is None:
            await apply_reports(self.kv, tasks, self.report_task)
            return
        # A failure may be retried (a task a restarted node found lost): report_task
        # decides; the rest in batched commits, first (their states come before).
        failed = [t for t in tasks if t.state is TaskState.FAILED]
        rest = [t for t in tasks if t.state is not TaskState.FAILED]
        await apply_reports(self.kv, rest, self.report_task)
        for task in failed:
            await self.report_task(task)

    async def task(self, task_id: str) -> Task:
        """A task by its id, or by a unique prefix of it (core/task_ids.py)."""
        from spear.core.task_ids import resolve_task_id

        task_id = await resolve_task_id(self.kv, task_id)
        entry = await self.kv.get(_TASKS + task_id)
        if entry is None:
            raise NotFound(f"no such task: {task_id}")
        return decode_task(entry.value)

    async def tasks(
        self, state: TaskState | None = None, limit: int | None = None, node: str | None = None
    ) -> list[Task]:
        out: list[Task] = []
        for entry in await self.kv.scan(_TASKS, reverse=True):
            task = decode_task(entry.value)
            if (state is None or task.state is state) and (node is None or task.node == node):
                out.append(task)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def keep_task_input(self, task_id: str, stdin: bytes) -> None:
        """Keep a retryable task's stdin for a retry placed here (core/task_inputs.py)."""
        from spear.core import task_inputs

        await task_inputs.keep(self.kv, task_id, stdin)

    async def _fail_tasks_of(self, node: str, reason: str) -> int:
        count = 0
        prefix = f"{_NODE_TASKS}{node}/"
        for entry in await self.kv.scan(prefix):
            task_id = entry.key[len(prefix) :]
            while True:
                current = await self.kv.get(_TASKS + task_id)
                if current is None:
                    break
                task = decode_task(current.value)
                if task.state.terminal or task.node != node:
                    break
                failed = task.transition(TaskState.FAILED, reason=reason, exit_code=EXIT_LOST)
                again = None if self.retries is None else self.retries.next_attempt(failed)
                raw = encode_task(failed if again is None else again)
                if await self.kv.compare_and_swap(_TASKS + task_id, raw, current.version) > 0:
                    count += 1
                    if again is not None and self.retries is not None:
                        await self.retries.queue(again)
                    break
            await self.kv.delete(entry.key)
        return count

    # -- objects ------------------------------------------------------------------------

    async def put_object_location(self, location: ObjectLocation) -> ObjectLocation:
        if not location.key or not location.node:
            raise InvalidArgument("an object location needs a key and a node")
        data = {"version": location.version, "size": location.size}
        await self.kv.put(f"{_OBJECTS}{location.key}{_SEP}{location.node}", _dump(data))
        return location

    async def remove_object_location(self, key: str, node: str) -> bool:
        return await self.kv.delete(f"{_OBJECTS}{key}{_SEP}{node}")

    async def _live_node_names(self) -> set[str]:
        return {n.name for n in await self.nodes() if n.health.live}

    async def locate_object(self, key: str) -> list[ObjectLocation]:
        try:  # the object index first: the holders of the current version
            record = await self.objects.lookup(key)
            version, size = record.version, record.size
            return [ObjectLocation(key, h.node, version, size) for h in record.holders]
        except NotFound:
            pass
        prefix = f"{_OBJECTS}{key}{_SEP}"
        found = []
        for entry in await self.kv.scan(prefix):
            data = json.loads(entry.value)
            found.append(
                ObjectLocation(key, entry.key[len(prefix) :], data["version"], data["size"])
            )
        if not found:
            return found
        health = {n.name: n for n in await self.nodes()}

        def rank(loc: ObjectLocation) -> tuple[int, int]:
            node = health.get(loc.node)
            alive = node is not None and self._healthy(node)
            return (0 if alive else 1, -loc.version)

        return sorted(found, key=rank)


def _why_not(
    query: PlacementQuery,
    live: list[NodeRecord],
    with_runtime: list[NodeRecord],
    with_labels: list[NodeRecord],
) -> str:
    if not live:
        return "no live node in the cluster"
    if not with_runtime:
        return f"no live node offers the {query.runtime} runtime"
    if not with_labels:
        wanted = ", ".join(f"{k}={v}" for k, v in query.labels)
        return f"no live node has the labels {wanted}"
    biggest = max(with_labels, key=lambda n: (n.capacity.cpu_millis, n.capacity.memory_bytes))
    return (
        f"the task needs {query.need.cpu_millis}m CPU and {query.need.memory_bytes} bytes of "
        f"memory; no live node is that large (the largest fitting the other constraints, "
        f"{biggest.name}, has {biggest.capacity.cpu_millis}m and "
        f"{biggest.capacity.memory_bytes} bytes)"
    )
