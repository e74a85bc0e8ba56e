"""Two-stage scheduling (seed §4, §5.1), in the SPEARlet that receives a task.

Stage one: if this node's free CPU and memory, runtimes and labels fit the task, it runs
here. Stage two: otherwise the node picks another from its own view of the cluster
(core/cluster_view.py: the SMS's node list, refreshed once per heartbeat period and
corrected by every forward's answer) by `rank_candidates`, and forwards the task to it,
keeping its id: no call to the SMS per task. A task naming input objects is placed by the
SMS instead (it holds the object index). When the view was stale the receiver refuses
(nothing recorded there) and this node places the task again, at most `max_hops` times
(spillback); then it waits here. A task that no live node (this one included) could ever
run fails at once, with the reason (the SMS confirms before a task fails). One that could
run but finds no room anywhere waits in this node's queue, first in first out, and is
placed as soon as room appears here (a task finishing) or elsewhere (looked for every
heartbeat); a task of a higher `priority` goes before those of lower ones, first come
first served among equals, and namespaces take turns (core/fair_queue.py: one task of
each namespace per round within a priority). The queue holds at most `max_queued` tasks,
and a task beyond that is refused with ResourceExhausted (back-pressure rather than
memory growing without bound).

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
from typing import TYPE_CHECKING

import anyio

from spear._logging import logger
from spear.core import task_inputs
from spear.core.cluster import PlacementQuery, input_objects, selector_labels
from spear.core.cluster_view import ClusterView, rank_candidates
from spear.core.fair_queue import FairQueue
from spear.core.forwarding import Accepted
from spear.core.models import Resources, Task, TaskState, new_task_id
from spear.core.node import NodeState
from spear.core.traced_placement import in_its_trace, traced_placement
from spear.core.worker import EXIT_CANCELLED
from spear.errors import NotFound, ResourceExhausted, SpearError, Unavailable
from spear.store.diskspace import DiskRoom
from spear.tracing.base import current_traceparent

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio.abc import TaskStatus

    from spear.core.cluster import Cluster, NodeRecord
    from spear.core.forwarding import Forwarder
    from spear.core.models import FunctionSpec
    from spear.core.node import Spearlet
    from spear.core.tasks import TasksFinished


_FIRST_PAUSE_S = 0.01  # the first pause before a queue's head is tried again
NO_ROOM = Resources(cpu_millis=0, memory_bytes=0)  # what a node with a full disk offers


@dataclass(slots=True)
class _Queued:
    task: Task
    stdin: bytes | None
    keep_input: bool = False  # its stdin is still to be kept at the SMS (task_inputs.py)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a submission went: `local`, `forwarded` (to `node`), `queued` or `failed`."""

    task: Task
    how: str
    node: str


class Scheduler:
    def __init__(
        self,
        node: Spearlet,
        cluster: Cluster,
        forwarder: Forwarder,
        labels: tuple[tuple[str, str], ...],
        retry_s: float,
        *,
        max_queued: int = 10_000,
        max_hops: int = 3,
    ) -> None:
        self.node = node
        self.cluster = cluster
        self.forwarder = forwarder
        self.labels = labels
        self.retry_s = retry_s
        self.max_queued = max_queued
        self.max_hops = max_hops
        self.view = ClusterView(node.name)
        # Resources promised to forwarded batches accepted here and not yet finished: a
        # placement here must not take the room they were given (see accept_forwarded).
        self.promised = Resources(cpu_millis=0, memory_bytes=0)
        self.refusals = 0  # forwarded tasks refused here for lack of room (spillback)
        self.backlog = 0  # forwarded tasks taken to wait here for room (accept_forwarded)
        self._queue: FairQueue[_Queued] = FairQueue()
        self._wake = anyio.Event()
        self._placing: dict[str, anyio.Event] = {}
        # Tasks this node forwarded, and to which node: asked about them next (wait,
        # result), it calls that node without asking the SMS where they are first.
        self.forwarded_to: dict[str, NodeRecord] = {}
        self.decisions: deque[Decision] = deque(maxlen=1000)
        # A node whose disk is full takes no new task: it could write neither the task's
        # record nor its end. The cluster places it elsewhere (issue 16's disk-full fault).
        self.disk = DiskRoom(node.settings.data_dir)
        node.controller.add_finished_hook(self._tasks_finished)

    async def _tasks_finished(self, finished: TasksFinished) -> None:
        self._wake.set()  # room on this node: try the queue again

    @property
    def queued(self) -> int:
        return len(self._queue)

    def queued_tasks(self) -> list[Task]:
        """The queue's tasks in the order they will be placed."""
        return [item.task for item in self._queue]

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
        return not self.waiting_before(spec.priority) and self._fits_here_now(spec)

    def waiting_before(self, priority: int) -> bool:
        """Whether a queued task goes before a new one of `priority` (the queue is in
        placement order: higher priority first, then first come)."""
        return bool(self._queue) and self._queue.head_priority >= priority

    def _fits_here_now(self, spec: FunctionSpec) -> bool:
        return (
            self._could_ever_run_here(spec)
            and self.node.controller.waiting_count == 0
            and spec.resources.fits_in(self.room_here())
        )

    def room_here(self) -> Resources:
        """What a new task may take here now: the room this node offers less what
        forwarded batches were promised."""
        return self.offered() - self.promised

    def offered(self) -> Resources:
        """The room this node offers the cluster: its free room, none while its disk is
        full (what its heartbeats report)."""
        return NO_ROOM if self.disk.full() else self.node.controller.free

    def could_ever_run_here(self, spec: FunctionSpec) -> bool:
        """Whether this node has the runtime, the labels and the capacity for `spec`."""
        return self._could_ever_run_here(spec)

    # -- the view of the cluster ---------------------------------------------------------

    async def refresh_view(self) -> None:
        """Fill the view from the SMS's node list."""
        self.view.replace(await self.cluster.nodes(live_only=True))
        self._wake.set()  # room may have appeared elsewhere: try the queue again

    async def watch_cluster(
        self, period_s: float, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Refresh the view every `period_s` while it runs (one SMS call per period)."""
        task_status.started()
        while True:
            try:
                await self.refresh_view()
            except SpearError as exc:  # the SMS is away: keep the view we have
                logger.debug("cluster view not refreshed: {}", exc)
            await anyio.sleep(period_s)

    async def _ranked(self, query: PlacementQuery) -> tuple[list[NodeRecord], bool]:
        """Nodes with room for a task now, best first, and whether any node (this one
        aside) could ever run it. From the view; from the SMS for data affinity, before
        the view is filled, or to confirm that no node could ever run it."""
        if not query.objects:
            if not self.view.known:
                with contextlib.suppress(SpearError):
                    await self.refresh_view()
            if self.view.known:
                ranked = [c.node for c in self.view.candidates(query)]
                if ranked or self.view.could_ever_fit(query):
                    return ranked, True
        placement = await self.cluster.find_nodes(query)
        return [c.node for c in rank_candidates(placement.candidates)], placement.could_ever_fit

    def _refuse_if_full(self) -> None:
        if len(self._queue) >= self.max_queued:
            raise ResourceExhausted(
                f"the cluster is overloaded: {len(self._queue)} tasks wait for room at node "
                f"{self.node.name} (at most {self.max_queued}); try again later"
            )

    def query(self, spec: FunctionSpec) -> PlacementQuery:
        return PlacementQuery(
            need=spec.resources,
            runtime=spec.runtime.value,
            labels=selector_labels(spec.labels),
            objects=input_objects(spec.labels),
            exclude=(self.node.name,),
        )

    def note(self, task: Task, how: str, node: str) -> None:
        self.decisions.append(Decision(task, how, node))
        logger.bind(task_id=task.id).debug("task {}: {} ({})", task.id, how, node)

    @traced_placement  # a `spear.place` span when the node traces (docs/observability.md)
    async def submit(
        self, spec: FunctionSpec, *, stdin: bytes | None = None, task_id: str | None = None
    ) -> Task:
        """Place a new task: here, on another node, in the queue, or FAILED at once
        (`task_id`: under that id, node/idempotency.py)."""
        if task_inputs.kept_for_retries(spec, stdin):  # (refused here if too big)
            task_id = task_id or new_task_id()
            queued = await self._keep_input(spec, stdin, task_id)
            if queued is not None:
                return queued
        if not self.waiting_before(spec.priority):
            here = await self._try_here(spec, stdin, task_id)
            if here is not None:
                self.note(here, "local", self.node.name)
                return here
        self._refuse_if_full()
        task = self.new_task(spec, task_id)
        query = self.query(spec)
        try:
            ranked, could_ever_fit = await self._ranked(query)
        except Unavailable as exc:  # the SMS is briefly away: wait in the queue (issue 16)
            logger.info("task {} waits for the SMS: {}", task.id, exc)
            self._insert(_Queued(task, stdin))
            self.note(task, "queued", self.node.name)
            self._wake.set()
            return task
        if not could_ever_fit and not self._could_ever_run_here(spec):
            return await self._never_fits(task, query)
        if not self.waiting_before(spec.priority):
            placed = await self._place_remotely(task, stdin, ranked)
            if placed is not None:
                return placed  # (the node running it reports it to the SMS)
        return await self.enqueue(task, stdin)

    async def _keep_input(
        self, spec: FunctionSpec, stdin: bytes | None, task_id: str
    ) -> Task | None:
        """Keep a retryable task's stdin at the SMS before it runs anywhere; while the
        SMS is away the task waits in the queue (returned), its stdin kept when placed."""
        assert stdin is not None
        try:
            await self.cluster.keep_task_input(task_id, stdin)
            return None
        except Unavailable as exc:
            logger.info("task {} waits for the SMS to keep its stdin: {}", task_id, exc)
        self._refuse_if_full()
        task = self.new_task(spec, task_id)
        self._insert(_Queued(task, stdin, keep_input=True))
        self.note(task, "queued", self.node.name)
        self._wake.set()
        return task

    def _insert(self, item: _Queued) -> None:
        """Into the queue in placement order (core/fair_queue.py)."""
        spec = item.task.spec
        self._queue.push(item, spec.priority, spec.namespace)

    async def _never_fits(self, task: Task, query: PlacementQuery) -> Task:
        placement = await self.cluster.find_nodes(query)  # (the SMS says why)
        failed = task.transition(
            TaskState.FAILED,
            reason=f"no node in the cluster can run this task: {placement.reason}",
            exit_code=ResourceExhausted.exit_code,
        )
        await self.cluster.report_task(failed)
        self.note(failed, "failed", "")
        return failed

    def new_task(self, spec: FunctionSpec, task_id: str | None = None) -> Task:
        """A task made here, to be placed here or elsewhere under its id."""
        now = time.time()
        return Task(
            id=task_id or new_task_id(),
            spec=spec,
            created_at=now,
            node=self.node.name,
            history=((TaskState.PENDING.value, now),),
            traceparent=current_traceparent.get() or "",  # (set when the node traces)
        )

    async def enqueue(self, task: Task, stdin: bytes | None) -> Task:
        """Queue a task until room appears (ResourceExhausted when the queue is full)."""
        self._refuse_if_full()
        await self.cluster.report_task(task)  # waiting here: registered as this node's
        self._insert(_Queued(task, stdin))
        self.note(task, "queued", self.node.name)
        self._wake.set()
        return task

    async def _place_remotely(
        self, task: Task, stdin: bytes | None, ranked: Sequence[NodeRecord]
    ) -> Task | None:
        """Forward `task` to the best of `ranked`; a node that refuses it (its room was
        taken since the view saw it) or does not answer is passed over, and the task is
        placed again from the corrected view, at most `max_hops` times. None: no room."""
        tried: set[str] = set()
        query = self.query(task.spec)
        candidates = list(ranked)
        for _ in range(self.max_hops):
            candidates = [n for n in candidates if n.name not in tried]
            if not candidates:
                return None
            node = candidates[0]
            tried.add(node.name)
            placed = await self._forward_one(node, task, stdin)
            if placed is not None:
                return placed
            # Spillback: place again from the view as the refusal corrected it.
            candidates = [c.node for c in self.view.candidates(query)] if self.view.known else []
            if not candidates and not self.view.known:
                candidates = [n for n in ranked if n.name not in tried]
        return None

    async def _forward_one(self, node: NodeRecord, task: Task, stdin: bytes | None) -> Task | None:
        self.view.reserve(node.name, task.spec.resources)
        try:
            answer = await self.forwarder.forward_batch(node, [(task, stdin)])
        except Unavailable as exc:
            logger.info("forwarding {} to {} failed: {}", task.id, node.name, exc)
            self.view.forget(node.name)
            return None
        self.view.set_free(node.name, answer.free)
        outcome = answer.outcomes[0]
        if outcome.error is not None:  # the task itself was refused: a bad module, say
            refusal = outcome.error
            failed = task.transition(
                TaskState.FAILED, reason=str(refusal), exit_code=refusal.exit_code
            )
            with contextlib.suppress(SpearError):
                await self.cluster.report_task(failed)
            raise refusal
        if outcome.refused or outcome.task is None:
            logger.debug("task {} refused by {} (no room): placing it again", task.id, node.name)
            return None
        self.remember_forwarded(outcome.task, node)
        return outcome.task

    def remember_forwarded(self, task: Task, node: NodeRecord) -> None:
        self.note(task, "forwarded", node.name)
        if len(self.forwarded_to) >= 10_000:
            self.forwarded_to.clear()
        self.forwarded_to[task.id] = node

    async def place_stream(self, spec: FunctionSpec) -> NodeRecord | None:
        """Where a task started with a caller stream runs: None for here, else the node to
        relay its stream to. Its stream is one call, so it is neither queued nor forwarded
        later: it runs here if it fits here now (or only ever could: it then waits in this
        node's admission queue), else on the best node with room now."""
        if self._fits_here_now(spec):
            return None
        ranked, could_ever_fit = await self._ranked(self.query(spec))
        if ranked:
            return ranked[0]
        if self._could_ever_run_here(spec):
            return None
        if could_ever_fit:
            raise ResourceExhausted("no node has room for a task with a caller stream now")
        placement = await self.cluster.find_nodes(self.query(spec))  # (the SMS says why)
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
        """Place queued tasks, oldest first, as room appears. A head that found no room is
        tried again on a wake-up (a task ended here, the view was refreshed) or after a
        pause that starts at 10 ms and doubles up to `retry_s`: room freed on another node
        is learnt by probing it (its answer says what it has free), so a queue drains at
        the pace tasks end there, not once per heartbeat."""
        task_status.started()
        pause = _FIRST_PAUSE_S
        while True:
            self._wake = anyio.Event()
            placed = 0
            try:
                placed = await self._drain_queue()
            except Exception:  # an SMS hiccup: try again on the next wake-up
                logger.exception("placing queued tasks failed")
            if self._queue:
                pause = _FIRST_PAUSE_S if placed else min(pause * 2, self.retry_s)
                with anyio.move_on_after(pause):
                    await self._wake.wait()
            else:
                await self._wake.wait()

    async def _drain_queue(self) -> int:
        """Place the queue's tasks in order until the head finds no room; how many."""
        placed_count = 0
        while self._queue:
            head = self._queue.head
            # A stop that arrives while the head is being placed waits for the outcome.
            self._placing[head.task.id] = done = anyio.Event()
            try:
                placed = await self._place_head(head)
            finally:
                del self._placing[head.task.id]
                done.set()
            if not placed:
                return placed_count  # the head waits; nothing behind it overtakes it
            self._discard(head)
            placed_count += 1
        return placed_count

    @in_its_trace  # a queued task placed later stays in its trace (docs/observability.md)
    async def _place_head(self, head: _Queued) -> bool:
        spec = head.task.spec
        if head.keep_input and head.stdin is not None:
            try:
                await self.cluster.keep_task_input(head.task.id, head.stdin)
            except Unavailable:
                return False  # the SMS is still away: the head waits
            head.keep_input = False
        try:
            here = await self._try_here(spec, head.stdin, head.task.id)
        except SpearError as exc:  # e.g. a bad module: it fails, the queue moves on
            logger.warning("queued task {} could not start: {}", head.task.id, exc)
            return True
        if here is not None:
            self.note(here, "local", self.node.name)
            return True
        try:
            ranked, _ = await self._ranked(self.query(spec))
        except SpearError:
            return False
        if not ranked and self.view.known:
            # No room anywhere as far as the view knows: probe the node most likely to
            # have some now (its refusal corrects the view; a task ending frees room
            # that the SMS hears of only at the next heartbeat).
            ranked = self.view.could_ever_fit(self.query(spec))[:1]
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
        try:
            return await self.node.controller.submit(
                spec, stdin=stdin, task_id=task_id, previous=previous
            )
        except ResourceExhausted:
            if self.disk.full(look_now=True):  # its record could not be written here
                return None
            raise

    async def adopt(self, task: Task, spec: FunctionSpec, stdin: bytes | None) -> Task:
        """Run a task forwarded by another node here, under its id, if it fits now."""
        adopted = await self._try_here(spec, stdin, task.id, previous=task)
        if adopted is None:
            free = self.node.controller.free
            raise ResourceExhausted(
                f"node {self.node.name} has no room for task {task.id} now "
                f"({free.cpu_millis}m CPU, {free.memory_bytes} bytes free)"
            )
        self.note(adopted, "adopted", self.node.name)
        return adopted

    def accept_forwarded(self, specs: Sequence[FunctionSpec], *, backlog: bool = False) -> Accepted:
        """Which of a forwarded batch this node takes now: in order, those that fit its
        free room, until one does not; that room is promised to them at once (no await
        here), so a batch arriving meanwhile from another node is refused rather than
        given the same room. With `backlog` (a waited batch, which runs in first-in
        first-out waves here), the rest that could ever run here are taken too, while
        this node's backlog stays within `max_queued`: one call instead of one per wave.
        Call `keep_promise` as each promised task is admitted by the controller, and
        `settle_forwarded` with the answer once the taken tasks have ended."""
        controller = self.node.controller
        room = controller.free - self.promised
        accepted = Accepted()
        # A stopping node takes nothing (its server may still serve a peer's open
        # connection), nor one whose disk is full: refused, the tasks are placed
        # elsewhere, not cancelled here.
        running = self.node.state is NodeState.RUNNING and not self.disk.full()
        open_ = running and controller.waiting_count == 0
        for spec in specs:
            open_ = (
                open_
                and not self.waiting_before(spec.priority)
                and self._could_ever_run_here(spec)
                and spec.resources.fits_in(room)
            )
            if open_:
                room = room - spec.resources
                self.promised = self.promised + spec.resources
                accepted.promised.append(spec)
                accepted.taken.append(True)
            elif (
                backlog
                and running
                and self.backlog < self.max_queued
                and self._could_ever_run_here(spec)
            ):
                self.backlog += 1
                accepted.backlog += 1
                accepted.taken.append(True)
            else:
                self.refusals += 1
                accepted.taken.append(False)
        return accepted

    def keep_promise(self, accepted: Accepted, index: int) -> None:
        """The task `accepted.promised[index]` holds its room in the controller now (or
        will not run here): its promise ends, so that room is not counted twice while the
        forwarded call goes on (a waited batch's goes on until its last task ends)."""
        if index not in accepted.kept:
            accepted.kept.add(index)
            self.promised = self.promised - accepted.promised[index].resources

    def settle_forwarded(self, accepted: Accepted) -> None:
        """The forwarded tasks taken by `accept_forwarded` have ended."""
        for index, spec in enumerate(accepted.promised):
            if index not in accepted.kept:
                self.promised = self.promised - spec.resources
        self.backlog -= accepted.backlog
        self._wake.set()


async def owner_of(cluster: Cluster, task_id: str) -> tuple[Task, NodeRecord | None]:
    """The SMS's record of a task and the node holding it (None if unknown or gone)."""
    task = await cluster.task(task_id)
    if not task.node:
        return task, None
    try:
        return task, await cluster.node(task.node)
    except NotFound:
        return task, None
