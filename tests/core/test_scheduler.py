"""The scheduler's rules (core/scheduler.py) on real parts in one process: real LocalNodes
(LevelDB, wasm tasks), the SMS's logic on a real LevelDB (core/sms.py), and a loopback
`Forwarder` that hands a forwarded batch to the receiving node's scheduler exactly as the
gRPC receiver does (node/peer.py `_forward_tasks` without its wire): tests/placement_world.py.
Written for mutation testing (issue 22): each placement rule stated exactly, in
milliseconds per test, where tests/cluster/test_placement.py checks them end to end over
gRPC.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from placement_world import SLOT, Loopback, _cat, _until, _world
from small_disk import fill, small_disk
from wat_tasks import exits

from spear import FunctionSpec, Resources, Runtime, TaskState
from spear.core.cluster import INPUTS_LABEL, AgentInfo, NodeRecord
from spear.core.scheduler import Scheduler, owner_of
from spear.errors import NotFound, ResourceExhausted, SpearError
from spear.store.diskspace import DiskRoom

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.forwarding import BatchAnswer
    from spear.core.models import Task

ZONE_X = (("zone", "x"),)


# -- where a new task goes ------------------------------------------------------------


async def test_a_task_that_fits_here_runs_here_and_is_noted_local(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 2)
        await world.node("b", 4)
        await a.refresh_view()
        task = await a.submit(FunctionSpec(world.hello), task_id="given-id")
        assert (task.id, task.node) == ("given-id", "a")
        assert [(d.task.id, d.how, d.node) for d in a.decisions] == [("given-id", "local", "a")]
        assert world.forwarder.calls == []
        done = await a.node.controller.wait(task.id)
        assert done.state is TaskState.COMPLETED


async def test_a_task_only_another_node_can_run_is_forwarded_there(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 2)
        b = await world.node("b", 2, ZONE_X)
        await a.refresh_view()
        task = await a.submit(FunctionSpec(world.hello, labels=ZONE_X))
        assert task.node == "b" and world.forwarder.calls == [("b", [task.id])]
        assert a.forwarded_to[task.id].name == "b"
        assert [(d.how, d.node) for d in a.decisions] == [("forwarded", "b")]
        assert (await b.node.controller.wait(task.id)).state is TaskState.COMPLETED
        # The sender's view learnt b's free room from its answer.
        seen = a.view.node("b")
        assert seen is not None and seen.free.cpu_millis in (SLOT, 2 * SLOT)


async def test_the_node_with_most_room_is_tried_first(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 2)
        await world.node("c", 5)
        await world.occupy("a", 1)
        await a.refresh_view()
        task = await a.submit(FunctionSpec(world.hello))
        assert task.node == "c" and [n for n, _ in world.forwarder.calls] == ["c"]


async def test_a_task_no_node_could_ever_run_fails_at_once_with_the_reason(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 2)
        await world.node("b", 2)
        await a.refresh_view()
        task = await a.submit(FunctionSpec(world.hello, labels=(("gpu", "yes"),)))
        assert task.state is TaskState.FAILED
        assert task.exit_code == ResourceExhausted.exit_code
        assert task.reason is not None
        assert task.reason.startswith("no node in the cluster can run this task: ")
        assert len(task.reason) > len("no node in the cluster can run this task: ")
        assert (await world.sms.task(task.id)).state is TaskState.FAILED
        assert [(d.how, d.node) for d in a.decisions] == [("failed", "")]
        assert a.queued == 0


async def test_a_full_node_sends_a_task_where_there_is_room_now(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1, ZONE_X)
        await world.occupy("a", 1)
        await a.refresh_view()
        task = await a.submit(FunctionSpec(world.hello))  # a could run it later; b now
        assert task.node == "b" and a.queued == 0
        failed = await a.submit(FunctionSpec(world.hello, labels=(("zone", "y"),)))
        assert failed.state is TaskState.FAILED  # neither node has zone y


async def test_with_no_room_anywhere_a_task_is_queued_and_registered(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.occupy("a", 1)
        await a.refresh_view()
        task = await a.submit(FunctionSpec(world.hello))
        assert task.state is TaskState.PENDING and task.node == "a"
        assert a.queued == 1 and a.queued_task(task.id) == task
        assert a.queued_task("other") is None
        assert (await world.sms.task(task.id)).node == "a"
        assert [(d.how, d.node) for d in a.decisions] == [("queued", "a")]


async def test_the_queue_is_in_priority_order_first_come_among_equals(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.occupy("a", 1)
        await a.refresh_view()
        ids = {}
        for name, priority in [("p0", 0), ("p5", 5), ("q0", 0), ("q5", 5), ("p9", 9), ("r0", 0)]:
            spec = FunctionSpec(world.hello, priority=priority)
            ids[name] = (await a.submit(spec, task_id=name)).id
        assert [t.id for t in a.queued_tasks()] == ["p9", "p5", "q5", "p0", "q0", "r0"]
        assert a.waiting_before(9) and a.waiting_before(0) and not a.waiting_before(10)


async def test_namespaces_take_turns_in_the_queue(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.occupy("a", 1)
        await a.refresh_view()
        for name, namespace in [("x1", "x"), ("x2", "x"), ("x3", "x"), ("y1", "y"), ("y2", "y")]:
            await a.submit(FunctionSpec(world.hello, namespace=namespace), task_id=name)
        assert [t.id for t in a.queued_tasks()] == ["x1", "y1", "x2", "y2", "x3"]


async def test_a_full_queue_refuses_with_the_reason(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1, max_queued=2)
        await world.occupy("a", 1)
        await a.refresh_view()
        for _ in range(2):
            await a.submit(FunctionSpec(world.hello))
        with pytest.raises(ResourceExhausted) as info:
            await a.submit(FunctionSpec(world.hello))
        assert str(info.value) == (
            "the cluster is overloaded: 2 tasks wait for room at node a (at most 2); "
            "try again later"
        )
        with pytest.raises(ResourceExhausted):
            await a.enqueue(a.new_task(FunctionSpec(world.hello)), None)
        assert a.queued == 2


async def test_a_new_task_waits_behind_a_queued_one_of_its_priority_or_higher(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 2)
        blockers = await world.occupy("a", 2)
        await a.refresh_view()
        first = await a.submit(FunctionSpec(world.hello, priority=1))
        await a.node.controller.cancel(blockers[0].id)
        await _until(lambda: _free(a, SLOT))
        assert a.could_ever_run_here(FunctionSpec(world.hello))
        assert not a.fits_here_now(FunctionSpec(world.hello, priority=1))  # behind `first`
        assert a.fits_here_now(FunctionSpec(world.hello, priority=2))
        same = await a.submit(FunctionSpec(world.hello, priority=1))
        assert same.state is TaskState.PENDING and a.queued == 2
        higher = await a.submit(FunctionSpec(world.hello, priority=2))
        assert higher.node == "a" and a.decisions[-1].how == "local" and a.queued == 2
        assert [t.id for t in a.queued_tasks()] == [first.id, same.id]


async def _free(scheduler: Scheduler, cpu: int) -> bool:
    return scheduler.node.controller.free.cpu_millis >= cpu


# -- the queue drains as room appears -------------------------------------------------


async def test_queued_tasks_run_in_order_as_room_appears_here(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        blockers = await world.occupy("a", 1)
        await a.refresh_view()
        queued = [await a.submit(FunctionSpec(world.hello), task_id=f"t{i}") for i in range(3)]
        started: list[str] = []

        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await a.node.controller.cancel(blockers[0].id)

            async def drained() -> bool:
                started[:] = [d.task.id for d in a.decisions if d.how == "local"]
                return a.queued == 0

            await _until(drained)
            tg.cancel_scope.cancel()
        assert started == [t.id for t in queued]
        for task in queued:
            assert (await a.node.controller.wait(task.id)).state is TaskState.COMPLETED


async def test_a_queued_task_goes_to_another_node_once_it_has_room(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        b = await world.node("b", 1)
        await world.occupy("a", 1)
        b_blockers = await world.occupy("b", 1)
        await world.register("b")  # the SMS hears b is full
        await a.refresh_view()
        task = await a.submit(FunctionSpec(world.hello))
        assert task.state is TaskState.PENDING and a.queued == 1
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await b.node.controller.cancel(b_blockers[0].id)

            async def placed() -> bool:
                return a.queued == 0

            await _until(placed)
            tg.cancel_scope.cancel()
        assert a.forwarded_to[task.id].name == "b"
        assert (await b.node.controller.wait(task.id)).state is TaskState.COMPLETED


async def test_a_queued_task_is_cancelled_and_reported(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.occupy("a", 1)
        await a.refresh_view()
        keep = await a.submit(FunctionSpec(world.hello))
        task = await a.submit(FunctionSpec(world.hello))
        cancelled = await a.cancel(task.id, "no longer wanted")
        assert cancelled is not None
        assert (cancelled.state, cancelled.reason, cancelled.exit_code) == (
            TaskState.CANCELLED,
            "no longer wanted",
            130,
        )
        assert (await world.sms.task(task.id)).state is TaskState.CANCELLED
        assert [t.id for t in a.queued_tasks()] == [keep.id]
        assert await a.cancel(task.id, "again") is None
        assert await a.cancel("never-queued", "x") is None


# -- forwarding: refusals, silence, spillback ------------------------------------------


async def test_a_refusal_is_placed_again_on_the_next_node(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        b = await world.node("b", 3)
        await world.node("c", 2)
        await world.occupy("a", 1)
        await a.refresh_view()  # b looks freest...
        await world.occupy("b", 3)  # ...but is full now: it refuses, c takes the task
        task = await a.submit(FunctionSpec(world.hello))
        assert task.node == "c"
        assert [n for n, _ in world.forwarder.calls] == ["b", "c"]
        assert b.refusals == 1
        seen = a.view.node("b")
        assert seen is not None and seen.free.cpu_millis == 0  # b's answer corrected the view


async def test_a_node_that_does_not_answer_is_passed_over_and_forgotten(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 3)
        await world.node("c", 2)
        await world.occupy("a", 1)
        await a.refresh_view()
        world.forwarder.down.add("b")
        task = await a.submit(FunctionSpec(world.hello))
        assert task.node == "c" and a.view.node("b") is None


async def test_spillback_stops_after_max_hops_and_the_task_waits(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1, max_hops=2)
        for name in ("b", "c", "d"):
            await world.node(name, 1)
        await world.occupy("a", 1)
        await a.refresh_view()
        for name in ("b", "c", "d"):
            await world.occupy(name, 1)  # all full since the view saw them
        task = await a.submit(FunctionSpec(world.hello))
        assert task.state is TaskState.PENDING and a.queued == 1
        assert len(world.forwarder.calls) == 2  # max_hops
        assert len({n for n, _ in world.forwarder.calls}) == 2  # never the same node twice


async def test_a_task_refused_by_its_receiver_fails_with_that_reason(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1, ZONE_X)
        await a.refresh_view()
        junk = world.tmp_path / "junk.wasm"
        junk.write_bytes(b"not wasm")
        with pytest.raises(SpearError) as info:
            await a.submit(FunctionSpec(str(junk), labels=ZONE_X))
        assert info.value.exit_code == 65
        assert [(d.how, d.node) for d in a.decisions] == []


# -- what a receiver takes of a forwarded batch ----------------------------------------


async def test_a_receiver_takes_what_fits_in_order_and_promises_it(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        b = await world.node("b", 3)
        small, big = FunctionSpec(world.hello), FunctionSpec(world.hello, resources=Resources(200))
        accepted = b.accept_forwarded([small, big, small])
        assert accepted.taken == [True, True, False]  # the third no longer fits
        assert accepted.promised == [small, big] and accepted.backlog == 0
        assert b.promised == Resources(300, 2 * small.resources.memory_bytes)
        assert b.refusals == 1
        assert not b.fits_here_now(small)  # the promised room is not given twice
        again = b.accept_forwarded([small])
        assert again.taken == [False] and b.refusals == 2
        b.settle_forwarded(accepted)
        assert b.promised == Resources(0, 0)
        assert b.fits_here_now(small)


async def test_a_promise_kept_is_counted_once(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        b = await world.node("b", 3)
        small, big = FunctionSpec(world.hello), FunctionSpec(world.hello, resources=Resources(200))
        accepted = b.accept_forwarded([small, big])
        b.keep_promise(accepted, 1)  # (the big one is admitted by the controller first)
        assert b.promised == small.resources
        b.keep_promise(accepted, 1)  # (once only)
        assert b.promised == small.resources
        b.settle_forwarded(accepted)  # (and only the promise not kept is settled)
        assert b.promised == Resources(0, 0)
        both = b.accept_forwarded([small, small])
        b.keep_promise(both, 0)
        b.keep_promise(both, 1)
        assert b.promised == Resources(0, 0)
        b.settle_forwarded(both)
        assert b.promised == Resources(0, 0)


async def test_after_one_task_does_not_fit_the_rest_of_a_batch_is_refused(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        b = await world.node("b", 3)
        small, big = FunctionSpec(world.hello), FunctionSpec(world.hello, resources=Resources(300))
        accepted = b.accept_forwarded([small, big, small])
        assert accepted.taken == [True, False, False]  # first in, first out: no overtaking
        b.settle_forwarded(accepted)


async def test_a_waited_batch_is_taken_into_the_bounded_backlog(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        b = await world.node("b", 1, max_queued=2)
        spec, never = FunctionSpec(world.hello), FunctionSpec(world.hello, labels=ZONE_X)
        accepted = b.accept_forwarded([spec, spec, spec, never, spec], backlog=True)
        assert accepted.taken == [True, True, True, False, False]
        assert (len(accepted.promised), accepted.backlog, b.backlog) == (1, 2, 2)
        assert b.refusals == 2
        b.settle_forwarded(accepted)
        assert (b.backlog, b.promised) == (0, Resources(0, 0))
        plain = b.accept_forwarded([spec, spec])  # without backlog: only what fits now
        assert plain.taken == [True, False] and plain.backlog == 0
        b.settle_forwarded(plain)


async def test_a_busy_receiver_takes_nothing_now(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        b = await world.node("b", 2)
        await world.occupy("b", 2)
        waiter = anyio.Event()

        async def wait_for_room() -> None:  # a task waiting in b's admission queue
            waiter.set()
            await b.node.controller.run(FunctionSpec(world.hello))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_room)
            await waiter.wait()

            async def waiting() -> bool:
                return b.node.controller.waiting_count == 1

            await _until(waiting)
            assert b.accept_forwarded(
                [FunctionSpec(world.hello, resources=Resources(0, 0))]
            ).taken == [False]
            tg.cancel_scope.cancel()


# -- adopting a forwarded task ----------------------------------------------------------


async def test_adopt_runs_a_forwarded_task_under_its_id_or_says_why_not(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        b = await world.node("b", 1)
        task = a.new_task(FunctionSpec(world.hello), "fwd-1")
        assert (task.id, task.node, task.state) == ("fwd-1", "a", TaskState.PENDING)
        assert [s for s, _ in task.history] == ["PENDING"]
        adopted = await b.adopt(task, task.spec, None)
        assert (adopted.id, adopted.node) == ("fwd-1", "b")
        assert [(d.how, d.node) for d in b.decisions] == [("adopted", "b")]
        await world.occupy("b", 1)
        await _until(lambda: _not_free(b))
        with pytest.raises(ResourceExhausted) as info:
            await b.adopt(a.new_task(FunctionSpec(world.hello), "fwd-2"), task.spec, None)
        free = b.node.controller.free
        assert str(info.value) == (
            f"node b has no room for task fwd-2 now ({free.cpu_millis}m CPU, "
            f"{free.memory_bytes} bytes free)"
        )


async def _not_free(scheduler: Scheduler) -> bool:
    return scheduler.node.controller.free.cpu_millis < SLOT


# -- where a task with a caller stream runs ---------------------------------------------


async def test_a_streamed_task_runs_here_else_on_the_best_node_else_says_why(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1, ZONE_X)
        await a.refresh_view()
        spec = FunctionSpec(world.hello)
        assert await a.place_stream(spec) is None  # fits here now
        best = await a.place_stream(FunctionSpec(world.hello, labels=ZONE_X))
        assert best is not None and best.name == "b"
        await world.occupy("a", 1)
        ranked = await a.place_stream(spec)  # a is full: b has room
        assert ranked is not None and ranked.name == "b"
        await world.occupy("b", 1)
        await world.register("b")
        await a.refresh_view()
        assert await a.place_stream(spec) is None  # could run here: waits in admission
        with pytest.raises(ResourceExhausted) as info:
            await a.place_stream(FunctionSpec(world.hello, labels=ZONE_X))
        assert str(info.value) == "no node has room for a task with a caller stream now"
        with pytest.raises(ResourceExhausted) as info:
            await a.place_stream(FunctionSpec(world.hello, labels=(("gpu", "yes"),)))
        assert str(info.value).startswith("no node in the cluster can run this task: ")


# -- what the node can run ----------------------------------------------------------


async def test_a_node_can_run_its_runtimes_within_its_capacity_with_its_labels(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 2, (("zone", "x"), ("disk", "ssd")))
        assert a.could_ever_run_here(FunctionSpec(world.hello))
        assert a.could_ever_run_here(FunctionSpec(world.hello, labels=ZONE_X))
        assert a.could_ever_run_here(
            FunctionSpec(world.hello, labels=(("zone", "x"), ("disk", "ssd")))
        )
        assert not a.could_ever_run_here(FunctionSpec(world.hello, labels=(("zone", "y"),)))
        assert a.could_ever_run_here(FunctionSpec(world.hello, resources=Resources(200)))
        assert not a.could_ever_run_here(FunctionSpec(world.hello, resources=Resources(201)))
        from spear import Runtime

        if "process" not in a.node.agents:
            assert not a.could_ever_run_here(FunctionSpec(world.hello, runtime=Runtime.PROCESS))
        assert a.fits_here_now(FunctionSpec(world.hello, resources=Resources(200)))
        assert not a.fits_here_now(FunctionSpec(world.hello, resources=Resources(201)))


async def test_the_query_for_a_task_names_its_needs_and_leaves_this_node_out(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        spec = FunctionSpec(
            world.hello,
            resources=Resources(50, 1000),
            labels=(("zone", "x"), (INPUTS_LABEL, "k1,k2")),
        )
        query = a.query(spec)
        assert (query.need, query.runtime, query.exclude) == (Resources(50, 1000), "wasm", ("a",))
        assert (query.labels, query.objects) == (ZONE_X, ("k1", "k2"))


# -- bookkeeping ------------------------------------------------------------------------


async def test_the_record_of_forwarded_tasks_is_bounded(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        record = NodeRecord(name="b", address="x")
        tasks = [a.new_task(FunctionSpec(world.hello), f"t{i}") for i in range(10_001)]
        for task in tasks[:10_000]:
            a.remember_forwarded(task, record)
        assert len(a.forwarded_to) == 10_000
        a.remember_forwarded(tasks[-1], record)
        assert list(a.forwarded_to) == ["t10000"]
        assert a.decisions.maxlen == 1000 and len(a.decisions) == 1000
        assert a.decisions[-1].how == "forwarded" and a.decisions[-1].node == "b"


async def test_owner_of_names_the_node_holding_a_task(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        here = a.new_task(FunctionSpec(world.hello))
        await world.sms.report_task(here)
        found, node = await owner_of(world.sms, here.id)
        assert found.id == here.id and node is not None and node.name == "a"
        ghost = dataclasses.replace(a.new_task(FunctionSpec(world.hello)), node="ghost")
        await world.sms.report_task(ghost)
        found, node = await owner_of(world.sms, ghost.id)
        assert found.id == ghost.id and node is None
        nowhere = dataclasses.replace(a.new_task(FunctionSpec(world.hello)), node="")
        await world.sms.report_task(nowhere)
        found, node = await owner_of(world.sms, nowhere.id)
        assert found.id == nowhere.id and node is None
        with pytest.raises(NotFound):
            await owner_of(world.sms, "0" * 26)


async def test_the_view_is_refreshed_by_watching_the_cluster(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1)
        assert not a.view.known
        async with anyio.create_task_group() as tg:
            await tg.start(a.watch_cluster, 0.01)

            async def known() -> bool:
                return a.view.known and a.view.node("b") is not None

            await _until(known)
            await world.sms.register(
                NodeRecord(name="c", address="loopback:c", agents=(AgentInfo("wasm"),))
            )

            async def sees_c() -> bool:
                return a.view.node("c") is not None

            await _until(sees_c)
            tg.cancel_scope.cancel()
        assert a.view.node("a") is None  # this node is not its own candidate


async def test_a_view_never_filled_is_filled_before_placing(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1, ZONE_X)
        assert not a.view.known
        task = await a.submit(FunctionSpec(world.hello, labels=ZONE_X))
        assert task.node == "b" and a.view.known


async def test_an_exit_code_reaches_the_sms_for_a_local_task(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        task = await a.submit(FunctionSpec(str(exits(world.tmp_path, 3))))
        done = await a.node.controller.wait(task.id)
        assert (done.state, done.exit_code) == (TaskState.FAILED, 3)


# -- more exact rules (mutation survivors) -------------------------------------------------


async def test_an_adopted_task_gets_its_stdin_and_keeps_its_attempts(tmp_path: Path) -> None:
    script = tmp_path / "cat.sh"
    script.write_text("#!/bin/sh\ncat\n")
    script.chmod(0o755)
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        b = await world.node("b", 1)
        spec = FunctionSpec(str(script), runtime=Runtime.PROCESS)
        task = dataclasses.replace(a.new_task(spec), attempts=1)
        adopted = await b.adopt(task, spec, b"from the caller\n")
        assert adopted.attempts == 1  # its attempts go on (core/retries.py)
        done = await b.node.controller.wait(adopted.id)
        assert done.state is TaskState.COMPLETED
        assert await b.node.logs_of(done.id) == b"from the caller\n"


class Gate:
    """Holds the forward to one node until opened (a placement caught in the middle)."""

    def __init__(self, forwarder: Loopback, node: str) -> None:
        self.entered = anyio.Event()
        self.open = anyio.Event()
        inner = forwarder.forward_batch

        async def held(node_: NodeRecord, tasks: Any, **kw: Any) -> BatchAnswer:
            if node_.name == node:
                self.entered.set()
                await self.open.wait()
            return await inner(node_, tasks, **kw)

        forwarder.forward_batch = held  # type: ignore[method-assign]


async def test_a_cancel_during_the_heads_placement_waits_for_its_outcome(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        b = await world.node("b", 1)
        await world.occupy("a", 1)
        b_blockers = await world.occupy("b", 1)
        await world.register("b")
        await a.refresh_view()
        task = await a.submit(FunctionSpec(world.hello))
        assert a.queued == 1
        gate = Gate(world.forwarder, "b")
        await b.node.controller.cancel(b_blockers[0].id)
        await world.register("b")  # b has room again, as the SMS hears it
        answers: list[Task | None] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(a.run)
                a._wake.set()  # (room elsewhere: look again now)
                await gate.entered.wait()  # the head is being forwarded to b

                async def cancel() -> None:
                    answers.append(await a.cancel(task.id, "too late"))

                tg.start_soon(cancel)
                await anyio.sleep(0.05)
                assert answers == []  # the cancel waits for the placement's outcome
                gate.open.set()
                await _until(lambda: _true(bool(answers)))
                tg.cancel_scope.cancel()
        assert answers == [None]  # placed meanwhile: no longer queued here
        assert a.queued == 0 and a.forwarded_to[task.id].name == "b"
        assert (await b.node.controller.wait(task.id)).state is TaskState.COMPLETED


async def _true(value: bool) -> bool:
    return value


async def test_a_view_that_cannot_be_refreshed_is_kept_and_the_reason_logged(
    tmp_path: Path,
) -> None:
    import socket

    from loguru import logger

    from spear.transport.sms_client import SmsClient

    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1)
        await a.refresh_view()
        with socket.socket() as s:  # bound, never listening: connections are refused
            s.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{s.getsockname()[1]}"
            async with SmsClient(address, timeout_s=1) as away:
                a.cluster = away  # the SMS is away now
                logged: list[str] = []
                sink = logger.add(logged.append, level="DEBUG", format="{message}", filter="spear")
                logger.enable("spear")
                try:
                    with anyio.fail_after(20):
                        async with anyio.create_task_group() as tg:
                            await tg.start(a.watch_cluster, 0.01)
                            await _until(lambda: _true(len(logged) >= 2))
                            tg.cancel_scope.cancel()
                finally:
                    logger.disable("spear")
                    logger.remove(sink)
        assert a.view.node("b") is not None  # the view it had
        refused = [m for m in logged if m.startswith("cluster view not refreshed: ")]
        assert len(refused) >= 2
        assert all(f"cannot reach node SMS {address}" in m for m in refused)  # the reason


async def test_stdin_goes_with_a_task_here_forwarded_and_queued(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        b = await world.node("b", 1)
        await a.refresh_view()
        spec = _cat(tmp_path)
        with anyio.fail_after(30):
            here = await a.submit(spec, stdin=b"here\n")
            assert here.node == "a"
            assert (await a.node.controller.wait(here.id)).state is TaskState.COMPLETED
            await world.occupy("a", 1)
            await _until(lambda: _not_free(a))
            there = await a.submit(spec, stdin=b"there\n")
            assert there.node == "b"
            assert (await b.node.controller.wait(there.id)).state is TaskState.COMPLETED
            b_blockers = await world.occupy("b", 1)
            await _until(lambda: _not_free(b))
            await world.register("b")
            await a.refresh_view()
            queued = await a.submit(spec, stdin=b"queued\n")
            assert a.queued == 1
            await b.node.controller.cancel(b_blockers[0].id)
            await world.register("b")
            async with anyio.create_task_group() as tg:
                await tg.start(a.run)
                a._wake.set()
                await _until(lambda: _true(a.queued == 0))
                tg.cancel_scope.cancel()
            assert (await a.node.controller.wait(here.id)).state is TaskState.COMPLETED
            assert await a.node.logs_of(here.id) == b"here\n"
            assert (await b.node.controller.wait(there.id)).state is TaskState.COMPLETED
            assert await b.node.logs_of(there.id) == b"there\n"
            assert (await b.node.controller.wait(queued.id)).state is TaskState.COMPLETED
            assert await b.node.logs_of(queued.id) == b"queued\n"


async def test_a_refused_task_is_reported_failed_with_the_receivers_reason(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1, ZONE_X)
        await a.refresh_view()
        junk = world.tmp_path / "junk.wasm"
        junk.write_bytes(b"not wasm")
        with pytest.raises(SpearError) as info:
            await a.submit(FunctionSpec(str(junk), labels=ZONE_X))
        (_, (task_id,)), *_ = world.forwarder.calls
        record = await world.sms.task(task_id)
        assert (record.state, record.reason, record.exit_code) == (
            TaskState.FAILED,
            str(info.value),
            info.value.exit_code,
        )


async def test_forwarding_failures_and_refusals_are_logged(tmp_path: Path) -> None:
    from loguru import logger

    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 3)
        await world.node("c", 2)
        await world.occupy("a", 1)
        await a.refresh_view()
        world.forwarder.down.add("b")
        logged: list[str] = []
        sink = logger.add(logged.append, level="DEBUG", format="{message}", filter="spear")
        logger.enable("spear")
        try:
            first = await a.submit(FunctionSpec(world.hello))
            await world.occupy("c", 2)  # full since the view saw it: it refuses
            world.forwarder.down.clear()
            second = await a.submit(FunctionSpec(world.hello))
        finally:
            logger.disable("spear")
            logger.remove(sink)
        assert first.node == "c" and second.state is TaskState.PENDING
        assert f"forwarding {first.id} to b failed: node b does not answer\n" in logged
        assert f"task {second.id} refused by c (no room): placing it again\n" in logged


async def test_a_receiver_with_queued_work_refuses_forwarded_tasks_not_above_it(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        b = await world.node("b", 2)
        blockers = await world.occupy("b", 2)
        await b.refresh_view()
        await b.submit(FunctionSpec(world.hello, priority=1))  # waits in b's queue
        await b.node.controller.cancel(blockers[0].id)
        await _until(lambda: _free(b, SLOT))
        same = b.accept_forwarded([FunctionSpec(world.hello, priority=1)])
        assert same.taken == [False]
        higher = b.accept_forwarded([FunctionSpec(world.hello, priority=2)])
        assert higher.taken == [True]
        b.settle_forwarded(higher)


async def test_a_higher_priority_goes_before_every_lower_one_queued(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.occupy("a", 1)
        await a.refresh_view()
        for name, priority in [("a0", 0), ("b0", 0), ("c0", 0), ("d5", 5), ("e3", 3)]:
            await a.submit(FunctionSpec(world.hello, priority=priority), task_id=name)
        assert [t.id for t in a.queued_tasks()] == ["d5", "e3", "a0", "b0", "c0"]


async def test_no_room_anywhere_is_learnt_from_the_view_without_asking_the_sms(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1)
        await world.occupy("a", 1)
        await world.occupy("b", 1)
        await world.register("b")
        await a.refresh_view()
        asked = sum(world.sms.stats.placement.counts)
        task = await a.submit(FunctionSpec(world.hello))
        assert task.state is TaskState.PENDING and a.queued == 1
        assert sum(world.sms.stats.placement.counts) == asked  # no FindNodes


async def test_a_queued_task_that_cannot_start_fails_and_the_queue_moves_on(
    tmp_path: Path,
) -> None:
    from loguru import logger

    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        blockers = await world.occupy("a", 1)
        await a.refresh_view()
        junk = world.tmp_path / "junk.wasm"
        junk.write_bytes(b"not wasm")
        bad = await a.submit(FunctionSpec(str(junk)))  # checked only once it is placed
        good = await a.submit(FunctionSpec(world.hello))
        assert [t.id for t in a.queued_tasks()] == [bad.id, good.id]
        logged: list[str] = []
        sink = logger.add(logged.append, level="WARNING", format="{message}", filter="spear")
        logger.enable("spear")
        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    await tg.start(a.run)
                    await a.node.controller.cancel(blockers[0].id)
                    await _until(lambda: _true(a.queued == 0))
                    tg.cancel_scope.cancel()
                done = await a.node.controller.wait(good.id)
        finally:
            logger.disable("spear")
            logger.remove(sink)
        assert done.state is TaskState.COMPLETED
        assert (await a.node.task(bad.id)).state is TaskState.FAILED
        assert [d.how for d in a.decisions if d.task.id == good.id] == ["queued", "local"]
        assert [d.node for d in a.decisions if d.task.id == good.id] == ["a", "a"]
        assert any(m.startswith(f"queued task {bad.id} could not start: ") for m in logged)


async def test_a_new_task_is_made_pending_here_now(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        task = a.new_task(FunctionSpec(world.hello))
        ((state, at),) = task.history
        assert (state, task.node, task.state) == ("PENDING", "a", TaskState.PENDING)
        assert task.created_at == at and at > 1_700_000_000


async def test_with_the_sms_away_a_task_waits_in_the_queue_and_runs_once_it_is_back(
    tmp_path: Path,
) -> None:
    import socket

    from loguru import logger

    from spear.transport.sms_client import SmsClient

    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        blockers = await world.occupy("a", 1)
        logged: list[str] = []
        with socket.socket() as s:  # bound, never listening: connections are refused
            s.bind(("127.0.0.1", 0))
            async with SmsClient(f"127.0.0.1:{s.getsockname()[1]}", timeout_s=1) as away:
                a.cluster = away  # never reached: the view is empty, the SMS away
                sink = logger.add(logged.append, level="INFO", format="{message}", filter="spear")
                logger.enable("spear")
                try:
                    task = await a.submit(_cat(tmp_path), stdin=b"kept\n")
                finally:
                    logger.disable("spear")
                    logger.remove(sink)
        assert task.state is TaskState.PENDING and a.queued_task(task.id) == task
        assert [(d.task.id, d.how, d.node) for d in a.decisions] == [(task.id, "queued", "a")]
        assert any(m.startswith(f"task {task.id} waits for the SMS: ") for m in logged)
        a.cluster = world.sms  # back
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                await tg.start(a.run)
                await a.node.controller.cancel(blockers[0].id)
                await _until(lambda: _true(a.queued == 0))
                tg.cancel_scope.cancel()
            done = await a.node.controller.wait(task.id)
        assert done.state is TaskState.COMPLETED
        assert await a.node.logs_of(task.id) == b"kept\n"


async def test_each_decision_is_logged_with_its_task_and_node(tmp_path: Path) -> None:
    from loguru import logger

    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        assert (a.max_queued, a.max_hops) == (10_000, 3)  # as the world made it
        default = Scheduler(a.node, world.sms, world.forwarder, (), 1.0)
        assert (default.max_queued, default.max_hops) == (10_000, 3)  # the defaults
        records: list[tuple[str, Any]] = []
        sink = logger.add(
            lambda m: records.append((str(m), m.record["extra"].get("task_id"))),
            level="DEBUG",
            format="{message}",
            filter="spear.core.scheduler",
        )
        logger.enable("spear")
        try:
            task = await a.submit(FunctionSpec(world.hello))
        finally:
            logger.disable("spear")
            logger.remove(sink)
        assert (f"task {task.id}: local (a)\n", task.id) in records


# -- a node whose disk is full (issue 16) ------------------------------------------------


def _disk_full(scheduler: Scheduler) -> None:
    """Its data dir's disk counts as full: less room than a threshold nothing has."""
    scheduler.disk = DiskRoom(scheduler.node.settings.data_dir, low_bytes=2**62)


async def test_a_node_whose_disk_is_full_sends_new_tasks_elsewhere(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 2)
        b = await world.node("b", 2)
        await a.refresh_view()
        _disk_full(a)
        assert a.room_here() == Resources(0, 0)
        assert not a.fits_here_now(FunctionSpec(world.hello))
        task = await a.submit(FunctionSpec(world.hello))
        assert task.node == "b" and [(d.how, d.node) for d in a.decisions] == [("forwarded", "b")]
        assert (await b.node.controller.wait(task.id)).state is TaskState.COMPLETED
        a.disk = DiskRoom(a.node.settings.data_dir)  # room again: tasks run here
        assert a.room_here() == Resources(2 * SLOT, a.node.controller.free.memory_bytes)
        here = await a.submit(FunctionSpec(world.hello))
        assert here.node == "a"


async def test_a_node_whose_disk_is_full_takes_no_forwarded_task(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        b = await world.node("b", 3)
        _disk_full(b)
        spec = FunctionSpec(world.hello)
        accepted = b.accept_forwarded([spec, spec], backlog=True)
        assert accepted.taken == [False, False] and accepted.backlog == 0
        assert b.promised == Resources(0, 0) and b.refusals == 2
        with pytest.raises(ResourceExhausted, match="has no room"):
            await b.adopt(b.new_task(spec, "fwd-full"), spec, None)


async def test_a_task_whose_record_cannot_be_written_here_is_placed_elsewhere(
    tmp_path: Path,
) -> None:
    """The disk filled since it was last looked at: the write says so, and the task goes
    to another node instead of being refused."""
    async with _world(tmp_path) as world:
        a = await world.node("a", 2)
        b = await world.node("b", 2)
        await a.refresh_view()
        looks: list[bool] = []
        real = a.disk

        class FillsOnWrite(DiskRoom):
            def full(self, *, look_now: bool = False) -> bool:
                looks.append(look_now)
                return look_now  # full only when looked at after the failed write

        a.disk = FillsOnWrite(real.path)

        async def no_space(*args: Any, **kw: Any) -> Any:
            raise ResourceExhausted("no space left on device (the database): free space")

        a.node.controller.create = no_space  # type: ignore[method-assign]
        task = await a.submit(FunctionSpec(world.hello))
        assert task.node == "b" and True in looks
        assert (await b.node.controller.wait(task.id)).state is TaskState.COMPLETED
        assert a.node.controller.free == Resources(
            2 * SLOT, a.node.controller.capacity.memory_bytes
        )
        a.disk = real
        with pytest.raises(ResourceExhausted, match="no space"):  # room, yet refused: said
            await a.submit(FunctionSpec(world.hello))


async def test_a_node_on_a_real_disk_that_fills_sends_tasks_elsewhere_until_freed(
    tmp_path: Path,
) -> None:
    """A real 24 MiB tmpfs under node a's data dir, filled by someone else."""
    with small_disk(tmp_path / "a", 24) as disk:
        async with _world(tmp_path) as world:
            a = await world.node("a", 2)
            b = await world.node("b", 2)
            await a.refresh_view()
            assert (await a.submit(FunctionSpec(world.hello))).node == "a"
            fill(disk)

            async def noticed(full: bool) -> bool:
                return a.disk.full() is full

            await _until(lambda: noticed(True))
            task = await a.submit(FunctionSpec(world.hello))
            assert task.node == "b"
            assert (await b.node.controller.wait(task.id)).state is TaskState.COMPLETED
            (disk / "filler").unlink()
            await _until(lambda: noticed(False))
            assert (await a.submit(FunctionSpec(world.hello))).node == "a"
