"""Members of a cluster in one process, for the placement rules' tests (the scheduler's,
tests/core/test_scheduler.py; a batch's, tests/cluster/test_batches_rules.py): real
LocalNodes (LevelDB, wasm tasks) each with its `Scheduler`, the SMS's logic on a real
LevelDB (core/sms.py), and a loopback `Forwarder` that hands a forwarded batch to the
receiving node's scheduler as the gRPC receiver does.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from wat_tasks import hello

from spear import FunctionSpec, LocalNode, Runtime
from spear.core.cluster import AgentInfo, NodeRecord
from spear.core.forwarding import BatchAnswer, Forwarded
from spear.core.scheduler import Scheduler
from spear.core.sms import MetadataServer
from spear.errors import SpearError, Unavailable
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from spear.core.models import Task

SLOT = 100  # millicores: a task's default reservation


class Loopback:
    """Forwards a batch to another node's scheduler in this process, as node/peer.py's
    receiver does: what fits now is taken and submitted under its id, the rest refused."""

    def __init__(self) -> None:
        self.receivers: dict[str, Scheduler] = {}
        self.down: set[str] = set()
        self.calls: list[tuple[str, list[str]]] = []

    async def forward_batch(
        self,
        node: NodeRecord,
        tasks: Sequence[tuple[Task, bytes | None]],
        *,
        wait: bool = False,
        output: bool = False,
    ) -> BatchAnswer:
        self.calls.append((node.name, [t.id for t, _ in tasks]))
        if node.name in self.down:
            raise Unavailable(f"node {node.name} does not answer")
        return await self.answer(self.receivers[node.name], tasks, wait=wait, output=output)

    async def answer(
        self,
        receiver: Scheduler,
        tasks: Sequence[tuple[Task, bytes | None]],
        *,
        wait: bool,
        output: bool,
    ) -> BatchAnswer:
        """What `receiver` answers: each task taken now (started under its id; `wait` and
        `output` are not followed here) or refused."""
        accepted = receiver.accept_forwarded([t.spec for t, _ in tasks], backlog=wait)
        outcomes: list[Forwarded] = []
        promise = 0  # (the first ones taken were promised room, in order)
        try:
            for (task, stdin), taken in zip(tasks, accepted.taken, strict=True):
                if not taken:
                    outcomes.append(Forwarded(refused=True))
                    continue
                try:
                    started = await receiver.node.controller.submit(
                        task.spec, stdin=stdin, task_id=task.id, previous=task
                    )
                except SpearError as exc:
                    outcomes.append(Forwarded(error=exc))
                    continue
                finally:
                    if promise < len(accepted.promised):
                        receiver.keep_promise(accepted, promise)
                        promise += 1
                outcomes.append(Forwarded(task=started))
        finally:
            receiver.settle_forwarded(accepted)
        free = receiver.node.controller.free - receiver.promised
        return BatchAnswer(tuple(outcomes), free)


class World:
    """An SMS, a forwarder, and the nodes started so far (`a` is the one under test)."""

    def __init__(
        self,
        tmp_path: Path,
        stack: contextlib.AsyncExitStack,
        sms: MetadataServer,
        forwarder: Loopback | None = None,
    ):
        self.tmp_path = tmp_path
        self.stack = stack
        self.sms = sms
        self.forwarder = forwarder or Loopback()
        self.nodes: dict[str, Scheduler] = {}
        self.hello = str(hello(tmp_path))
        # A blocker that holds its slot without using this process's CPU (a spinning guest
        # would use up the CPU time a mutation run allows each mutant); a cancel kills it.
        script = tmp_path / "sleeper.sh"
        script.write_text("#!/bin/sh\nexec sleep 3600\n")
        script.chmod(0o755)
        self.sleeper = FunctionSpec(str(script), runtime=Runtime.PROCESS)

    async def node(
        self,
        name: str,
        slots: int,
        labels: tuple[tuple[str, str], ...] = (),
        *,
        max_queued: int = 10_000,
        max_hops: int = 3,
        register: bool = True,
    ) -> Scheduler:
        local = await self.stack.enter_async_context(
            LocalNode(self.tmp_path / name, node_name=name, cpu_millis=slots * SLOT)
        )
        scheduler = Scheduler(
            local,
            self.sms,
            self.forwarder,
            labels,
            0.05,
            max_queued=max_queued,
            max_hops=max_hops,
        )
        self.nodes[name] = self.forwarder.receivers[name] = scheduler
        if register:
            await self.register(name)
        return scheduler

    async def register(self, name: str) -> None:
        scheduler = self.nodes[name]
        controller = scheduler.node.controller
        await self.sms.register(
            NodeRecord(
                name=name,
                address=f"loopback:{name}",
                capacity=controller.capacity,
                free=controller.free,
                labels=scheduler.labels,
                agents=tuple(AgentInfo(runtime, "1") for runtime in scheduler.node.agents),
                incarnation="1",
            )
        )

    async def occupy(self, name: str, slots: int) -> list[Task]:
        """Fill `slots` of a node with tasks that run until cancelled."""
        controller = self.nodes[name].node.controller
        return [await controller.submit(self.sleeper) for _ in range(slots)]


W = TypeVar("W", bound=World)


@contextlib.asynccontextmanager
async def world_of(kind: type[W], tmp_path: Path) -> AsyncIterator[W]:
    """A World of `kind` (World or a subclass). (A context in the test's own task, not a
    fixture: the nodes' task groups must be left in the task that entered them.)"""
    kv = LevelDBKV.open(str(tmp_path / "sms.ldb"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            yield kind(tmp_path, stack, MetadataServer(kv))
    finally:
        await kv.aclose()


def _world(tmp_path: Path) -> contextlib.AbstractAsyncContextManager[World]:
    return world_of(World, tmp_path)


def _cat(tmp_path: Path) -> FunctionSpec:
    """A process task that writes its stdin to its stdout."""
    script = tmp_path / "cat.sh"
    script.write_text("#!/bin/sh\ncat\n")
    script.chmod(0o755)
    return FunctionSpec(str(script), runtime=Runtime.PROCESS)


async def _until(check: Any, seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not await check():
            await anyio.sleep(0.01)
