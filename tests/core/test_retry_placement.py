"""The SMS placing retryable tasks again (core/retry_placement.py) over a real KV, with a
clock we move and a forwarder that records where tasks went (the real ForwardTask path
is tests/cluster/test_retries_cluster.py)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest
from test_sms import TIMINGS, Clock, GiB, kv, node, task_on  # noqa: F401 (kv: a fixture)

from spear.core.forwarding import BatchAnswer, Forwarded
from spear.core.models import FunctionSpec, Resources, Task, TaskState
from spear.core.retry_placement import RetryPlacement
from spear.core.sms import MetadataServer
from spear.core.worker import EXIT_LOST
from spear.errors import InvalidModule, SpearError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spear.core.cluster import NodeRecord
    from spear.store.kv import KV


class Recorder:
    """A Forwarder that takes every task, noting where it went and its stdin, except on
    the nodes in `full` (no room there now: refused). With `refuse_first`, the first node
    asked is full from then on; with `error`, every node refuses each task for itself."""

    def __init__(self, *, refuse_first: bool = False, error: SpearError | None = None) -> None:
        self.sent: list[tuple[str, Task]] = []
        self.stdins: list[bytes | None] = []
        self.full: set[str] = set()
        self.refuse_first = refuse_first
        self.error = error

    async def forward_batch(
        self,
        node: NodeRecord,
        tasks: Sequence[tuple[Task, bytes | None]],
        *,
        wait: bool = False,
        output: bool = False,
    ) -> BatchAnswer:
        if self.refuse_first and not self.full:
            self.full.add(node.name)  # (whichever node ranks first: full now)
        if node.name in self.full:  # no room there now: refused, nothing recorded
            return BatchAnswer(tuple(Forwarded(refused=True) for _ in tasks), Resources(0, 0))
        if self.error is not None:
            return BatchAnswer(tuple(Forwarded(error=self.error) for _ in tasks), Resources(0, 0))
        self.sent.extend((node.name, task) for task, _ in tasks)
        self.stdins.extend(stdin for _, stdin in tasks)
        return BatchAnswer(tuple(Forwarded(task=t) for t, _ in tasks), Resources(0, 0))


def module_gone() -> Recorder:
    """A Forwarder whose every node refuses the task for itself: its module is gone."""
    return Recorder(error=InvalidModule("its module is gone"))


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


async def test_a_kept_stdin_goes_with_the_retry_and_is_forgotten_once_it_ends(
    kv: KV,  # noqa: F811
) -> None:
    from spear.core import retry_placement, task_inputs

    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    forwarder = Recorder()
    sms.retries = RetryPlacement(sms, forwarder, clock)
    await sms.register(node("a"))
    await sms.register(node("b"))
    kept = await sms.report_task(retryable(task_on("a")))
    bare = await sms.report_task(retryable(task_on("a")))
    await sms.keep_task_input(kept.id, b"the input")
    clock.now += 11
    await _alive(sms, clock, "b")
    await sms.sweep()  # a is dead: both retried, one with its stdin
    clock.now += 1
    assert await sms.retries.place_due() == 2
    assert sorted(forwarder.stdins, key=repr) == sorted([b"the input", None], key=repr)
    # While it runs again its stdin stays (it may be lost again); once it ended, it goes.
    for _ in range(retry_placement._FORGET_EVERY):
        await sms.retries.place_due()
    assert await task_inputs.kept(kv, kept.id) == b"the input"
    running = (await sms.task(kept.id)).transition(TaskState.RUNNING)
    await sms.report_task(running.transition(TaskState.COMPLETED, exit_code=0))
    assert (await sms.task(bare.id)).state is TaskState.PENDING
    for _ in range(retry_placement._FORGET_EVERY):
        await sms.retries.place_due()
    assert await task_inputs.kept(kv, kept.id) is None


async def test_a_stdin_kept_before_its_task_is_reported_stays_a_while(
    kv: KV,  # noqa: F811
) -> None:
    """The node keeps a task's stdin before the task runs and reports it: a look that
    finds no record yet keeps it; one more look that still finds none forgets it."""
    from spear.core import retry_placement, task_inputs

    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    sms.retries = RetryPlacement(sms, Recorder(), clock)
    await sms.keep_task_input("not-reported-yet", b"input")
    for _ in range(retry_placement._FORGET_EVERY):
        await sms.retries.place_due()
    assert await task_inputs.kept(kv, "not-reported-yet") == b"input"
    for _ in range(retry_placement._FORGET_EVERY):
        await sms.retries.place_due()
    assert await task_inputs.kept(kv, "not-reported-yet") is None


def test_only_a_task_that_may_run_elsewhere_keeps_its_stdin_and_not_a_huge_one() -> None:
    import pytest

    from spear.core.task_inputs import MAX_KEPT_BYTES, kept_for_retries
    from spear.errors import InvalidArgument

    spec = FunctionSpec("m.wasm", max_retries=1)
    assert kept_for_retries(spec, b"x")
    assert not kept_for_retries(spec, b"")
    assert not kept_for_retries(spec, None)
    assert not kept_for_retries(FunctionSpec("m.wasm"), b"x")  # no retries
    assert not kept_for_retries(FunctionSpec("m.wasm", max_retries=1, retry_on=("exit",)), b"x")
    assert kept_for_retries(FunctionSpec("m.wasm", max_retries=1, retry_on=("process-lost",)), b"x")
    assert kept_for_retries(spec, b"x" * MAX_KEPT_BYTES)
    with pytest.raises(InvalidArgument, match="--max-retries 0"):
        kept_for_retries(spec, b"x" * (MAX_KEPT_BYTES + 1))


async def test_with_no_live_node_at_all_a_retry_waits_for_one(kv: KV) -> None:  # noqa: F811
    """The only node died: its retry is not failed for want of a node, it waits, and goes
    to the node once it is back (a one-node cluster whose node restarts)."""
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    forwarder = Recorder()
    sms.retries = RetryPlacement(sms, forwarder, clock)
    await sms.register(node("a"))
    again = await sms.report_task(retryable(task_on("a")))
    clock.now += 11
    await sms.sweep()  # a is dead: no live node at all
    clock.now += 1
    assert await sms.retries.place_due() == 0
    waiting = await sms.task(again.id)
    assert (waiting.state, waiting.attempts, waiting.node) == (TaskState.PENDING, 1, None)
    assert forwarder.sent == []
    await sms.register(dataclasses.replace(node("a"), incarnation="a-2"))  # a restarted
    clock.now += 1
    assert await sms.retries.place_due() == 1
    assert [(name, t.id) for name, t in forwarder.sent] == [("a", again.id)]
    # With a live node, a task no live node could ever run still fails, with the reason.
    await sms.register(node("b"))
    gpu = FunctionSpec("m.wasm", max_retries=2, labels=(("gpu", "yes"),))
    never = await sms.report_task(dataclasses.replace(task_on("b"), spec=gpu))
    clock.now += 11
    await sms.heartbeat("a", "a-2", Resources(2000, 4 * GiB), 0, 0)
    await sms.sweep()  # b is dead, a lives
    clock.now += 1
    await sms.retries.place_due()
    failed = await sms.task(never.id)
    assert failed.state is TaskState.FAILED
    assert (
        failed.reason
        == "no node in the cluster can run this task: no live node has the labels gpu=yes"
    )


# -- each rule of a sweep on its own (the mutation run's survivors) ----------------------


async def _one_queued(
    kv: KV,  # noqa: F811
    forwarder: Recorder,
    *live: str,
    task: Task | None = None,
) -> tuple[MetadataServer, Clock, Task]:
    """An SMS whose node a died with one retryable task, queued and due; `live` alive."""
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    sms.retries = RetryPlacement(sms, forwarder, clock)
    for name in ("a", *live):
        await sms.register(node(name))
    again = await sms.report_task(task or retryable(task_on("a")))
    clock.now += 11
    await _alive(sms, clock, *live)
    await sms.sweep()
    clock.now += 1
    await _alive(sms, clock, *live)
    return sms, clock, again


async def test_a_retried_record_says_its_failed_attempt_once(kv: KV) -> None:  # noqa: F811
    sms, _, again = await _one_queued(kv, Recorder(), "b")
    pending = await sms.task(again.id)
    assert [state for state, _ in pending.history] == ["PENDING", "RUNNING", "FAILED", "PENDING"]
    (attempt,) = pending.attempt_log
    assert attempt.node == "a" and attempt.exit_code == EXIT_LOST
    assert attempt.reason is not None and attempt.reason.startswith("node lost")
    assert pending.reason == f"retry 1 of 2 after: {attempt.reason}"
    assert (pending.exit_code, pending.finished_at, pending.node) == (None, None, None)


async def test_a_queued_task_cancelled_adopted_or_gone_is_dropped_not_placed(
    kv: KV,  # noqa: F811
) -> None:
    forwarder = Recorder()
    sms, clock, again = await _one_queued(kv, forwarder, "b")
    pending = await sms.task(again.id)
    adopted = dataclasses.replace(pending, node="b").transition(TaskState.RUNNING)
    await sms.report_task(adopted)  # (a node took it meanwhile: never placed twice)
    await kv.put("retry/no-such-task", repr(clock.now).encode())
    await sms.retries.place_due()
    assert forwarder.sent == [] and await kv.scan("retry/") == []
    assert (await sms.task(again.id)).state is TaskState.RUNNING
    sms2, _, again2 = await _one_queued(kv, forwarder, "b")
    queued = await kv.get("retry/" + again2.id)
    cancelled = (await sms2.task(again2.id)).transition(TaskState.CANCELLED, reason="cancelled")
    await sms2.report_task(cancelled)  # (not queued again: its entry waits for a sweep)
    assert queued is not None and await kv.get("retry/" + again2.id) == queued
    await sms2.retries.place_due()
    assert forwarder.sent == [] and await kv.get("retry/" + again2.id) is None
    assert sms.retries.placed == sms2.retries.placed == 0


async def test_a_task_refused_where_it_first_went_goes_to_the_next_node_at_once(
    kv: KV,  # noqa: F811
) -> None:
    forwarder = Recorder(refuse_first=True)
    sms, _, again = await _one_queued(kv, forwarder, "b", "c")
    assert await sms.retries.place_due() == 1 and sms.retries.placed == 1
    [(went, task)] = forwarder.sent
    assert went not in forwarder.full and task.id == again.id
    assert (await sms.task(again.id)).node == went
    assert await sms.retries.place_due() == 0 and sms.retries.placed == 1


async def test_a_task_its_node_refuses_for_itself_ends_failed_with_why(
    kv: KV,  # noqa: F811
) -> None:
    sms, _, again = await _one_queued(kv, module_gone(), "b")
    await sms.retries.place_due()
    ended = await sms.task(again.id)
    assert ended.state is TaskState.FAILED and ended.reason == "its module is gone"
    assert ended.exit_code == InvalidModule.exit_code and ended.node == "b"
    assert await kv.scan("retry/") == [] and sms.retries.placed == 0


async def test_a_task_no_node_could_ever_run_ends_failed_with_why(
    kv: KV,  # noqa: F811
) -> None:
    from spear.errors import ResourceExhausted

    huge = dataclasses.replace(
        task_on("a"),
        spec=FunctionSpec("m.wasm", max_retries=2, resources=Resources(10**9, 1)),
    )
    forwarder = Recorder()
    sms, _, again = await _one_queued(kv, forwarder, "b", task=huge)
    await sms.retries.place_due()
    ended = await sms.task(again.id)
    assert ended.state is TaskState.FAILED and forwarder.sent == []
    assert (ended.reason or "").startswith("no node in the cluster can run this task: ")
    assert ended.exit_code == ResourceExhausted.exit_code
    assert await kv.scan("retry/") == []


async def test_due_tasks_are_placed_whatever_their_order_at_their_time_and_in_batches(
    kv: KV,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spear.core import retry_placement

    forwarder = Recorder()
    sms, clock, first = await _one_queued(kv, forwarder, "b")
    ids = [first.id]
    for _ in range(3):
        task = await sms.report_task(
            dataclasses.replace(retryable(task_on("b")), node=None, state=TaskState.PENDING,
                                attempts=1)
        )  # fmt: skip
        ids.append(task.id)
    keys = sorted(ids)  # (the queue is scanned in key order)
    await kv.put("retry/" + keys[0], repr(clock.now + 100).encode())  # not due yet
    await kv.put("retry/" + keys[1], repr(clock.now).encode())  # due exactly now
    await kv.put("retry/" + keys[2], b"not a time")  # unreadable: due at once
    await kv.put("retry/" + keys[3], repr(clock.now - 1).encode())
    monkeypatch.setattr(retry_placement, "_BATCH", 3)  # (a sweep scans 3 entries at most)
    assert await sms.retries.place_due() == 2  # keys[1] and keys[2]: keys[3] is 4th
    assert await sms.retries.place_due() == 1  # keys[3]
    assert sorted(t.id for _, t in forwarder.sent) == sorted(keys[1:])
    assert [e.key for e in await kv.scan("retry/")] == ["retry/" + keys[0]]


async def test_a_retry_goes_where_its_inputs_are(kv: KV) -> None:  # noqa: F811
    from spear.core.cluster import INPUTS_LABEL, ObjectLocation

    task = dataclasses.replace(
        task_on("a"),
        spec=FunctionSpec("m.wasm", max_retries=2, labels=((INPUTS_LABEL, "in/x"),)),
    )
    forwarder = Recorder()
    sms, _, again = await _one_queued(kv, forwarder, "b", "c", task=task)
    await sms.put_object_location(ObjectLocation("in/x", "c", 1, 10))  # (c holds the input)
    await sms.retries.place_due()
    assert [(went, t.id) for went, t in forwarder.sent] == [("c", again.id)]


async def test_a_spec_that_retries_only_lost_processes_is_not_retried_for_a_lost_node(
    kv: KV,  # noqa: F811
) -> None:
    from spear.core import retries

    for retry_on, retried in (((retries.NODE_LOST,), True), ((retries.PROCESS_LOST,), False)):
        spec = FunctionSpec("m.wasm", max_retries=2, retry_on=retry_on)
        task = dataclasses.replace(task_on("a"), spec=spec)
        sms, _, again = await _one_queued(kv, Recorder(), "b", task=task)
        ended = await sms.task(again.id)
        assert (ended.state is TaskState.PENDING) is retried, retry_on


async def test_one_tasks_placement_failing_leaves_the_others_placed_in_that_sweep(
    kv: KV,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spear.errors import StorageError

    forwarder = Recorder()
    sms, clock, first = await _one_queued(kv, forwarder, "b")
    second = await sms.report_task(
        dataclasses.replace(retryable(task_on("b")), node=None, state=TaskState.PENDING, attempts=1)
    )
    await kv.put("retry/" + second.id, repr(clock.now).encode())  # (due now too)
    failing = min(first.id, second.id)  # (the first in the queue's key order)
    real = sms.task

    async def task(task_id: str) -> Task:
        if task_id == failing:
            raise StorageError("the SMS's store hiccuped")
        return await real(task_id)

    monkeypatch.setattr(sms, "task", task)
    assert await sms.retries.place_due() == 1 and sms.retries.placed == 1
    assert [t.id for _, t in forwarder.sent] == [max(first.id, second.id)]
    assert [e.key for e in await kv.scan("retry/")] == ["retry/" + failing]  # (next sweep)
    monkeypatch.setattr(sms, "task", real)
    assert await sms.retries.place_due() == 1 and sms.retries.placed == 2


async def test_a_refused_tasks_end_that_cannot_be_recorded_is_tried_again_next_sweep(
    kv: KV,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spear.errors import StorageError

    sms, _, again = await _one_queued(kv, module_gone(), "b")
    real = sms.report_task

    async def report_task(task: Task) -> Task:
        if task.state is TaskState.FAILED:
            raise StorageError("the SMS's store hiccuped")
        return await real(task)

    monkeypatch.setattr(sms, "report_task", report_task)
    await sms.retries.place_due()
    assert await kv.get("retry/" + again.id) is not None  # (not dropped: not ended yet)
    monkeypatch.setattr(sms, "report_task", real)
    await sms.retries.place_due()
    ended = await sms.task(again.id)
    assert ended.state is TaskState.FAILED and ended.reason == "its module is gone"
    assert await kv.get("retry/" + again.id) is None


async def test_a_kept_stdin_is_at_most_a_mib_and_forgetting_counts_what_went(
    kv: KV,  # noqa: F811
) -> None:
    from spear.core import task_inputs
    from spear.errors import InvalidArgument

    most = task_inputs.MAX_KEPT_BYTES
    await task_inputs.keep(kv, "t1", b"x" * most)
    with pytest.raises(InvalidArgument) as caught:
        await task_inputs.keep(kv, "t2", b"x" * (most + 1))
    assert str(caught.value) == f"a kept stdin is at most {most} bytes"
    assert await task_inputs.kept(kv, "t2") is None
    for task_id in ("t3", "t4"):
        await task_inputs.keep(kv, task_id, b"in")

    async def finished(task_id: str) -> bool:
        return task_id != "t3"

    assert await task_inputs.forget_finished(kv, finished) == 2  # (t1 and t4)
    assert await task_inputs.kept(kv, "t3") == b"in"
    assert await task_inputs.kept(kv, "t1") is None and await task_inputs.kept(kv, "t4") is None
    assert await task_inputs.forget_finished(kv, finished) == 0
