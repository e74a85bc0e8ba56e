"""Two-stage scheduling (seed §4, §5.1), in the SPEARlet that receives a task.

Stage one: if this node's free CPU and memory, runtimes and labels fit the task, it runs
here. Stage two: otherwise the SMS is asked for live nodes that fit now, one is picked by
`rank_candidates` and the task is forwarded to it, keeping its id. A task that no live node
(this one included) could ever run fails at once, with the reason. One that could run but
finds no room anywhere waits in this node's queue, first in first out, and is placed as
soon as room appears here (a task finishing) or elsewhere (looked for every heartbeat).

The receiving node registers every task it queues with the SMS as PENDING (node =
itself), so the task is visible cluster-wide, and "node lost" applies to a queued task
whose node dies. A node that runs a task, here or forwarded to it, reports its states
itself (task_reports.py); the node that forwarded a task remembers where it went.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio

from spear._logging import logger
from spear.core.cluster import PlacementQuery, input_objects, selector_labels
from spear.core.models import Task, TaskState, new_task_id
from spear.core.worker import EXIT_CANCELLED
from spear.errors import NotFound, ResourceExhausted, SpearError, Unavailable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio.abc import TaskStatus

    from spear.core.cluster import Candidate, Cluster, NodeRecord
    from spear.core.models import FunctionSpec
    from spear.core.node import Spearlet
    from spear.core.tasks import TasksFinished


def rank_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The placement policy, best first: the node holding most of the task's input objects
    (data affinity), then the one with most free CPU, then most free memory (spreading
    load), then by name (a stable tie-break)."""
    return sorted(
        candidates,
        key=lambda c: (
            -c.objects_held,
            -c.node.free.cpu_millis,
            -c.node.free.memory_bytes,
            c.node.name,
        ),
    )


@dataclass(slots=True)
class _Queued:
    task: Task
    stdin: bytes | None


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a submission went: `local`, `forwarded` (to `node`), `queued` or `failed`."""

    task: Task
    how: str
    node: str


class Forwarder(Protocol):
    """How a task placed on another node gets there (the node package's `Peers`)."""

    async def forward(self, node: NodeRecord, task: Task, stdin: bytes | None) -> Task:
        """Hand `task` (its id kept) to `node`; returns it as that node accepted it."""
        ...


class Scheduler:
    def __init__(
        self,
        node: Spearlet,
        cluster: Cluster,
        forwarder: Forwarder,
        labels: tuple[tuple[str, str], ...],
        retry_s: float,
    ) -> None:
        self.node = node
        self.cluster = cluster
        self.forwarder = forwarder
        self.labels = labels
        self.retry_s = retry_s
        self._queue: deque[_Queued] = deque()
        self._wake = anyio.Event()
        self._placing: dict[str, anyio.Event] = {}
        # Tasks this node forwarded, and to which node: asked about them next (wait,
        # result), it calls that node without asking the SMS where they are first.
        self.forwarded_to: dict[str, NodeRecord] = {}
        self.decisions: deque[Decision] = deque(maxlen=1000)
        node.controller.add_finished_hook(self._tasks_finished)

    async def _tasks_finished(self, finished: TasksFinished) -> None:
        self._wake.set()  # room on this node: try the queue again

    @property
    def queued(self) -> int:
        return len(self._queue)

    def queued_task(self, task_id: str) -> Task | None:
        for item in self._queue:
            if item.task.id == task_id:
                return item.task
        return None

    def _could_ever_run_here(self, spec: FunctionSpec) -> bool:
        controller = self.node.controller
        wanted = selector_labels(spec.labels)
        own = set(self.labels)
        return (
            spec.runtime.value in self.node.agents
            and spec.resources.fits_in(controller.capacity)
            and all(pair in own for pair in wanted)
        )

    def fits_here_now(self, spec: FunctionSpec) -> bool:
        """Whether a task submitted now would run here: it fits this node's free room now
        and no task waits in this node's queue before it."""
        return not self._queue and self._fits_here_now(spec)

    def _fits_here_now(self, spec: FunctionSpec) -> bool:
        controller = self.node.controller
        return (
            self._could_ever_run_here(spec)
            and controller.waiting_count == 0
            and spec.resources.fits_in(controller.free)
        )

    def _query(self, spec: FunctionSpec) -> PlacementQuery:
        return PlacementQuery(
            need=spec.resources,
            runtime=spec.runtime.value,
            labels=selector_labels(spec.labels),
            objects=input_objects(spec.labels),
            exclude=(self.node.name,),
        )

    def _note(self, task: Task, how: str, node: str) -> None:
        self.decisions.append(Decision(task, how, node))
        logger.bind(task_id=task.id).debug("task {}: {} ({})", task.id, how, node)

    async def submit(
        self, spec: FunctionSpec, *, stdin: bytes | None = None, task_id: str | None = None
    ) -> Task:
        """Place a new task: here, on another node, in the queue, or FAILED at once
        (`task_id`: under that id, node/idempotency.py)."""
        if not self._queue:
            here = await self._try_here(spec, stdin, task_id)
            if here is not None:
                self._note(here, "local", self.node.name)
                return here
        task = Task(
            id=task_id or new_task_id(),
            spec=spec,
            created_at=time.time(),
            node=self.node.name,
            history=((TaskState.PENDING.value, time.time()),),
        )
        try:
            placement = await self.cluster.find_nodes(self._query(spec))
        except Unavailable as exc:  # the SMS is briefly away: wait in the queue (issue 16)
            logger.info("task {} waits for the SMS: {}", task.id, exc)
            self._queue.append(_Queued(task, stdin))
            self._note(task, "queued", self.node.name)
            self._wake.set()
            return task
        if not placement.could_ever_fit and not self._could_ever_run_here(spec):
            failed = task.transition(
                TaskState.FAILED,
                reason=f"no node in the cluster can run this task: {placement.reason}",
                exit_code=ResourceExhausted.exit_code,
            )
            await self.cluster.report_task(failed)
            self._note(failed, "failed", "")
            return failed
        if not self._queue:
            placed = await self._place_remotely(task, stdin, rank_candidates(placement.candidates))
            if placed is not None:
                return placed  # (the node running it reports it to the SMS)
        await self.cluster.report_task(task)  # waiting here: registered as this node's
        self._queue.append(_Queued(task, stdin))
        self._note(task, "queued", self.node.name)
        self._wake.set()
        return task

    async def _place_remotely(
        self, task: Task, stdin: bytes | None, ranked: Sequence[Candidate]
    ) -> Task | None:
        for candidate in ranked:
            try:
                placed = await self.forwarder.forward(candidate.node, task, stdin)
            except (ResourceExhausted, Unavailable) as exc:
                logger.info("forwarding {} to {} failed: {}", task.id, candidate.node.name, exc)
                continue
            except SpearError as exc:  # the task itself was refused: a bad module, say
                failed = task.transition(TaskState.FAILED, reason=str(exc), exit_code=exc.exit_code)
                with contextlib.suppress(SpearError):
                    await self.cluster.report_task(failed)
                raise
            self._note(placed, "forwarded", candidate.node.name)
            if len(self.forwarded_to) >= 10_000:
                self.forwarded_to.clear()
            self.forwarded_to[placed.id] = candidate.node
            return placed
        return None

    async def place_stream(self, spec: FunctionSpec) -> NodeRecord | None:
        """Where a task started with a caller stream runs: None for here, else the node to
        relay its stream to. Its stream is one call, so it is neither queued nor forwarded
        later: it runs here if it fits here now (or only ever could: it then waits in this
        node's admission queue), else on the best node with room now."""
        if self._fits_here_now(spec):
            return None
        placement = await self.cluster.find_nodes(self._query(spec))
        ranked = rank_candidates(placement.candidates)
        if ranked:
            return ranked[0].node
        if self._could_ever_run_here(spec):
            return None
        if placement.could_ever_fit:
            raise ResourceExhausted("no node has room for a task with a caller stream now")
        raise ResourceExhausted(f"no node in the cluster can run this task: {placement.reason}")

    async def cancel(self, task_id: str, reason: str) -> Task | None:
        """Cancel a task still waiting in this node's queue; None if it is not queued (any
        more: if it was being placed just then, this returns once it has a node)."""
        placing = self._placing.get(task_id)
        if placing is not None:
            await placing.wait()
        for item in list(self._queue):
            if item.task.id == task_id:
                self._queue.remove(item)
                cancelled = item.task.transition(
                    TaskState.CANCELLED, reason=reason, exit_code=EXIT_CANCELLED
                )
                await self.cluster.report_task(cancelled)
                return cancelled
        return None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Place queued tasks, oldest first, as room appears."""
        task_status.started()
        while True:
            self._wake = anyio.Event()
            try:
                await self._drain_queue()
            except Exception:  # an SMS hiccup: try again on the next wake-up
                logger.exception("placing queued tasks failed")
            if self._queue:
                with anyio.move_on_after(self.retry_s):
                    await self._wake.wait()
            else:
                await self._wake.wait()

    async def _drain_queue(self) -> None:
        while self._queue:
            head = self._queue[0]
            # A stop that arrives while the head is being placed waits for the outcome.
            self._placing[head.task.id] = done = anyio.Event()
            try:
                placed = await self._place_head(head)
            finally:
                del self._placing[head.task.id]
                done.set()
            if not placed:
                return  # the head waits; nothing behind it overtakes it
            self._discard(head)

    async def _place_head(self, head: _Queued) -> bool:
        spec = head.task.spec
        try:
            here = await self._try_here(spec, head.stdin, head.task.id)
        except SpearError as exc:  # e.g. a bad module: it fails, the queue moves on
            logger.warning("queued task {} could not start: {}", head.task.id, exc)
            return True
        if here is not None:
            self._note(here, "local", self.node.name)
            return True
        try:
            placement = await self.cluster.find_nodes(self._query(spec))
        except SpearError:
            return False
        ranked = rank_candidates(placement.candidates)
        try:
            return await self._place_remotely(head.task, head.stdin, ranked) is not None
        except SpearError as exc:  # recorded FAILED; the queue moves on
            logger.warning("queued task {} was refused: {}", head.task.id, exc)
            return True

    def _discard(self, item: _Queued) -> None:
        if item in self._queue:  # a stop may have taken it out meanwhile
            self._queue.remove(item)

    async def _try_here(
        self,
        spec: FunctionSpec,
        stdin: bytes | None,
        task_id: str | None,
        previous: Task | None = None,
    ) -> Task | None:
        """Start a task on this node if it fits now (None if not). The controller reserves
        its resources as it accepts it, before its first await (so with no await between
        this check and that reservation): the next decision sees them taken."""
        if not self._fits_here_now(spec):
            return None
        return await self.node.controller.submit(
            spec, stdin=stdin, task_id=task_id, previous=previous
        )

    async def adopt(self, task: Task, spec: FunctionSpec, stdin: bytes | None) -> Task:
        """Run a task forwarded by another node here, under its id, if it fits now."""
        adopted = await self._try_here(spec, stdin, task.id, previous=task)
        if adopted is None:
            free = self.node.controller.free
            raise ResourceExhausted(
                f"node {self.node.name} has no room for task {task.id} now "
                f"({free.cpu_millis}m CPU, {free.memory_bytes} bytes free)"
            )
        self._note(adopted, "adopted", self.node.name)
        return adopted


async def owner_of(cluster: Cluster, task_id: str) -> tuple[Task, NodeRecord | None]:
    """The SMS's record of a task and the node holding it (None if unknown or gone)."""
    task = await cluster.task(task_id)
    if not task.node:
        return task, None
    try:
        return task, await cluster.node(task.node)
    except NotFound:
        return task, None
