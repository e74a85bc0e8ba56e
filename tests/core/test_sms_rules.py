"""The SMS's rules one at a time (core/sms.py), on a real LevelDB KV with a clock we move:
who may register, when a node is judged unhealthy or dead (the exact edges), what a
heartbeat from another SMS's memory restores, why a task cannot be placed (the words a
user reads), where the task index follows a task, and which copy of an object is offered
first. tests/core/test_sms.py runs the main paths on LevelDB and etcd alike."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import anyio
import pytest
from log_capture import SpearLog
from test_sms import TIMINGS, Clock, GiB, node, task_on

from spear.core.cluster import ClusterTimings, NodeHealth, ObjectLocation, PlacementQuery
from spear.core.models import Resources, Task, TaskState
from spear.core.sms import NODE_LOST, MetadataServer
from spear.core.worker import EXIT_LOST
from spear.errors import InvalidArgument, NotFound
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from spear.store.kv import KV


@pytest.fixture
async def kv(tmp_path: Path) -> AsyncIterator[KV]:
    store = LevelDBKV.open(str(tmp_path / "sms.ldb"))
    try:
        yield store
    finally:
        await store.aclose()


async def stored_health(kv: KV, name: str) -> NodeHealth:
    entry = await kv.get("nodes/" + name)
    assert entry is not None
    return NodeHealth(json.loads(entry.value)["health"])


async def test_a_node_needs_a_name_and_an_address(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    for bad in (node(""), dataclasses.replace(node("a"), address="")):
        with pytest.raises(
            InvalidArgument, match="^a node needs a name and an address to register$"
        ):
            await sms.register(bad)
    assert await sms.nodes() == []


async def test_a_node_back_in_a_new_life_loses_its_old_tasks_and_not_otherwise(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    old = await sms.report_task(task_on("a"))
    # The same life registering again (it lost touch with the SMS): its tasks run on.
    clock.now += 1
    again = await sms.register(node("a"))
    assert (again.registered_at, again.last_heartbeat) == (clock.now, clock.now)
    assert (await sms.task(old.id)).state is TaskState.RUNNING
    # A new life (the node restarted before anyone noticed it died): the old tasks are gone.
    await sms.register(dataclasses.replace(node("a"), incarnation="a-2"))
    lost = await sms.task(old.id)
    assert (lost.state, lost.reason, lost.exit_code) == (TaskState.FAILED, NODE_LOST, EXIT_LOST)
    assert await sms.tasks(node="a", state=TaskState.RUNNING) == []
    # Only the new life's heartbeats are taken.
    assert await sms.heartbeat("a", "a-1", Resources(), 0, 0) is None
    assert await sms.heartbeat("a", "a-2", Resources(), 0, 0) is not None


async def test_a_dead_node_back_in_a_new_life_starts_healthy(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    clock.now += TIMINGS.dead_after_s + 1
    assert await sms.sweep() == [("a", NodeHealth.DEAD)]
    assert await sms.heartbeat("a", "a-1", Resources(), 0, 0) is None  # dead: register again
    back = await sms.register(dataclasses.replace(node("a"), incarnation="a-2"))
    assert back.health is NodeHealth.HEALTHY and back.registered_at == clock.now
    assert [n.name for n in await sms.nodes(live_only=True)] == ["a"]


async def test_the_edges_of_unhealthy_and_dead(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    start = clock.now
    clock.now = start + TIMINGS.unhealthy_after_s  # silent exactly that long: still fine
    assert await sms.sweep() == []
    assert [n.name for n in await sms.nodes(live_only=True)] == ["a"]
    clock.now = start + TIMINGS.unhealthy_after_s + 0.5
    # Judged on the clock as well: not offered even before a sweep marks it.
    assert await sms.nodes(live_only=True) == []
    assert len(await sms.nodes()) == 1
    assert await sms.sweep() == [("a", NodeHealth.UNHEALTHY)]
    assert await sms.sweep() == []  # unhealthy already, not dead yet: no change
    clock.now = start + TIMINGS.dead_after_s  # silent exactly that long: not dead yet
    assert await sms.sweep() == []
    clock.now = start + TIMINGS.dead_after_s + 0.5
    assert await sms.sweep() == [("a", NodeHealth.DEAD)]
    assert await stored_health(kv, "a") is NodeHealth.DEAD
    clock.now += 100
    assert await sms.sweep() == []  # the dead are not judged again


async def test_a_healthy_node_silent_past_dead_goes_straight_to_dead(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    task = await sms.report_task(task_on("a"))
    clock.now += TIMINGS.dead_after_s + 1
    assert await sms.sweep() == [("a", NodeHealth.DEAD)]
    assert (await sms.task(task.id)).reason == NODE_LOST


async def test_a_node_that_left_is_not_judged_and_its_tasks_end(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    task = await sms.report_task(task_on("a"))
    assert await sms.deregister("a", "a-0") is False  # another life: refused
    assert (await sms.node("a")).health is NodeHealth.HEALTHY
    assert (await sms.task(task.id)).state is TaskState.RUNNING
    await sms.heartbeat("a", "a-1", Resources(1, 1), 3, 0)
    assert (await sms.node("a")).running_tasks == 3
    assert await sms.deregister("a", "a-1") is True
    assert (await sms.node("a")).running_tasks == 0
    assert await sms.deregister("nobody", "x") is False
    clock.now += TIMINGS.dead_after_s + 1
    assert await sms.sweep() == []
    assert await stored_health(kv, "a") is NodeHealth.LEFT


async def test_a_heartbeat_to_an_sms_that_did_not_hear_the_last_one(kv: KV) -> None:
    """Another SMS over the same KV (a new leader) takes a heartbeat through the KV: the
    load it carries and the time are written, and an unhealthy node is healthy again."""
    clock = Clock()
    first = MetadataServer(kv, TIMINGS, clock)
    await first.register(node("a"))
    clock.now += TIMINGS.unhealthy_after_s + 1
    assert await first.sweep() == [("a", NodeHealth.UNHEALTHY)]
    other = MetadataServer(kv, TIMINGS, clock)
    assert await other.heartbeat("a", "a-0", Resources(1, 1), 0, 0) is None
    clock.now += 1
    beat = await other.heartbeat("a", "a-1", Resources(300, GiB), 4, 2)
    assert beat is not None
    assert (beat.free, beat.running_tasks, beat.queued_tasks) == (Resources(300, GiB), 4, 2)
    assert (beat.last_heartbeat, beat.health) == (clock.now, NodeHealth.HEALTHY)
    assert await stored_health(kv, "a") is NodeHealth.HEALTHY
    read = await MetadataServer(kv, TIMINGS, clock).node("a")
    assert (read.queued_tasks, read.running_tasks) == (2, 4)


async def test_the_reason_a_task_cannot_be_placed(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    need = Resources(1000, GiB)
    nothing = await sms.find_nodes(PlacementQuery(need, "wasm"))
    assert (nothing.could_ever_fit, nothing.reason) == (False, "no live node in the cluster")
    assert nothing.no_live_node
    await sms.register(node("small", cpu=500, mem=8 * GiB, labels=(("zone", "a"),)))
    await sms.register(node("big", cpu=4000, mem=2 * GiB, labels=(("zone", "a"),)))
    await sms.register(node("other", cpu=9000, labels=(("zone", "b"),)))
    labels = await sms.find_nodes(PlacementQuery(need, "wasm", (("zone", "c"), ("gpu", "y"))))
    assert labels.reason == "no live node has the labels zone=c, gpu=y"
    assert not labels.no_live_node  # (nodes live; none fits)
    large = await sms.find_nodes(PlacementQuery(Resources(5000, GiB), "wasm", (("zone", "a"),)))
    assert large.reason == (
        f"the task needs 5000m CPU and {GiB} bytes of memory; no live node is that large"
        " (the largest fitting the other constraints, big, has 4000m and"
        f" {2 * GiB} bytes)"
    )
    # Too much memory for every node with the labels: the CPU-largest is named.
    memory = await sms.find_nodes(PlacementQuery(Resources(100, 9 * GiB), "wasm", (("zone", "a"),)))
    assert not memory.could_ever_fit and ", big, has 4000m" in memory.reason


async def test_an_unhealthy_node_could_fit_but_is_not_offered_and_a_dead_one_neither(
    kv: KV,
) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    clock.now += TIMINGS.unhealthy_after_s + 1
    await sms.sweep()
    waiting = await sms.find_nodes(PlacementQuery(Resources(100, GiB), "wasm"))
    assert (waiting.could_ever_fit, waiting.candidates) == (True, ())
    clock.now += TIMINGS.dead_after_s
    await sms.sweep()
    never = await sms.find_nodes(PlacementQuery(Resources(100, GiB), "wasm"))
    assert (never.could_ever_fit, never.reason) == (False, "no live node in the cluster")
    assert never.no_live_node  # (one node, dead)


async def test_a_candidate_needs_the_room_free_now_not_only_in_total(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a", cpu=2000, mem=4 * GiB))
    await sms.heartbeat("a", "a-1", Resources(1000, GiB), 1, 0)
    exact = await sms.find_nodes(PlacementQuery(Resources(1000, GiB), "wasm"))
    assert [c.node.name for c in exact.candidates] == ["a"]
    more = await sms.find_nodes(PlacementQuery(Resources(1001, GiB), "wasm"))
    assert (more.could_ever_fit, more.candidates) == (True, ())


async def test_the_task_index_follows_the_task_between_nodes(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a"))
    await sms.register(node("b"))

    async def index() -> set[str]:
        return {e.key for e in await kv.scan("node-tasks/")}

    task = await sms.report_task(task_on("a", TaskState.PENDING))
    assert await index() == {f"node-tasks/a/{task.id}"}
    moved = await sms.report_task(dataclasses.replace(task, node="b").transition(TaskState.RUNNING))
    assert await index() == {f"node-tasks/b/{task.id}"}
    # a's death no longer touches it; b's ending removes it.
    await sms.deregister("a", "a-1")
    assert (await sms.task(task.id)).state is TaskState.RUNNING
    await sms.report_task(moved.transition(TaskState.COMPLETED, exit_code=0))
    assert await index() == set()
    # A task with no node yet is in no node's index.
    await sms.report_task(dataclasses.replace(task_on("a", TaskState.PENDING), node=None))
    assert await index() == set()


async def test_a_late_report_of_an_earlier_state_is_ignored(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a"))
    pending = await sms.report_task(task_on("a", TaskState.PENDING))
    running = await sms.report_task(pending.transition(TaskState.RUNNING))
    assert await sms.report_task(pending) == running
    assert (await sms.task(pending.id)).state is TaskState.RUNNING
    same_length = dataclasses.replace(running, reason="told again")
    assert (await sms.report_task(same_length)).reason == "told again"  # not earlier: kept


async def test_task_listings_filter_then_count(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a"))
    await sms.register(node("b"))
    on_a = [await sms.report_task(task_on("a")) for _ in range(3)]
    await sms.report_task(task_on("b"))
    done = await sms.report_task(task_on("a").transition(TaskState.COMPLETED, exit_code=0))
    assert len(await sms.tasks()) == 5
    assert len(await sms.tasks(limit=2)) == 2
    assert len(await sms.tasks(limit=5)) == 5
    listed = await sms.tasks(state=TaskState.RUNNING, node="a", limit=10)
    assert sorted(t.id for t in listed) == sorted(t.id for t in on_a)
    assert [t.id for t in await sms.tasks(state=TaskState.COMPLETED, limit=1)] == [done.id]
    ids = [t.id for t in await sms.tasks()]
    assert ids == sorted(ids, reverse=True)  # newest key first, as the CLI shows them
    # A unique prefix names a task; no match is NotFound.
    assert (await sms.task(done.id[:6])).id == done.id
    with pytest.raises(NotFound):
        await sms.task("f" * 40)


async def test_an_object_location_needs_a_key_and_a_node(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    for bad in (ObjectLocation("", "a", 1, 1), ObjectLocation("k", "", 1, 1)):
        with pytest.raises(InvalidArgument, match="^an object location needs a key and a node$"):
            await sms.put_object_location(bad)
    assert await sms.locate_object("k") == []


async def test_copies_on_healthy_nodes_come_first_then_the_newest(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    for name in ("a", "b", "c"):
        await sms.register(node(name))
    await sms.put_object_location(ObjectLocation("k", "a", 5, 10))  # newest, but silent
    await sms.put_object_location(ObjectLocation("k", "b", 2, 10))
    await sms.put_object_location(ObjectLocation("k", "c", 3, 10))
    await sms.put_object_location(ObjectLocation("k", "gone", 9, 10))  # no such node
    assert [loc.node for loc in await sms.locate_object("k")] == ["a", "c", "b", "gone"]
    clock.now += TIMINGS.unhealthy_after_s + 1
    for name in ("b", "c"):
        await sms.heartbeat(name, f"{name}-1", Resources(2000, 4 * GiB), 0, 0)
    found = await sms.locate_object("k")
    assert [(loc.node, loc.version) for loc in found] == [("c", 3), ("b", 2), ("gone", 9), ("a", 5)]
    assert {(loc.key, loc.size) for loc in found} == {("k", 10)}


async def test_the_object_index_answers_before_the_old_locations(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a"))
    await sms.put_object_location(ObjectLocation("k", "old", 1, 1))
    record = await sms.objects.commit("k", "a", "a:1", 7, None)
    found = await sms.locate_object("k")
    assert found == [ObjectLocation("k", "a", record.version, 7)]


async def test_what_an_operator_reads_in_the_sms_log(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    with SpearLog("INFO") as logged:
        await sms.register(node("a"))
        await sms.register(node("b"))
        await sms.report_task(task_on("a"))
        await sms.report_task(task_on("a"))
        await sms.deregister("b", "b-1")
        clock.now += TIMINGS.unhealthy_after_s + 1
        await sms.sweep()
        clock.now += TIMINGS.dead_after_s
        await sms.sweep()
    assert [line.rstrip("\n") for line in logged] == [
        "INFO: node a registered at 127.0.0.1:7001",
        "INFO: node b registered at 127.0.0.1:7001",
        "INFO: node b left",
        "WARNING: node a missed its heartbeats",
        "WARNING: node a is dead; 2 task(s) failed",
    ]


async def test_the_timings_given_are_the_ones_used(kv: KV) -> None:
    clock = Clock()
    slow = ClusterTimings(heartbeat_s=2, unhealthy_after_s=7, dead_after_s=30)
    sms = MetadataServer(kv, slow, clock)
    await sms.register(node("a"))
    clock.now += 6  # past the default 3 s, within these 7
    assert await sms.sweep() == []
    assert [n.name for n in await sms.nodes(live_only=True)] == ["a"]
    clock.now += 20  # 26 s: past the default 10 s, within these 30
    assert await sms.sweep() == [("a", NodeHealth.UNHEALTHY)]


async def test_unknown_nodes_and_tasks_are_named_in_the_error(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a"))
    with pytest.raises(NotFound, match="^no such node: nobody$"):
        await sms.node("nobody")  # (read from the KV)
    await sms.nodes()  # the leader now holds every record: answered from memory
    assert (await sms.node("a")).name == "a"
    with pytest.raises(NotFound, match="^no such node: nobody$"):
        await sms.node("nobody")
    with pytest.raises(NotFound, match="^no such task: "):
        await sms.task("0" * 24)


async def test_a_stale_task_index_entry_fails_no_task_that_moved_or_ended(kv: KV) -> None:
    """The index entry `node-tasks/<node>/<id>` may outlive its task's move or end (a
    crash between the two writes): a node's death then fails only its own live tasks,
    whatever order the entries come in, and clears every entry of it."""
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a"))
    await sms.register(node("b"))

    def with_id(first: str, task: Task) -> Task:
        return dataclasses.replace(task, id=first * 24)

    moved = await sms.report_task(with_id("1", task_on("b")))
    ended = await sms.report_task(
        with_id("2", task_on("a").transition(TaskState.COMPLETED, exit_code=0))
    )
    mine = [await sms.report_task(with_id(c, task_on("a"))) for c in ("3", "5")]
    for stale in (moved.id, ended.id, "4" * 24):  # ("4...": no such task at all)
        await kv.put(f"node-tasks/a/{stale}", b"")
    await sms.deregister("a", "a-1")
    assert (await sms.task(moved.id)).state is TaskState.RUNNING
    assert (await sms.task(ended.id)).state is TaskState.COMPLETED
    for task in mine:
        lost = await sms.task(task.id)
        assert (lost.state, lost.exit_code) == (TaskState.FAILED, EXIT_LOST)
    assert {e.key for e in await kv.scan("node-tasks/")} == {f"node-tasks/b/{moved.id}"}


async def test_the_object_index_judges_holders_by_the_smss_nodes_and_clock(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    await sms.register(node("b"))
    record = await sms.objects.commit("k", "a", "a:1", 1, None)
    assert record.created_at == clock.now
    await sms.objects.hold("k", "b", "b:1", record.version)
    await sms.deregister("b", "b-1")
    found = await sms.objects.lookup("k")
    assert [(h.node, h.live) for h in found.holders] == [("a", True), ("b", False)]


async def test_placements_and_heartbeats_are_counted_for_the_metrics(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a"))
    for _ in range(3):
        await sms.heartbeat("a", "a-1", Resources(1, 1), 0, 0)
    await sms.heartbeat("a", "a-0", Resources(1, 1), 0, 0)  # refused, but heard
    assert sms.stats.heartbeats == 4
    await sms.find_nodes(PlacementQuery(Resources(1, 1), "wasm"))
    none = await sms.find_nodes(PlacementQuery(Resources(1, 1), "process"))
    assert none.candidates == ()
    assert sms.stats.placement.count == 2
    assert 0 <= sms.stats.placement.sum < 60  # seconds taken, not a clock reading


async def test_one_sweep_judges_every_node_whatever_comes_before_it(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    for name in ("a", "b", "c", "d"):
        await sms.register(node(name))
    await sms.deregister("a", "a-1")  # left: skipped
    clock.now += TIMINGS.unhealthy_after_s + 1
    await sms.heartbeat("b", "b-1", Resources(1, 1), 0, 0)  # spoke: no change
    assert await sms.sweep() == [("c", NodeHealth.UNHEALTHY), ("d", NodeHealth.UNHEALTHY)]
    await sms.heartbeat("c", "c-1", Resources(1, 1), 0, 0)
    clock.now += TIMINGS.dead_after_s
    await sms.heartbeat("b", "b-1", Resources(1, 1), 0, 0)
    await sms.heartbeat("c", "c-1", Resources(1, 1), 0, 0)
    assert await sms.sweep() == [("d", NodeHealth.DEAD)]


async def test_the_sms_decides_a_registering_nodes_health(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    claimed = dataclasses.replace(node("a"), health=NodeHealth.DEAD)
    assert (await sms.register(claimed)).health is NodeHealth.HEALTHY
    assert await stored_health(kv, "a") is NodeHealth.HEALTHY


async def test_a_checkpoint_never_overwrites_another_smss_newer_record(kv: KV) -> None:
    clock = Clock()
    leader = MetadataServer(kv, TIMINGS, clock)
    other = MetadataServer(kv, TIMINGS, clock)
    await leader.register(node("a"))
    await leader.heartbeat("a", "a-1", Resources(5, 5), 1, 0)  # (in memory)
    moved = dataclasses.replace(node("a"), incarnation="a-2", address="10.0.0.9:1")
    await other.register(moved)
    assert await leader.checkpoint() == 1  # rewritten on the newer record: it wins
    entry = await kv.get("nodes/a")
    assert entry is not None
    stored = json.loads(entry.value)
    assert (stored["incarnation"], stored["address"]) == ("a-2", "10.0.0.9:1")
    # The leader now follows the new life, and still yields to a newer write.
    assert await leader.heartbeat("a", "a-2", Resources(6, 6), 2, 0) is not None
    await other.register(dataclasses.replace(moved, incarnation="a-3"))
    await leader.checkpoint()
    entry = await kv.get("nodes/a")
    assert entry is not None and json.loads(entry.value)["incarnation"] == "a-3"


class HookedKV:
    """A real KV that runs `hook` (once) just before the next read of `key`."""

    def __init__(self, kv: KV) -> None:
        self._kv = kv
        self.key = ""
        self.hook: Callable[[], Awaitable[object]] | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self._kv, name)

    async def get(self, key: str) -> object:
        hook, self.hook = (self.hook, None) if key == self.key else (None, self.hook)
        if hook is not None:
            await hook()
        return await self._kv.get(key)


async def test_a_node_that_speaks_while_the_sweep_judges_it_is_spared(kv: KV) -> None:
    clock = Clock()
    hooked = HookedKV(kv)
    sms = MetadataServer(hooked, TIMINGS, clock)  # type: ignore[arg-type]
    for name in ("a", "b"):
        await sms.register(node(name))
    clock.now += TIMINGS.unhealthy_after_s + 1
    hooked.key = "nodes/a"
    hooked.hook = lambda: sms.heartbeat("a", "a-1", Resources(1, 1), 0, 0)
    # a spoke between the sweep's listing and its write: spared; b is judged all the same.
    assert await sms.sweep() == [("b", NodeHealth.UNHEALTHY)]
    assert await stored_health(kv, "a") is NodeHealth.HEALTHY


async def test_reports_and_node_changes_end(kv: KV) -> None:
    """Each compare-and-swap loop ends (a wrong expected version would retry forever)."""
    sms = MetadataServer(kv, TIMINGS, Clock())
    with anyio.fail_after(10):
        await sms.register(node("a"))
        task = await sms.report_task(task_on("a"))
        await sms.report_task(task.transition(TaskState.COMPLETED, exit_code=0))
        await sms.report_task(task_on("a"))
        other = MetadataServer(kv, TIMINGS, Clock())  # (heartbeats through the KV)
        assert await other.heartbeat("a", "a-1", Resources(1, 1), 0, 0) is not None
        assert await sms.deregister("a", "a-1")


async def test_a_retried_task_reported_without_retries_here_is_recorded(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a"))
    again = dataclasses.replace(task_on("a"), attempts=1)
    assert (await sms.report_task(again)).attempts == 1
    assert (await sms.task(again.id)).attempts == 1


async def test_a_batch_with_retries_retries_the_lost_and_applies_the_rest(kv: KV) -> None:
    from test_retry_placement import Recorder, retryable

    from spear.core.retry_placement import RetryPlacement

    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    sms.retries = RetryPlacement(sms, Recorder(), clock)
    await sms.register(node("a"))
    running = task_on("a")
    lost = retryable(task_on("a")).transition(TaskState.FAILED, reason="lost", exit_code=EXIT_LOST)
    done = task_on("a").transition(TaskState.COMPLETED, exit_code=0)
    await sms.report_tasks([running, lost, done])
    assert await sms.task(running.id) == running
    assert await sms.task(done.id) == done
    retried = await sms.task(lost.id)
    assert (retried.state, retried.attempts) == (TaskState.PENDING, 1)


async def test_the_sweeper_runs_until_cancelled_and_outlives_a_failure(kv: KV) -> None:
    clock = Clock()
    timings = ClusterTimings(heartbeat_s=0.02, unhealthy_after_s=3, dead_after_s=10)
    sms = MetadataServer(kv, timings, clock)

    class Failing:
        calls = 0

        async def place_due(self) -> int:
            self.calls += 1
            raise RuntimeError("placement broke")

    failing = Failing()
    sms.retries = failing  # type: ignore[assignment]
    await sms.register(node("a"))
    with SpearLog("ERROR", "{message}") as logged:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sms.run_sweeper)
            clock.now += timings.dead_after_s + 1
            with anyio.fail_after(20):
                while await stored_health(kv, "a") is not NodeHealth.DEAD or failing.calls < 2:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert logged and all(m.startswith("the node sweep failed") for m in logged)


@pytest.mark.parametrize("with_retries", [False, True], ids=["alone", "with-retries"])
async def test_a_batch_naming_a_task_twice_applies_both_in_order(
    kv: KV, with_retries: bool
) -> None:
    from test_retry_placement import Recorder

    from spear.core.retry_placement import RetryPlacement

    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    if with_retries:
        sms.retries = RetryPlacement(sms, Recorder(), clock)
    await sms.register(node("a"))
    running = task_on("a")
    done = running.transition(TaskState.COMPLETED, exit_code=0)
    other = task_on("a")
    await sms.report_tasks([running, other, done])
    assert await sms.task(running.id) == done
    assert await sms.task(other.id) == other
