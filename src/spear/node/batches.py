"""A batch of tasks run to their ends across a cluster, placed as batches (issue #17).

`run_batch` is what a cluster member does with SubmitTasks (every task waited for) and
with a call (CallTask, RunTask) that does not fit here: the tasks that fit this node now run here
as one `run_many` wave; the rest are placed from the node's view of the cluster, one
ForwardTasks call per receiving node, answered with the tasks' ends and results (no
second call to fetch them). Tasks that find no room anywhere now are dealt in turn to
this node and every other that could run them: each runs its share in first-in-first-out
waves (`run_many`; a receiver keeps it in its bounded backlog), so a batch larger than
the cluster's free room runs on every node at once, not on this one while the others
idle. A receiver that refuses some (the view was stale, its backlog full) has them
placed again from the corrected view once an answer arrives, at most `max_hops` times
each; then they wait in the scheduler's bounded queue, and over its bound they are
refused with ResourceExhausted. Tasks with stdin or input objects (data affinity needs
the SMS's object index) take the one-task path, and so do those no node in the view could
ever run: the SMS may know a node that joined since, else they fail at once with the
reason, as a task submitted alone does (not wait in the queue for ever, and the batch's
answer with them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from spear.core.cluster import input_objects
from spear.core.models import TaskResult
from spear.errors import SpearError, Unavailable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spear.core.cluster import NodeRecord
    from spear.core.models import FunctionSpec, Task
    from spear.node.cluster import ClusterNode

Outcome = TaskResult | SpearError


class _Batch:
    def __init__(
        self,
        api: ClusterNode,
        specs: Sequence[FunctionSpec],
        stdins: Sequence[bytes | None],
        output: bool,
    ) -> None:
        self.api = api
        self.scheduler = api.scheduler
        self.specs = specs
        self.stdins = stdins
        self.output = output
        self.results: list[Outcome | None] = [None] * len(specs)
        self.tasks: dict[int, Task] = {}
        self.hops: dict[int, int] = {}
        self.refused: list[int] = []
        self.in_flight = 0
        self.turn = 0  # whose turn it is to take a task no node has room for now
        self.changed = anyio.Event()

    async def _output(self, task: Task) -> bytes:
        if not self.output:
            return b""
        return await self.api.local.output(task.id)

    async def run_here(self, indices: list[int]) -> None:
        """Run tasks here as one `run_many` (waves as room appears, first in first out)."""
        controller = self.scheduler.node.controller
        refusals: dict[str, SpearError] = {}
        try:
            # Answered once the ends are recorded; results kept right after (each a commit
            # with the SMS: one after another, they held up every wave).
            ended = await controller.run_many(
                [self.specs[i] for i in indices], refusals=refusals, hooks_later=True
            )
        except SpearError as exc:
            for i in indices:
                self.results[i] = exc
            return
        for i, task in zip(indices, ended, strict=True):
            refused = refusals.get(task.id)  # (a bad module: refused as `submit` is)
            self.results[i] = refused or TaskResult(task, await self._output(task))

    async def one_by_one(self, i: int) -> None:
        """The one-task path: placed by the scheduler (queued if need be), then waited for."""
        try:
            handle = await self.api.submit(self.specs[i], stdin=self.stdins[i])
            self.results[i] = await self.api.result(handle.id)
        except SpearError as exc:
            self.results[i] = exc

    async def queued(self, i: int) -> None:
        """Wait in the scheduler's queue (bounded: refused when full), then for the end."""
        try:
            task = await self.scheduler.enqueue(self.tasks[i], None)
            self.results[i] = await self.api.result(task.id)
        except SpearError as exc:
            self.results[i] = exc

    async def forward(self, node: NodeRecord, indices: list[int]) -> None:
        """One ForwardTasks call to `node`, waited for; refused tasks go back to be placed."""
        try:
            answer = await self.scheduler.forwarder.forward_batch(
                node, [(self.tasks[i], None) for i in indices], wait=True, output=self.output
            )
        except Unavailable:
            self.scheduler.view.forget(node.name)
            self.refused.extend(indices)
        except SpearError as exc:
            for i in indices:
                self.results[i] = exc
        else:
            self.scheduler.view.set_free(node.name, answer.free)
            for i, outcome in zip(indices, answer.outcomes, strict=True):
                if outcome.error is not None:
                    self.results[i] = outcome.error
                elif outcome.refused or outcome.task is None:
                    self.refused.append(i)
                else:
                    self.scheduler.remember_forwarded(outcome.task, node)
                    self.results[i] = TaskResult(outcome.task, outcome.output)
        finally:
            self.in_flight -= 1
            self.changed.set()

    def split_here(self, indices: Sequence[int]) -> tuple[list[int], list[int]]:
        """The tasks that fit this node's free room now (in order, while nobody waits here
        before them), and the rest."""
        scheduler = self.scheduler
        controller = scheduler.node.controller
        room = scheduler.room_here()
        open_ = controller.waiting_count == 0
        here: list[int] = []
        rest: list[int] = []
        for i in indices:
            spec = self.specs[i]
            need = spec.resources
            open_ = open_ and not scheduler.waiting_before(spec.priority)
            if open_ and scheduler.could_ever_run_here(spec) and need.fits_in(room):
                room = room - need
                here.append(i)
            else:
                rest.append(i)
        return here, rest

    def place(self, indices: Sequence[int]) -> tuple[dict[str, list[int]], list[int]]:
        """Tasks given to nodes ("": this one), and those no node could run: those the
        view finds room for go there (the room debited); those that find none anywhere
        are dealt in turn to this node and the others that could run them, or, if this
        node could not, go to the likeliest other. A node other than this one keeps them
        in its backlog (a wave of its own `run_many`) or refuses them: one call per node,
        not one per wave."""
        scheduler = self.scheduler
        view = scheduler.view
        batches: dict[str, list[int]] = {}
        rest: list[int] = []
        for i in indices:
            query = scheduler.query(self.specs[i])
            candidates = view.candidates(query)
            if candidates:
                name = candidates[0].node.name
                view.reserve(name, self.specs[i].resources)
            elif scheduler.could_ever_run_here(self.specs[i]):
                # Dealt in turn to this node and the others that could run it; one that
                # was refused already waits here (it is sure of a place in its waves).
                others = [] if i in self.hops else view.could_ever_fit(query)
                turns = ["", *sorted(n.name for n in others)]
                name = turns[self.turn % len(turns)]
                self.turn += 1
            elif likeliest := view.could_ever_fit(query):
                name = likeliest[0].name  # its backlog, or a refusal: placed again then
            else:
                rest.append(i)
                continue
            batches.setdefault(name, []).append(i)
        return batches, rest


async def run_batch(
    api: ClusterNode,
    specs: Sequence[FunctionSpec],
    stdins: Sequence[bytes | None] | None = None,
    *,
    output: bool = False,
) -> list[Outcome]:
    """Run `specs` to their ends across the cluster; each entry is the task's result (its
    output only with `output`), or why it was refused."""
    batch = _Batch(api, specs, stdins or [None] * len(specs), output)
    scheduler = api.scheduler
    solo = [i for i, s in enumerate(specs) if batch.stdins[i] or input_objects(s.labels)]
    plain = [i for i in range(len(specs)) if i not in set(solo)]
    here, pending = batch.split_here(plain)
    if pending and not scheduler.view.known:
        try:
            await scheduler.refresh_view()
        except SpearError:
            solo, pending = solo + pending, []  # no view: each placed by the SMS
    for i in pending:
        batch.tasks[i] = scheduler.new_task(specs[i])
    async with anyio.create_task_group() as tg:
        if here:
            tg.start_soon(batch.run_here, here)
        for i in solo:
            tg.start_soon(batch.one_by_one, i)
        while True:
            placed, pending = batch.place(sorted(pending))
            later_here = placed.pop("", None)
            if later_here:  # this node's share of what finds no room now: its waves
                tg.start_soon(batch.run_here, later_here)
            for name, indices in placed.items():
                node = scheduler.view.node(name)
                assert node is not None
                batch.in_flight += 1
                tg.start_soon(batch.forward, node, indices)
            # No node in the view could ever run these, whatever room frees up: placed as
            # one task is, by the SMS (a node the view does not know yet), or failed.
            for i in pending:
                tg.start_soon(batch.one_by_one, i)
            pending = []
            if batch.in_flight == 0:
                break
            await batch.changed.wait()
            batch.changed = anyio.Event()
            for i in batch.refused:
                batch.hops[i] = batch.hops.get(i, 0) + 1
                if batch.hops[i] >= scheduler.max_hops:
                    tg.start_soon(batch.queued, i)  # refused too often: wait in the queue
                else:
                    pending.append(i)
            batch.refused.clear()
    out: list[Outcome] = []
    for result in batch.results:
        assert result is not None
        out.append(result)
    return out
