"""The SMS placing retryable tasks again (core/retry_placement.py) over a real KV, with a
clock we move and a forwarder that records where tasks went (the real ForwardTask path
is tests/cluster/test_retries_cluster.py)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from test_sms import TIMINGS, Clock, GiB, kv, node, task_on  # noqa: F401 (kv: a fixture)

from spear.core.forwarding import BatchAnswer, Forwarded
from spear.core.models import FunctionSpec, Resources, Task, TaskState
from spear.core.retry_placement import RetryPlacement
from spear.core.sms import MetadataServer
from spear.core.worker import EXIT_LOST

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spear.core.cluster import NodeRecord
    from spear.store.kv import KV


class Recorder:
    """A Forwarder that takes every task (or refuses the nodes in `full`)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Task]] = []
        self.full: set[str] = set()

    async def forward_batch(
        self,
        node: NodeRecord,
        tasks: Sequence[tuple[Task, bytes | None]],
        *,
        wait: bool = False,
        output: bool = False,
    ) -> BatchAnswer:
        if node.name in self.full:  # no room there now: refused, nothing recorded
            return BatchAnswer(tuple(Forwarded(refused=True) for _ in tasks), Resources(0, 0))
        self.sent.extend((node.name, task) for task, _ in tasks)
        return BatchAnswer(tuple(Forwarded(task=t) for t, _ in tasks), Resources(0, 0))


def retryable(task: Task, retries: int = 2) -> Task:
    return dataclasses.replace(task, spec=FunctionSpec("m.wasm", max_retries=retries))


async def _alive(sms: MetadataServer, clock: Clock, *names: str) -> None:
    for name in names:
        await sms.heartbeat(name, f"{name}-1", Resources(2000, 4 * GiB), 0, 0)


async def test_a_dead_nodes_retryable_task_goes_to_a_live_node(kv: KV) -> None:  # noqa: F811
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    forwarder = Recorder()
    sms.retries = RetryPlacement(sms, forwarder, clock)
    await sms.register(node("a"))
    await sms.register(node("b"))
    again = await sms.report_task(retryable(task_on("a")))
    once = await sms.report_task(task_on("a"))
    clock.now += 11
    await _alive(sms, clock, "b")
    await sms.sweep()  # a is dead
    pending = await sms.task(again.id)
    assert pending.state is TaskState.PENDING and pending.attempts == 1 and pending.node is None
    assert [(a.node, a.exit_code) for a in pending.attempt_log] == [("a", EXIT_LOST)]
    assert (await sms.task(once.id)).state is TaskState.FAILED  # no retries in its spec
    assert await sms.retries.place_due() == 0  # its back-off has not passed
    clock.now += 1
    assert await sms.retries.place_due() == 1
    assert [(name, t.id, t.attempts) for name, t in forwarder.sent] == [("b", again.id, 1)]
    assert (await sms.task(again.id)).node == "b"
    assert await sms.retries.place_due() == 0  # placed once


async def test_no_room_now_waits_and_a_lost_report_is_retried_too(kv: KV) -> None:  # noqa: F811
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    forwarder = Recorder()
    sms.retries = RetryPlacement(sms, forwarder, clock)
    await sms.register(node("a"))
    # A node restarted after a SIGKILL reports its task lost (process-lost): retried.
    task = retryable(task_on("a"))
    lost = task.transition(
        TaskState.FAILED,
        reason="lost: the process running it exited without finishing it",
        exit_code=EXIT_LOST,
    )
    recorded = await sms.report_task(lost)
    assert recorded.state is TaskState.PENDING and recorded.attempts == 1
    forwarder.full.add("a")
    clock.now += 6
    await _alive(sms, clock, "a")
    assert await sms.retries.place_due() == 0  # the only node is full: it waits
    assert (await sms.task(task.id)).state is TaskState.PENDING
    forwarder.full.clear()
    clock.now += 6
    await _alive(sms, clock, "a")
    assert await sms.retries.place_due() == 1
    assert [name for name, _ in forwarder.sent] == ["a"]
    # A late report of the first attempt changes nothing.
    assert (await sms.report_task(lost)).attempts == 1
