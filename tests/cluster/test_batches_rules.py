"""A batch run to its ends across a cluster (node/batches.py `run_batch`), each rule stated
for a mutant that tests/cluster/test_placement.py let live (issue 22): which tasks run
here, where the rest go, what a refusal or a silent node does to them, and that every
task ends exactly once with its own outcome.

Real parts in one process, tests/core/test_scheduler.py's (tests/placement_world.py):
LocalNodes on LevelDB running wasm tasks, the SMS's logic on LevelDB; here a forwarder
that hands each batch to the receiver's own ForwardTasks handler (node/peer.py
`PeerService`) without the wire, and each member a real `ClusterNode` over its real
`Scheduler`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from placement_world import SLOT, Loopback, World, _cat, world_of

from spear import FunctionSpec, Resources, Runtime, TaskState
from spear.core.forwarding import BatchAnswer
from spear.core.models import TaskResult
from spear.core.node import NodeState
from spear.errors import NoSpace, NotFound, PermissionDenied, ResourceExhausted
from spear.node.batches import Outcome, run_batch
from spear.node.cluster import ClusterNode
from spear.node.inprocess import InProcessNode
from spear.node.peer import PeerService, _outcome
from spear.store.diskspace import no_space
from spear.transport import _convert as cv
from spear.transport._gen.pb import spearlet_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from spear.core.models import Task
    from spear.core.scheduler import Scheduler
    from spear.core.sms import MetadataServer
    from spear.core.tasks import TasksFinished
    from spear.errors import SpearError

ZONE_X = (("zone", "x"),)


class Receivers(Loopback):
    """A `Forwarder` that hands a batch to the receiving node's own ForwardTasks handler
    (what fits taken in order, the rest refused; a waited batch answered with each one's
    end and output), as node/peer.py `Peers` does over the wire."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: dict[str, SpearError] = {}  # nodes whose ForwardTasks fails so
        # node -> the node whose answer it waits for before answering (then for the
        # sender to have taken that answer in: every other task blocked)
        self.after: dict[str, str] = {}
        self.answered: dict[str, anyio.Event] = {}

    async def answer(
        self,
        receiver: Scheduler,
        tasks: Sequence[tuple[Task, bytes | None]],
        *,
        wait: bool,
        output: bool,
    ) -> BatchAnswer:
        name = receiver.node.name
        answered = self.answered.setdefault(name, anyio.Event())
        try:
            if name in self.after:
                await self.answered.setdefault(self.after[name], anyio.Event()).wait()
                await anyio.wait_all_tasks_blocked()
            return await self._answer(receiver, tasks, wait=wait, output=output)
        finally:
            answered.set()

    async def _answer(
        self,
        receiver: Scheduler,
        tasks: Sequence[tuple[Task, bytes | None]],
        *,
        wait: bool,
        output: bool,
    ) -> BatchAnswer:
        if receiver.node.name in self.failing:
            raise self.failing[receiver.node.name]
        service = PeerService(receiver, None, InProcessNode(receiver.node))  # type: ignore[arg-type]
        infos = cv.tasks_to_wire([t for t, _ in tasks])
        request = pb.ForwardTasksRequest(
            tasks=[
                pb.ForwardedTask(task=info, stdin=stdin or b"")
                for info, (_, stdin) in zip(infos, tasks, strict=True)
            ],
            wait=wait,
            output=output,
        )
        answer = await service.forward_tasks(request)
        return BatchAnswer(
            tuple(_outcome(o, t.spec) for o, (t, _) in zip(answer.outcomes, tasks, strict=True)),
            cv.resources_from_wire(answer.free),
        )


class Members(World):
    """The world's nodes as cluster members: each a real `ClusterNode` over its scheduler,
    forwarding through `Receivers`, its Peers the other members in this process."""

    forwarder: Receivers

    def __init__(self, tmp_path: Path, stack: contextlib.AsyncExitStack, sms: MetadataServer):
        super().__init__(tmp_path, stack, sms, Receivers())
        self.members: dict[str, ClusterNode] = {}
        self.hello_spec = FunctionSpec(self.hello)
        self.hello_x = FunctionSpec(self.hello, labels=ZONE_X)  # (only zone x runs it)

    async def member(
        self,
        name: str,
        slots: int,
        labels: tuple[tuple[str, str], ...] = (),
        *,
        max_queued: int = 10_000,
        max_hops: int = 3,
    ) -> ClusterNode:
        scheduler = await self.node(name, slots, labels, max_queued=max_queued, max_hops=max_hops)
        self.members[name] = ClusterNode(
            InProcessNode(scheduler.node),
            self.sms,
            scheduler,
            self,  # type: ignore[arg-type]  # (its Peers: `client` below)
        )
        return self.members[name]

    def client(self, address: str) -> InProcessNode:
        """Another member, as a member's `Peers` reaches it."""
        return self.members[address.removeprefix("loopback:")].local

    async def free(self, name: str, blockers: list[Task]) -> None:
        """End `blockers` (`occupy`) and wait until their room is free again."""
        controller = self.nodes[name].node.controller
        for blocker in blockers:
            await controller.cancel(blocker.id)
        with anyio.fail_after(10):
            while controller.free != controller.capacity:
                await anyio.sleep(0.01)


def _members(tmp_path: Path) -> contextlib.AbstractAsyncContextManager[Members]:
    return world_of(Members, tmp_path)


async def _ran(
    api: ClusterNode,
    specs: list[FunctionSpec],
    stdins: list[bytes | None] | None = None,
    *,
    output: bool = False,
) -> list[Outcome]:
    # (bounded: a batch that never ends must fail by assertion, not hang the run)
    with anyio.fail_after(10):
        return await run_batch(api, specs, stdins, output=output)


def _ended(outcomes: Sequence[Outcome]) -> list[TaskResult]:
    assert all(isinstance(o, TaskResult) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, TaskResult)]


def _nodes(outcomes: Sequence[Outcome]) -> list[str | None]:
    results = _ended(outcomes)
    assert {r.task.state for r in results} == {TaskState.COMPLETED}, results
    return [r.task.node for r in results]


# -- what a batch answers ---------------------------------------------------------------


async def test_outputs_come_back_only_when_asked_for(tmp_path: Path) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        await world.member("b", 2, ZONE_X)
        await a.scheduler.refresh_view()
        specs = [world.hello_spec, world.hello_x]  # one here, one that only b can run
        with anyio.fail_after(10):
            plain = _ended(await run_batch(a, specs))  # (not asked for)
        assert [(r.task.node, r.output) for r in plain] == [("a", b""), ("b", b"")]
        asked = _ended(await _ran(a, specs, output=True))
        assert [(r.task.node, r.output) for r in asked] == [("a", b"hello\n"), ("b", b"hello\n")]


async def test_a_batch_is_answered_before_its_results_are_kept(tmp_path: Path) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 2)
        release, done = anyio.Event(), anyio.Event()
        heard: list[str] = []

        async def slow_hook(finished: TasksFinished, /) -> None:
            # (bounded: a batch that awaited its hooks must end, to fail by assertion)
            with anyio.move_on_after(5):
                await release.wait()
            heard.extend(t.id for t in finished.tasks)
            done.set()

        a.node.controller.add_finished_hook(slow_hook)
        try:
            ran = _ended(await _ran(a, [world.hello_spec] * 2))
        finally:  # (else the node, stopping, would wait for the held hook)
            heard_before = list(heard)
            release.set()
        assert heard_before == []
        assert _nodes(ran) == ["a", "a"]
        with anyio.fail_after(10):
            await done.wait()
        assert sorted(heard) == sorted(r.task.id for r in ran)


async def test_tasks_that_cannot_be_recorded_here_each_get_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 2)

        async def full(*args: Any, **kw: Any) -> Any:
            # the very error LevelDB's store raises for a full disk (store/diskspace.py)
            error = no_space(OSError(errno.ENOSPC, "No space left on device"), "the database")
            assert error is not None
            raise error

        monkeypatch.setattr(a.node.controller.store, "create_wave", full)
        out = await _ran(a, [world.hello_spec] * 2)
        assert [type(o) for o in out] == [NoSpace, NoSpace]
        assert "free space in the data dir" in str(out[0])


async def test_tasks_with_stdin_are_placed_one_by_one_with_their_stdin(tmp_path: Path) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 4)
        cat = _cat(tmp_path)
        missing = FunctionSpec(str(tmp_path / "nope.sh"), runtime=Runtime.PROCESS)
        out = await _ran(
            a,
            [cat, world.hello_spec, cat, missing],
            [b"one\n", None, b"two\n", b"lost\n"],
            output=True,
        )
        assert isinstance(out[3], NotFound), out[3]
        ended = _ended(out[:3])
        assert [(r.task.node, r.output) for r in ended] == [
            ("a", b"one\n"),
            ("a", b"hello\n"),
            ("a", b"two\n"),
        ]
        assert len({r.task.id for r in ended}) == 3


async def test_a_task_whose_module_is_missing_gets_that_refusal_here_or_forwarded(
    tmp_path: Path,
) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 2)
        await world.member("b", 2, ZONE_X)
        await a.scheduler.refresh_view()
        missing = FunctionSpec(str(tmp_path / "nope.wasm"))
        missing_x = FunctionSpec(missing.artifact, labels=ZONE_X)
        out = await _ran(a, [world.hello_spec, missing, world.hello_x, missing_x])
        assert [type(o) for o in out] == [TaskResult, NotFound, TaskResult, NotFound]
        assert _nodes([out[0], out[2]]) == ["a", "b"]
        assert all("nope.wasm" in str(o) for o in (out[1], out[3]))


# -- the view -------------------------------------------------------------------------


async def test_a_batch_that_fits_here_asks_the_sms_nothing(tmp_path: Path) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 2)
        await world.member("b", 2)
        assert _nodes(await _ran(a, [world.hello_spec] * 2)) == ["a", "a"]
        assert not a.scheduler.view.known  # not even filled: nothing had to go elsewhere


async def test_a_view_never_filled_is_filled_before_the_rest_is_placed(tmp_path: Path) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        await world.member("b", 4)
        assert not a.scheduler.view.known
        assert _nodes(await _ran(a, [world.hello_spec] * 3)) == ["a", "b", "b"]
        assert a.scheduler.view.known


async def test_with_no_view_and_the_sms_away_the_rest_is_placed_one_by_one(
    tmp_path: Path,
) -> None:
    import socket

    from spear.transport.sms_client import SmsClient

    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        await world.member("b", 4)
        with socket.socket() as s:  # bound, never listening: connections are refused
            s.bind(("127.0.0.1", 0))
            async with SmsClient(f"127.0.0.1:{s.getsockname()[1]}", timeout_s=1) as away:
                a.scheduler.cluster = away
                async with anyio.create_task_group() as tg:
                    await tg.start(a.scheduler.run)  # (places what waits in the queue)
                    out = await _ran(a, [world.hello_spec] * 3)
                    tg.cancel_scope.cancel()
        # Without a view or the SMS, b is unknown here: every task ran here, in turn.
        assert _nodes(out) == ["a", "a", "a"] and world.forwarder.calls == []
        assert not a.scheduler.view.known


# -- forwarding ---------------------------------------------------------------------


async def test_a_node_that_does_not_answer_is_forgotten_and_its_share_placed_again(
    tmp_path: Path,
) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        await world.member("b", 4)  # the most room: tried first
        await world.member("c", 2)
        await a.scheduler.refresh_view()
        world.forwarder.down.add("b")
        out = await _ran(a, [world.hello_spec] * 3)
        assert _nodes(out) == ["a", "c", "c"]
        sent = [r.task.id for r in _ended(out)[1:]]
        assert world.forwarder.calls == [("b", sent), ("c", sent)]
        for task_id in sent:
            assert await holders(world, task_id) == ["c"]  # recorded there alone
        assert a.scheduler.view.node("b") is None and a.scheduler.view.node("c") is not None


async def test_a_forward_that_fails_gives_each_of_its_tasks_the_reason(tmp_path: Path) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        await world.member("b", 2, ZONE_X)
        await a.scheduler.refresh_view()
        refusal = PermissionDenied("b does not take this member's token")
        world.forwarder.failing["b"] = refusal
        out = await _ran(a, [world.hello_spec, world.hello_x, world.hello_x])
        assert _nodes(out[:1]) == ["a"]
        assert out[1:] == [refusal, refusal]
        assert a.scheduler.view.node("b") is not None  # it answered: it is not forgotten


async def test_the_view_takes_a_receivers_free_room_from_its_answer(tmp_path: Path) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        await world.member("b", 3, ZONE_X)
        await a.scheduler.refresh_view()  # b: 3 slots free
        await world.occupy("b", 2)  # unknown to a's view
        assert _nodes(await _ran(a, [world.hello_x])) == ["b"]
        seen = a.scheduler.view.node("b")
        # b's answer said 1 slot free (its view less the task's slot would say 2)
        assert seen is not None and seen.free.cpu_millis == SLOT


@pytest.mark.parametrize("size", [1, 2], ids=["one", "many"])  # (run alone / run_many)
async def test_a_waited_batch_running_on_its_receiver_counts_its_room_once(
    tmp_path: Path, size: int
) -> None:
    """The room a receiver promised a forwarded batch is the controller's once the tasks
    are admitted: while they run, the receiver takes another batch into the room left,
    and says that room is free."""
    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        await world.member("b", 3, ZONE_X)
        await a.scheduler.refresh_view()
        b = world.nodes["b"]
        sleeper_x = dataclasses.replace(world.sleeper, labels=ZONE_X)
        outcomes: list[Outcome] = []

        async def batch() -> None:
            outcomes.extend(await run_batch(a, [sleeper_x] * size))

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch)
            with anyio.fail_after(10):
                while b.node.controller.running_count < size:
                    await anyio.sleep(0.01)
            assert b.promised == Resources(0, 0)
            left = 3 - size
            another = b.accept_forwarded([world.hello_spec] * 3)
            assert another.taken == [True] * left + [False] * size
            b.settle_forwarded(another)
            async with anyio.create_task_group() as stops:
                for task_id in b.node.controller.live_ids:
                    stops.start_soon(b.node.controller.cancel, task_id)
        assert [r.task.state for r in _ended(outcomes)] == [TaskState.CANCELLED] * size
        assert b.promised == Resources(0, 0)


# -- where the rest goes ----------------------------------------------------------------


async def test_tasks_wait_here_behind_queued_ones_of_their_priority_or_higher(
    tmp_path: Path,
) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 2)
        blockers = await world.occupy("a", 2)
        await a.scheduler.refresh_view()  # no other node: the next task is queued here
        queued = await a.scheduler.submit(world.hello_spec)
        assert a.scheduler.queued_task(queued.id) is not None
        await world.free("a", blockers)  # (the queue is not being drained: it stays)
        await world.member("b", 2)
        await a.scheduler.refresh_view()
        high, low = (FunctionSpec(world.hello, priority=p) for p in (5, 0))
        # The higher priority goes before the queued task, here; the other not: to b.
        assert _nodes(await _ran(a, [high, low])) == ["a", "b"]


async def test_what_fits_nowhere_now_is_dealt_here_then_to_the_others_by_name(
    tmp_path: Path,
) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        held = {name: await _full_member(world, name) for name in ("c", "b")}
        await a.scheduler.refresh_view()  # b and c full, as the SMS heard
        for name, blockers in held.items():
            await world.free(name, blockers)  # (room a's view does not know of)
        # The first fits here now; the others are dealt in turn: a, b, c.
        assert _nodes(await _ran(a, [world.hello_spec] * 4)) == ["a", "a", "b", "c"]


async def test_a_task_no_node_has_room_for_now_goes_to_the_likeliest(tmp_path: Path) -> None:
    """One only other nodes could run, and none has room for now (as far as the view
    knows): it goes to the one with most room, to wait in its backlog there."""
    async with _members(tmp_path) as world:
        a = await world.member("a", 2)
        await world.member("b", 2, ZONE_X)
        await world.member("c", 2, ZONE_X)
        held = {"b": await world.occupy("b", 1), "c": await world.occupy("c", 2)}
        for name in held:
            await world.register(name)
        await a.scheduler.refresh_view()  # b: 1 slot free, c: none
        for name, blockers in held.items():
            await world.free(name, blockers)  # (room a's view does not know of)
        both = Resources(cpu_millis=2 * SLOT, memory_bytes=world.hello_x.resources.memory_bytes)
        wide = FunctionSpec(world.hello, labels=ZONE_X, resources=both)
        assert _nodes(await _ran(a, [wide])) == ["b"]
        assert [name for name, _ in world.forwarder.calls] == ["b"]


async def test_the_refusals_of_the_last_receiver_to_answer_are_placed_again(
    tmp_path: Path,
) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        await world.occupy("a", 1)
        await world.member("b", 1)
        c = await world.member("c", 1)
        await a.scheduler.refresh_view()  # b and c: one slot each
        await world.occupy("c", 1)  # c is full, and stopping: it refuses
        c.node.state = NodeState.DRAINING
        world.forwarder.after["c"] = "b"  # ...once b has answered
        out = await _ran(a, [world.hello_spec] * 2)
        assert _nodes(out) == ["b", "b"]
        assert sorted(name for name, _ in world.forwarder.calls) == ["b", "b", "c"]


async def _full_member(world: Members, name: str) -> list[Task]:
    await world.member(name, 1)
    blockers = await world.occupy(name, 1)
    await world.register(name)
    return blockers


async def test_a_refused_task_that_finds_no_room_waits_here_and_is_not_sent_again(
    tmp_path: Path,
) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        blockers = await world.occupy("a", 1)
        b = await world.member("b", 1)  # free as the SMS heard...
        await a.scheduler.refresh_view()
        await world.occupy("b", 1)  # ...full, and stopping: it refuses what it is sent
        b.node.state = NodeState.DRAINING
        async with anyio.create_task_group() as tg:
            ran: list[Outcome] = []

            async def batch() -> None:
                ran.extend(await _ran(a, [world.hello_spec] * 2))

            tg.start_soon(batch)
            with anyio.fail_after(10):  # both wait for room here: then a has some
                while a.node.controller.waiting_count < 2:
                    await anyio.sleep(0.01)
            await world.free("a", blockers)
        assert _nodes(ran) == ["a", "a"]
        assert [name for name, _ in world.forwarder.calls] == ["b"]  # refused once
        for result in _ended(ran):
            assert await holders(world, result.task.id) == ["a"]


async def test_a_task_refused_max_hops_times_waits_in_the_queue_up_to_its_bound(
    tmp_path: Path,
) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1, max_queued=1, max_hops=2)
        await world.occupy("a", 1)
        b = await world.member("b", 1)
        await a.scheduler.refresh_view()
        b.node.state = NodeState.DRAINING  # it refuses what it is sent, saying it has room
        await a.scheduler.enqueue(a.scheduler.new_task(world.hello_spec), None)  # the queue: full
        (out,) = await _ran(a, [world.hello_spec])
        assert isinstance(out, ResourceExhausted) and "overloaded" in str(out)
        assert [name for name, _ in world.forwarder.calls] == ["b", "b"]  # max_hops
        assert a.scheduler.queued == 1


async def test_a_task_refused_max_hops_times_runs_from_the_queue_once_there_is_room(
    tmp_path: Path,
) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1, max_hops=1)
        blockers = await world.occupy("a", 1)
        b = await world.member("b", 1)
        await a.scheduler.refresh_view()
        b.node.state = NodeState.DRAINING  # it refuses what it is sent
        ran: list[Outcome] = []

        async def batch() -> None:
            ran.extend(await _ran(a, [world.hello_spec]))

        async with anyio.create_task_group() as loop:
            await loop.start(a.scheduler.run)  # (places what waits in the queue)
            async with anyio.create_task_group() as tg:
                tg.start_soon(batch)
                with anyio.fail_after(10):
                    while a.scheduler.queued == 0:
                        await anyio.sleep(0.01)
                (queued,) = a.scheduler.queued_tasks()
                await world.free("a", blockers)
            loop.cancel_scope.cancel()
        (result,) = _ended(ran)
        assert (result.task.id, result.task.node) == (queued.id, "a")
        assert result.task.state is TaskState.COMPLETED
        assert await holders(world, queued.id) == ["a"]


async def holders(world: Members, task_id: str) -> list[str]:
    """The members that recorded `task_id` (one, for a task neither lost nor run twice)."""
    found = []
    for name, member in world.members.items():
        with contextlib.suppress(NotFound):
            await member.local.task(task_id)
            found.append(name)
    return found


async def test_a_task_no_node_can_run_fails_at_once_with_the_reason(tmp_path: Path) -> None:
    """As one submitted alone does (Scheduler.submit): it neither waits for ever in the
    queue for a node that will never come, nor holds up the batch's answer."""
    async with _members(tmp_path) as world:
        a = await world.member("a", 2)
        await world.member("b", 2)
        await a.scheduler.refresh_view()
        gpu = FunctionSpec(world.hello, labels=(("gpu", "yes"),))
        here, never = _ended(await _ran(a, [world.hello_spec, gpu]))
        assert here.task.state is TaskState.COMPLETED
        assert never.task.state is TaskState.FAILED
        assert never.task.exit_code == ResourceExhausted.exit_code
        assert (never.task.reason or "").startswith("no node in the cluster can run this task")
        assert (await world.sms.task(never.task.id)).state is TaskState.FAILED
        assert a.scheduler.queued == 0 and world.forwarder.calls == []
        # A forwarded call (ClusterNode.call: it does not fit here) is answered so too.
        called = await a.call(gpu)
        assert called.task.state is TaskState.FAILED


async def test_a_task_only_a_node_the_view_does_not_know_can_run_is_placed_by_the_sms(
    tmp_path: Path,
) -> None:
    async with _members(tmp_path) as world:
        a = await world.member("a", 1)
        await world.member("b", 2)
        await a.scheduler.refresh_view()
        await world.member("c", 1, ZONE_X)  # joined since a's view was filled
        out = await _ran(a, [world.hello_x, world.hello_spec, world.hello_spec])
        assert _nodes(out) == ["c", "a", "b"]
        assert sorted(name for name, _ in world.forwarder.calls) == ["b", "c"]
        assert a.scheduler.view.node("c") is None
