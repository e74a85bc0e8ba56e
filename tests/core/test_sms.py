"""The metadata server's logic over a real KV (LevelDB and etcd), with a clock we move."""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING

import pytest

from spear.core.cluster import (
    AgentInfo,
    ClusterTimings,
    NodeHealth,
    NodeRecord,
    ObjectLocation,
    PlacementQuery,
    input_objects,
    selector_labels,
)
from spear.core.models import FunctionSpec, Resources, Task, TaskState
from spear.core.sms import NODE_LOST, MetadataServer
from spear.errors import NotFound
from spear.store.etcd import EtcdKV
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from spear.store.kv import KV

GiB = 1024**3


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["leveldb", "etcd"])
async def kv(
    request: pytest.FixtureRequest, tmp_path: Path, etcd_endpoint: str
) -> AsyncIterator[KV]:
    if request.param == "leveldb":
        store: KV = LevelDBKV.open(str(tmp_path / "sms.ldb"))
    else:
        store = await EtcdKV.connect([etcd_endpoint], namespace=f"sms-{secrets.token_hex(4)}/")
    try:
        yield store
    finally:
        await store.aclose()


TIMINGS = ClusterTimings(heartbeat_s=1, unhealthy_after_s=3, dead_after_s=10)


def node(name: str, cpu: int = 2000, mem: int = 4 * GiB, **kw: object) -> NodeRecord:
    return NodeRecord(
        name=name,
        address=f"127.0.0.1:{7000 + len(name)}",
        capacity=Resources(cpu, mem),
        free=Resources(cpu, mem),
        agents=(AgentInfo("wasm", "50"),),
        incarnation=f"{name}-1",
        **kw,  # type: ignore[arg-type]
    )


def task_on(node_name: str, state: TaskState = TaskState.RUNNING) -> Task:
    task = Task(
        id=secrets.token_hex(6),
        spec=FunctionSpec("m.wasm"),
        created_at=1.0,
        node=node_name,
        history=(("PENDING", 1.0),),
    )
    return task if state is TaskState.PENDING else task.transition(state)


async def test_register_heartbeat_deregister(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    rec = await sms.register(node("a"))
    assert rec.health is NodeHealth.HEALTHY and rec.registered_at == clock.now
    clock.now += 1
    beat = await sms.heartbeat("a", "a-1", Resources(500, GiB), 3, 1)
    assert beat is not None and beat.free == Resources(500, GiB) and beat.running_tasks == 3
    assert beat.last_heartbeat == clock.now
    # A heartbeat of another life, or of an unknown node, is refused: register again.
    assert await sms.heartbeat("a", "a-0", Resources(), 0, 0) is None
    assert await sms.heartbeat("nobody", "x", Resources(), 0, 0) is None
    running = await sms.report_task(task_on("a"))
    assert await sms.deregister("a", "a-1") is True
    assert (await sms.node("a")).health is NodeHealth.LEFT
    left = await sms.task(running.id)
    assert left.state is TaskState.FAILED and left.reason == "node left the cluster"
    assert await sms.heartbeat("a", "a-1", Resources(), 0, 0) is None
    with pytest.raises(NotFound):
        await sms.node("nobody")


async def test_silent_node_goes_unhealthy_then_dead_and_loses_its_tasks(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    await sms.register(node("b"))
    running = await sms.report_task(task_on("a"))
    pending = await sms.report_task(task_on("a", TaskState.PENDING))
    done = await sms.report_task(task_on("a").transition(TaskState.COMPLETED, exit_code=0))
    elsewhere = await sms.report_task(task_on("b"))
    clock.now += 2
    assert await sms.sweep() == []
    await sms.heartbeat("b", "b-1", Resources(2000, 4 * GiB), 1, 0)
    clock.now += 2  # a: 4 s silent
    assert await sms.sweep() == [("a", NodeHealth.UNHEALTHY)]
    assert [n.name for n in await sms.nodes(live_only=True)] == ["b"]
    await sms.heartbeat("b", "b-1", Resources(2000, 4 * GiB), 1, 0)
    clock.now += 7  # a: 11 s silent
    await sms.heartbeat("b", "b-1", Resources(2000, 4 * GiB), 1, 0)
    assert await sms.sweep() == [("a", NodeHealth.DEAD)]
    for t in (running, pending):
        lost = await sms.task(t.id)
        assert lost.state is TaskState.FAILED and lost.reason == NODE_LOST
    assert (await sms.task(done.id)).state is TaskState.COMPLETED
    assert (await sms.task(elsewhere.id)).state is TaskState.RUNNING
    # A late report from the dead node does not resurrect its task.
    late = await sms.report_task(running.transition(TaskState.COMPLETED, exit_code=0))
    assert late.state is TaskState.FAILED and late.reason == NODE_LOST
    # Coming back, it registers again and is healthy.
    assert await sms.heartbeat("a", "a-1", Resources(), 0, 0) is None
    back = await sms.register(node("a"))
    assert back.health is NodeHealth.HEALTHY


async def test_find_nodes_fits_resources_runtime_labels_and_says_why_not(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("small", cpu=500, labels=(("zone", "a"),)))
    await sms.register(node("big", cpu=4000, labels=(("zone", "b"), ("gpu", "yes"))))
    need = Resources(1000, GiB)
    found = await sms.find_nodes(PlacementQuery(need, "wasm"))
    assert found.could_ever_fit and [c.node.name for c in found.candidates] == ["big"]
    found = await sms.find_nodes(PlacementQuery(Resources(100, GiB), "wasm", (("zone", "a"),)))
    assert [c.node.name for c in found.candidates] == ["small"]
    never = await sms.find_nodes(PlacementQuery(Resources(8000, GiB), "wasm"))
    assert not never.could_ever_fit and "no live node is that large" in never.reason
    never = await sms.find_nodes(PlacementQuery(need, "process"))
    assert not never.could_ever_fit and "process runtime" in never.reason
    never = await sms.find_nodes(PlacementQuery(need, "wasm", (("zone", "c"),)))
    assert not never.could_ever_fit and "zone=c" in never.reason
    # Fits the node but not its free resources now: could fit, no candidate (wait).
    await sms.heartbeat("big", "big-1", Resources(200, GiB), 5, 0)
    busy = await sms.find_nodes(PlacementQuery(need, "wasm"))
    assert busy.could_ever_fit and busy.candidates == ()
    excluded = await sms.find_nodes(PlacementQuery(Resources(100, GiB), "wasm", exclude=("big",)))
    assert [c.node.name for c in excluded.candidates] == ["small"]


async def test_object_index_and_data_affinity(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    for name in ("a", "b", "c"):
        await sms.register(node(name))
    await sms.put_object_location(ObjectLocation("in/x", "b", 3, 10))
    await sms.put_object_location(ObjectLocation("in/y", "b", 1, 10))
    await sms.put_object_location(ObjectLocation("in/y", "c", 2, 10))
    await sms.put_object_location(ObjectLocation("in/x/sub", "a", 1, 1))  # not "in/x"
    assert [loc.node for loc in await sms.locate_object("in/x")] == ["b"]
    assert [loc.node for loc in await sms.locate_object("in/y")] == ["c", "b"]  # newest first
    found = await sms.find_nodes(PlacementQuery(Resources(), "wasm", objects=("in/x", "in/y")))
    held = {c.node.name: c.objects_held for c in found.candidates}
    assert held == {"a": 0, "b": 2, "c": 1}
    assert await sms.remove_object_location("in/y", "c") is True
    assert await sms.remove_object_location("in/y", "c") is False
    assert await sms.locate_object("nothing") == []


async def test_task_registry_moves_with_the_task(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    await sms.register(node("b"))
    pending = await sms.report_task(task_on("a", TaskState.PENDING))
    forwarded = await sms.report_task(dataclasses.replace(pending, node="b"))
    assert forwarded.node == "b"
    clock.now += 11
    await sms.heartbeat("b", "b-1", Resources(), 0, 0)
    await sms.sweep()  # a is dead, but the task now lives on b
    assert (await sms.task(pending.id)).state is TaskState.PENDING
    assert [t.id for t in await sms.tasks(node="b")] == [pending.id]
    assert await sms.tasks(state=TaskState.COMPLETED) == []


async def test_many_reports_in_one_call_apply_as_each_would(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a"))
    running = await sms.report_task(task_on("a"))
    done = running.transition(TaskState.COMPLETED, exit_code=0)
    finished = await sms.report_task(task_on("a").transition(TaskState.FAILED, exit_code=1))
    fresh = task_on("a", TaskState.PENDING)
    stale = dataclasses.replace(finished, state=TaskState.RUNNING, history=finished.history[:2])
    await sms.report_tasks([done, fresh, stale])
    assert await sms.task(running.id) == done
    assert await sms.task(fresh.id) == fresh
    assert (await sms.task(finished.id)).state is TaskState.FAILED  # a late report: ignored
    assert [t.id for t in await sms.tasks(TaskState.PENDING)] == [fresh.id]


async def test_a_restarted_sms_loses_nothing(tmp_path: Path) -> None:
    clock = Clock()
    kv = LevelDBKV.open(str(tmp_path / "sms.ldb"))
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a", labels=(("zone", "a"),)))
    t = await sms.report_task(task_on("a"))
    await sms.put_object_location(ObjectLocation("k", "a", 1, 1))
    await kv.aclose()
    kv = LevelDBKV.open(str(tmp_path / "sms.ldb"))
    again = MetadataServer(kv, TIMINGS, clock)
    assert (await again.node("a")).labels == (("zone", "a"),)
    assert (await again.task(t.id)).state is TaskState.RUNNING
    assert [loc.node for loc in await again.locate_object("k")] == ["a"]
    assert await again.heartbeat("a", "a-1", Resources(), 0, 0) is not None
    await kv.aclose()


async def test_a_restarted_sms_gives_nodes_a_full_period_before_judging_them(
    tmp_path: Path,
) -> None:
    clock = Clock()
    kv = LevelDBKV.open(str(tmp_path / "sms.ldb"))
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    running = await sms.report_task(task_on("a"))
    clock.now += 60  # the SMS was down for a minute; node a could not reach it
    again = MetadataServer(kv, TIMINGS, clock)
    assert await again.sweep() == []
    assert [n.name for n in await again.nodes(live_only=True)] == ["a"]
    assert await again.heartbeat("a", "a-1", Resources(), 1, 0) is not None
    clock.now += 11  # but a node silent for a whole period after the restart is dead
    assert await again.sweep() == [("a", NodeHealth.DEAD)]
    assert (await again.task(running.id)).reason == NODE_LOST
    await kv.aclose()


def test_spec_labels_split_into_selectors_and_inputs() -> None:
    labels = (("zone", "a"), ("spear/inputs", "x, y/z"), ("gpu", "yes"), ("mcp.allow", "time/*"))
    # (mcp.allow narrows the task's MCP tools: no node carries it, so it selects none)
    assert selector_labels(labels) == (("zone", "a"), ("gpu", "yes"))
    assert input_objects(labels) == ("x", "y/z")


def test_timings_are_checked() -> None:
    from spear.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        ClusterTimings(heartbeat_s=5, unhealthy_after_s=1)
    assert ClusterTimings.from_extra({"heartbeat_s": "0.2"}).unhealthy_after_s == pytest.approx(0.6)


def test_the_placement_policy_prefers_data_then_free_cpu() -> None:
    from spear.core.cluster import Candidate
    from spear.core.scheduler import rank_candidates

    def cand(name: str, cpu: int, held: int = 0) -> Candidate:
        rec = node(name)
        return Candidate(dataclasses.replace(rec, free=Resources(cpu, GiB)), held)

    ranked = rank_candidates([cand("a", 500), cand("b", 1500), cand("c", 100, held=1)])
    assert [c.node.name for c in ranked] == ["c", "b", "a"]
    assert [c.node.name for c in rank_candidates([cand("y", 5), cand("x", 5)])] == ["x", "y"]


async def test_a_batch_of_reports_is_applied_as_each_alone_would_be(kv: KV) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    await sms.register(node("a"))
    await sms.register(node("b"))
    moved = await sms.report_task(task_on("a", TaskState.PENDING))
    finished = await sms.report_task(task_on("a").transition(TaskState.COMPLETED, exit_code=0))
    late = dataclasses.replace(finished, state=TaskState.RUNNING, history=finished.history[:2])
    many = [task_on("a") for _ in range(150)]  # more than one commit holds
    ended = [t.transition(TaskState.FAILED, exit_code=1) for t in many[:40]]
    running_on_b = dataclasses.replace(moved, node="b").transition(TaskState.RUNNING)
    await sms.report_tasks([*many[40:], *ended, running_on_b, late])
    assert (await sms.task(finished.id)).state is TaskState.COMPLETED  # late: ignored
    assert await sms.task(running_on_b.id) == running_on_b
    for task in [*many[40:], *ended]:
        assert await sms.task(task.id) == task
    index = {e.key for e in await kv.scan("node-tasks/")}
    want = {f"node-tasks/a/{t.id}" for t in many[40:]} | {f"node-tasks/b/{moved.id}"}
    assert index == want  # ended tasks and the moved one's old entry are gone
    # When a node dies, every unfinished task of it is failed through that index.
    await sms.deregister("a", "a-1")
    assert {t.state for t in await sms.tasks(node="a")} == {TaskState.FAILED, TaskState.COMPLETED}
