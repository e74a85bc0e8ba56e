"""The SMS's side of retries (issue 16): a lost node's retryable tasks run again elsewhere.

When the sweeper declares a node dead (core/sms.py), each of its unfinished tasks whose
spec retries "node-lost" (core/retries.py) is recorded PENDING for its next attempt
instead of FAILED, on no node, and queued under `retry/<id>` with the time its back-off
ends. So is a task a node reports FAILED with a failure its spec retries that the node
could not retry itself: "process-lost", found by a node restarted after a SIGKILL, or
stopped with its node. Each
sweep then places the due ones, as a SPEARlet places a task it has no room for: a live
node with room (core/scheduler.py's ranking), the task forwarded to it under its own id
with its attempts and history (ForwardTask; the node adopts it, and reports it from
then on). The queue is in the KV, so an SMS that takes over finds it.

A task that no live node can ever run ends FAILED with the reason (with no live node at
all, it waits for one: a one-node cluster restarting); one that fits nowhere now
waits in the queue for room. A task given stdin is retried with it: the node it was
submitted to kept it here (core/task_inputs.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING

from spear._logging import logger
from spear.core import retries, task_inputs
from spear.core.cluster import PlacementQuery, input_objects, selector_labels
from spear.core.cluster_view import rank_candidates
from spear.core.models import TaskState
from spear.errors import NotFound, ResourceExhausted, SpearError, Unavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from spear.core.forwarding import Forwarder
    from spear.core.models import Task
    from spear.core.sms import MetadataServer

_RETRY = "retry/"
_BATCH = 500  # tasks placed per sweep at most (the rest on the next)
_FORGET_EVERY = 20  # sweeps between looks for the kept stdin of finished tasks


class RetryPlacement:
    """Queues a lost node's retryable tasks and places them on live nodes."""

    def __init__(
        self,
        sms: MetadataServer,
        forwarder: Forwarder,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sms = sms
        self._forwarder = forwarder
        self._clock = clock
        self.placed = 0  # tasks sent to a live node again (read by tests and benchmarks)
        self._sweeps = 0
        # Kept stdin of tasks the SMS had no record of, at the last look and at this one.
        self._unknown: set[str] = set()
        self._seen_unknown: set[str] = set()

    def next_attempt(self, failed: Task) -> Task | None:
        """The record to write instead of `failed` (a task of a lost node, FAILED "node
        lost") if its spec retries that: PENDING for its next attempt, not yet placed."""
        if not retries.should_retry(failed, failed.exit_code, failed.reason):
            return None
        now = self._clock()
        lost = dataclasses.replace(failed, history=failed.history[:-1])  # (FAILED re-added)
        again = retries.next_attempt(
            lost, failed.exit_code or 0, failed.reason or retries.NODE_LOST, now
        )
        return dataclasses.replace(again, node=None)  # on no node until placed

    async def queue(self, task: Task) -> None:
        """Place `task` (recorded by `next_attempt`) once its back-off has passed."""
        due = self._clock() + retries.backoff_s(task.attempts)
        await self._sms.kv.put(_RETRY + task.id, repr(due).encode())

    async def place_due(self) -> int:
        """Place each queued task whose back-off has passed; returns how many went.
        Now and then, the kept stdin of tasks that ended is forgotten."""
        self._sweeps += 1
        if self._sweeps % _FORGET_EVERY == 0:
            self._seen_unknown = set()
            await task_inputs.forget_finished(self._sms.kv, self._finished)
            self._unknown = self._seen_unknown
        now = self._clock()
        placed = 0
        for entry in await self._sms.kv.scan(_RETRY, limit=_BATCH):
            task_id = entry.key[len(_RETRY) :]
            try:
                due = float(entry.value)
            except ValueError:
                due = 0.0
            if due > now:
                continue
            try:
                done = await self._place(task_id)
            except SpearError as exc:  # the SMS's own store or a node hiccup: next sweep
                logger.warning("placing retried task {} failed: {}", task_id, exc)
                continue
            if done:
                placed += 1
                await self._sms.kv.delete(entry.key)
        return placed

    async def _finished(self, task_id: str) -> bool:
        """Whether the task of a kept stdin has ended. One with no record yet may not be
        reported yet (its stdin is kept before it runs): gone only if still unknown at
        the next look."""
        try:
            return (await self._sms.task(task_id)).state.terminal
        except NotFound:
            if task_id in self._unknown:
                return True
            self._seen_unknown.add(task_id)
            return False

    async def _place(self, task_id: str) -> bool:
        """Send the task to a live node; False if none has room now (it stays queued)."""
        try:
            task = await self._sms.task(task_id)
        except NotFound:
            return True
        if task.state is not TaskState.PENDING or not task.attempts:
            return True  # cancelled, or adopted by a node already
        spec = task.spec
        query = PlacementQuery(
            need=spec.resources,
            runtime=spec.runtime.value,
            labels=selector_labels(spec.labels),
            objects=input_objects(spec.labels),
        )
        placement = await self._sms.find_nodes(query)
        if placement.no_live_node:
            return False  # no live node at all (the cluster restarting): it waits for one
        if not placement.could_ever_fit:
            await self._sms.report_task(
                task.transition(
                    TaskState.FAILED,
                    reason=f"no node in the cluster can run this task: {placement.reason}",
                    exit_code=ResourceExhausted.exit_code,
                )
            )
            return True
        stdin = await task_inputs.kept(self._sms.kv, task_id)
        for candidate in rank_candidates(placement.candidates):
            there = dataclasses.replace(task, node=candidate.node.name)
            await self._sms.report_task(there)  # (its node's loss is noticed from now on)
            try:
                answer = await self._forwarder.forward_batch(candidate.node, [(there, stdin)])
                [outcome] = answer.outcomes
                if outcome.refused:  # no room there now (core/scheduler.py: spillback)
                    raise ResourceExhausted(f"no room at {candidate.node.name} now")
                if outcome.error is not None:
                    raise outcome.error
            except (ResourceExhausted, Unavailable) as exc:
                logger.info("retried task {}: {} refused it: {}", task_id, candidate.node.name, exc)
                continue
            except SpearError as exc:  # the task itself refused (its module gone, say)
                # (if this report fails too, the error leaves it queued: placed again and
                # refused again at the next sweep, not left PENDING on a node without it)
                await self._sms.report_task(
                    there.transition(TaskState.FAILED, reason=str(exc), exit_code=exc.exit_code)
                )
                return True
            self.placed += 1
            logger.info(
                "task {}: attempt {} placed on {}", task_id, task.attempts + 1, candidate.node.name
            )
            return True
        with contextlib.suppress(SpearError):  # on no node until one takes it
            await self._sms.report_task(dataclasses.replace(task, node=None))
        return False
