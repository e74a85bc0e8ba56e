"""`ClusterNode`: the `NodeAPI` of a SPEARlet in a cluster.

It wraps the member's `InProcessNode` (`local`) and passes it whatever this node holds;
for the rest it asks the SMS where a task or object lives and proxies the call to that
node, so the CLI works against any node: submit (two-stage scheduling), status, wait, logs
(follow), stop, result, watch, and object get. Objects written here are entered in the
SMS's object index. One task's path goes one way: ClusterNode -> Scheduler (place it) ->
Peers / Client (the node it went to); nothing below calls back up into this module.

Embedding a member without the CLI: `async with spear.join_cluster(data_dir, sms=...)`
(node/assembly.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio

from spear._logging import logger
from spear.core.models import TaskResult, TaskState
from spear.core.scheduler import owner_of
from spear.core.worker import EXIT_LOST
from spear.errors import NotFound, SpearError, Unavailable
from spear.node.api import TaskHandle, read_own_stdin, run_attached

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from spear.core.cluster import Cluster
    from spear.core.models import FunctionSpec, LogChunk, NodeInfo, ObjectInfo, Task
    from spear.core.node import Spearlet
    from spear.core.scheduler import Scheduler
    from spear.node.api import StreamingTask
    from spear.node.client import Client
    from spear.node.inprocess import InProcessNode
    from spear.node.peer import Peers

_POLL_S = 0.05


def _lost(task: Task) -> bool:
    """Whether a node's record says the task was lost with its node or process: the
    cluster may have run it again since, so the SMS's record says more."""
    return task.state is TaskState.FAILED and task.exit_code == EXIT_LOST


@dataclass(slots=True)
class _Where:
    kind: str  # local, queued, remote, record
    record: Task | None = None
    client: Client | None = None


class ClusterNode:
    """A `NodeAPI` for a cluster member: its own node (`local`), the SMS (`cluster`), the
    scheduler that places tasks, and clients for the other members (`peers`)."""

    def __init__(
        self, local: InProcessNode, cluster: Cluster, scheduler: Scheduler, peers: Peers
    ) -> None:
        self.local = local
        self.cluster = cluster
        self.scheduler = scheduler
        self.peers = peers

    # -- what the server and the daemon read of the node ---------------------------------

    @property
    def node(self) -> Spearlet:
        return self.local.node

    @property
    def address(self) -> str:
        return self.local.address

    @address.setter
    def address(self, value: str) -> None:
        self.local.address = value

    @property
    def max_message_bytes(self) -> int:
        return self.local.max_message_bytes

    @max_message_bytes.setter
    def max_message_bytes(self, value: int) -> None:
        self.local.max_message_bytes = value

    @property
    def draining(self) -> bool:
        return self.local.draining

    @property
    def in_process(self) -> bool:
        return True

    async def node_info(self) -> NodeInfo:
        return await self.local.node_info()

    async def drain(self, grace_s: float) -> None:
        await self.local.drain(grace_s)

    async def aclose(self) -> None:
        """The node belongs to whoever started it; closing the adapter leaves it running."""

    def _refuse_if_draining(self) -> None:
        if self.local.draining:
            raise Unavailable(f"node {self.node.name} is draining: it accepts no new tasks")

    async def _where(self, task_id: str) -> _Where:
        try:  # (a prefix of one of this node's tasks; else the SMS resolves it)
            here = await self.local.task(task_id)
        except NotFound:
            pass
        else:
            moved_on = await self._moved_on(here) if _lost(here) else None
            return moved_on or _Where("local", here)
        queued = self.scheduler.queued_task(task_id)
        if queued is not None:
            return _Where("queued", queued)
        sent = self.scheduler.forwarded_to.get(task_id)
        if sent is not None:  # forwarded from here: it stays there, unless lost there
            return _Where("remote", None, self.peers.client(sent.address))
        return await self._by_record(task_id)

    async def _by_record(self, task_id: str) -> _Where:
        """Where the SMS's record says the task is."""
        record, owner = await owner_of(self.cluster, task_id)
        if owner is None or owner.name == self.node.name or not owner.health.live:
            return _Where("record", record)
        return _Where("remote", record, self.peers.client(owner.address))

    async def _moved_on(self, lost: Task) -> _Where | None:
        """Where a task went on after a node recorded it `lost` (this node before a
        restart, or the node it was forwarded to): the cluster may have run it again
        elsewhere, or here (core/retries.py). None if the SMS knows no more than `lost`."""
        self.scheduler.forwarded_to.pop(lost.id, None)
        try:
            where = await self._by_record(lost.id)
        except SpearError:
            return None
        record = where.record
        if record is None or (record.state.terminal and record.attempts <= lost.attempts):
            return None
        return where

    # -- tasks -----------------------------------------------------------------------

    async def submit(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> TaskHandle:
        self._refuse_if_draining()
        if idempotency_key is not None:
            from spear.node.idempotency import submit_once

            async def start(task_id: str) -> Task:
                return await self.scheduler.submit(spec, stdin=stdin, task_id=task_id)

            return TaskHandle(self, await submit_once(idempotency_key, self.task, start))
        return TaskHandle(self, await self.scheduler.submit(spec, stdin=stdin))

    async def run(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | Literal["inherit"] | None = None,
        stdout: Callable[[bytes], None] | None = None,
        stderr: Callable[[bytes], None] | None = None,
        on_created: Callable[[Task], None] | None = None,
    ) -> Task:
        if self.scheduler.fits_here_now(spec):
            # Local first, as the scheduler would place it: run in the caller's task, as a
            # single node does (no PENDING record first, no wait for its end to be read).
            return await self.local.run(
                spec, stdin=stdin, stdout=stdout, stderr=stderr, on_created=on_created
            )
        stdin = read_own_stdin(stdin)  # placed by the scheduler, perhaps on another node
        return await run_attached(
            self, spec, stdin=stdin, stdout=stdout, stderr=stderr, on_created=on_created
        )

    async def call(self, spec: FunctionSpec, *, stdin: bytes | None = None) -> TaskResult:
        if self.scheduler.fits_here_now(spec):
            # Here, as `run` runs it; answered before its result is committed to the SMS.
            return await self.local.call(spec, stdin=stdin, hooks_later=True)
        self._refuse_if_draining()
        from spear.node.batches import run_batch

        # Placed by the scheduler; forwarded, its result comes back in the same call.
        (outcome,) = await run_batch(self, [spec], [stdin], output=True)
        if isinstance(outcome, SpearError):
            raise outcome
        return outcome

    def forwarded_address(self, task_id: str) -> str | None:
        """The gRPC address of the member this node forwarded `task_id` to (None: it ran
        here, or was not seen here)."""
        record = self.scheduler.forwarded_to.get(task_id)
        return None if record is None else record.address

    async def run_many(
        self, specs: Sequence[FunctionSpec], stdins: Sequence[bytes | None] | None = None
    ) -> list[Task | SpearError]:
        """Run tasks to their ends, placed as batches across the cluster (node/batches.py);
        each entry is the finished task, or why it was refused."""
        self._refuse_if_draining()
        from spear.node.batches import run_batch

        return [
            o if isinstance(o, SpearError) else o.task for o in await run_batch(self, specs, stdins)
        ]

    @contextlib.asynccontextmanager
    async def start_task(
        self, spec: FunctionSpec, *, stdin: bytes | None = None
    ) -> AsyncIterator[StreamingTask]:
        """A task with its caller stream: here, or on another node with its stream relayed
        through this one (see Scheduler.place_stream)."""
        self._refuse_if_draining()
        target = await self.scheduler.place_stream(spec)
        if target is None:
            async with self.local.start_task(spec, stdin=stdin) as task:
                yield task
            return
        async with self.peers.client(target.address).start_task(spec, stdin=stdin) as task:
            # Asked about it later (wait, result), this node calls the one running it,
            # without asking the SMS, which may not have heard of it yet.
            self.scheduler.remember_forwarded(task.task, target)
            yield task

    async def tasks(self, state: TaskState | None = None, limit: int | None = None) -> list[Task]:
        """The cluster's tasks (the SMS's registry), newest first; this node's own if the
        SMS does not answer."""
        try:
            return await self.cluster.tasks(state, limit)
        except Unavailable as exc:
            logger.warning("listing this node's tasks only: {}", exc)
            return await self.local.tasks(state, limit)

    async def task(self, task_id: str) -> Task:
        where = await self._where(task_id)
        if where.client is not None:
            try:
                answer = await where.client.task(task_id)
            except Unavailable as exc:
                logger.debug("task {}: its node did not answer ({})", task_id, exc)
                if where.record is None:  # known from forwarding it: ask the SMS now
                    self.scheduler.forwarded_to.pop(task_id, None)
                    return await self.task(task_id)
            else:
                moved_on = await self._moved_on(answer) if _lost(answer) else None
                if moved_on is None:
                    return answer
                where = moved_on
                if where.client is not None:  # (one more hop: no loop)
                    with contextlib.suppress(Unavailable):
                        return await where.client.task(task_id)
        assert where.record is not None
        return where.record

    async def wait(self, task_id: str) -> Task:
        while True:
            where = await self._where(task_id)
            final = None
            if where.kind == "local":
                final = await self.local.wait(task_id)
            elif where.client is not None:
                try:
                    final = await where.client.wait(task_id)
                except Unavailable:  # its node went away: the SMS will say how it ended
                    self.scheduler.forwarded_to.pop(task_id, None)
            elif where.kind == "record" and where.record is not None:
                if where.record.state.terminal:
                    final = where.record
            if final is not None and (not _lost(final) or await self._moved_on(final) is None):
                return final
            await anyio.sleep(_POLL_S)

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        where = await self._where(task_id)
        if where.kind == "local":
            async for task in self.local.watch(task_id):
                yield task
        elif where.client is not None:
            async for task in where.client.watch(task_id):
                yield task
        else:
            assert where.record is not None
            yield where.record
            final = await self.wait(task_id)
            if final != where.record:
                yield final

    async def cancel(self, task_id: str, reason: str = "cancelled") -> Task:
        where = await self._where(task_id)
        if where.kind == "local":
            return await self.local.cancel(task_id, reason)
        if where.kind == "queued":
            cancelled = await self.scheduler.cancel(task_id, reason)
            if cancelled is not None:
                return cancelled
            return await self.cancel(task_id, reason)  # placed meanwhile: follow it
        if where.client is not None:
            return await where.client.cancel(task_id, reason)
        assert where.record is not None
        if where.record.state.terminal:
            return where.record
        raise Unavailable(f"task {task_id} is on node {where.record.node}, which is not live")

    async def result(self, task_id: str, *, wait: bool = True) -> TaskResult:
        where = await self._where(task_id)
        if where.kind == "local":
            return await self.local.result(task_id, wait=wait)
        if where.client is not None:
            return await where.client.result(task_id, wait=wait)
        task = await (self.wait(task_id) if wait else self.task(task_id))
        if not task.state.terminal:
            raise Unavailable(f"task {task_id} has not finished (it is {task.state.value})")
        again = await self._where(task_id)
        if again.client is not None:
            return await again.client.result(task_id, wait=False)
        return TaskResult(task, b"")  # its node is gone, and its output with it

    async def logs(
        self, task_id: str, streams: Sequence[str] = (), *, follow: bool = False
    ) -> AsyncIterator[LogChunk]:
        where = await self._where(task_id)
        if where.kind == "queued" and follow:
            await self._until_placed(task_id)
            where = await self._where(task_id)
        if where.client is not None:
            async for chunk in where.client.logs(task_id, streams, follow=follow):
                yield chunk
            return
        if where.kind == "local":
            async for chunk in self.local.logs(task_id, streams, follow=follow):
                yield chunk

    async def _until_placed(self, task_id: str) -> None:
        """Poll until a queued task has a node (placement is decided across processes)."""
        with anyio.move_on_after(3600):
            while True:
                if self.scheduler.queued_task(task_id) is None:
                    if (await self._where(task_id)).kind != "record":
                        return
                await anyio.sleep(_POLL_S)

    # -- objects ---------------------------------------------------------------------

    async def put_object(
        self, key: str, data: bytes, *, expected_version: int | None = None
    ) -> ObjectInfo:
        # The store commits with the SMS's object index itself (node/object_space.py).
        return await self.local.put_object(key, data, expected_version=expected_version)

    async def get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        try:
            return await self.local.get_object(key)
        except NotFound:
            pass
        for loc in await self.cluster.locate_object(key):
            if loc.node == self.node.name:
                continue
            try:
                holder = await self.cluster.node(loc.node)
                if not holder.health.live:
                    continue
                return await self.peers.client(holder.address).get_object(key)
            except (NotFound, Unavailable):
                continue
        raise NotFound(f"no such object: {key} (on this node or any live node)")

    async def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        return await self.local.list_objects(prefix)

    async def add_object_ref(self, key: str) -> ObjectInfo:
        return await self.local.add_object_ref(key)

    async def remove_object_ref(self, key: str) -> ObjectInfo:
        return await self.local.remove_object_ref(key)

    async def pin_object(self, key: str) -> ObjectInfo:
        return await self.local.pin_object(key)

    async def unpin_object(self, key: str) -> ObjectInfo:
        return await self.local.unpin_object(key)

    async def delete_tasks(
        self,
        task_ids: Sequence[str] = (),
        *,
        older_than_s: float | None = None,
        keep: int | None = None,
        namespace: str | None = None,
    ) -> list[str]:
        """Finished tasks, each deleted by the node that ran it (its record, logs and
        result; core/retention.py): tasks named by id wherever they ran, the rules
        (`older_than_s`, `keep`) only over this node's own."""
        here: list[str] = []
        gone: list[str] = []
        for task_id in task_ids:  # (ids already resolved and in the caller's namespace)
            where = await self._where(task_id)
            if where.client is not None:
                gone += await where.client.delete_tasks([task_id])
            elif where.kind == "record" and where.record and where.record.node != self.node.name:
                raise Unavailable(
                    f"task {task_id} ran on node {where.record.node}, which is not live:"
                    " its record, logs and result are deleted there"
                )
            else:
                here.append(task_id)
        return gone + await self.local.delete_tasks(
            here, older_than_s=older_than_s, keep=keep, namespace=namespace
        )

    async def delete_object(self, key: str, *, force: bool = False) -> bool:
        deleted = await self.local.delete_object(key, force=force)
        if deleted:
            try:
                await self.cluster.remove_object_location(key, self.node.name)
            except SpearError as exc:
                logger.warning("object {} still in the SMS index: {}", key, exc)
        return deleted
