"""Placement rules (issue #17) on an SMS and members in this process: real gRPC on
loopback, real LevelDB data dirs, real wasm tasks; fast beside the process-cluster tests.

Each member places from its own view of the cluster (no SMS call per task), forwards
directly, and a receiver whose room was taken meanwhile refuses so the sender places the
task again. Races are injected by giving two senders the same stale view of a receiver.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import wasmtime
from conftest import build_wat

import spear
from spear import FunctionSpec, ResourceExhausted, TaskState, join_cluster
from spear.config import Settings
from spear.core.node import NodeState
from spear.errors import NotFound
from spear.node.client import Client
from spear.transport import tls

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from spear.node.cluster import ClusterNode

HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 6))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""
LOOP_WAT = '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'
ZONE_X = (("zone", "x"),)
SLOT = 100  # millicores: a task's default reservation


@pytest.fixture
def hello(tmp_path: Path) -> str:
    return str(build_wat(HELLO_WAT, tmp_path, "hello"))


@pytest.fixture
def loop(tmp_path: Path) -> str:
    path = tmp_path / "loop.wasm"
    path.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    return str(path)


def _settings(tmp_path: Path, name: str, slots: int, labels: dict[str, str], **extra: Any) -> Any:
    # Views refreshed only when the test says (refresh_view), so a race between two
    # senders with the same stale view is certain, not a matter of timing.
    return Settings(
        data_dir=tmp_path / name,
        cpu_millis=slots * SLOT,
        extra={"view_refresh_s": 3600.0, "labels": labels, **extra},
    )


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, members: dict[str, tuple[int, dict[str, str]]], **extra: Any
) -> AsyncIterator[tuple[Any, dict[str, ClusterNode]]]:
    """An SMS and the named members (slots, labels), every view filled."""
    tls.create_ca(tmp_path / "ca")
    for name in ("sms", *members):
        tls.issue(tmp_path / "ca", name, tmp_path / name / "tls")
    async with contextlib.AsyncExitStack() as stack:
        sms = await stack.enter_async_context(spear.serve_sms(tmp_path / "sms"))
        nodes: dict[str, ClusterNode] = {}
        for name, (slots, labels) in members.items():
            nodes[name] = await stack.enter_async_context(
                join_cluster(
                    _settings(tmp_path, name, slots, labels, **extra),
                    sms=sms.address,
                    listen="127.0.0.1:0",
                    name=name,
                )
            )
        for node in nodes.values():
            await node.scheduler.refresh_view()
        yield sms, nodes


def placements(sms: Any) -> int:
    """How many placement queries the SMS answered."""
    return sum(sms.metadata.stats.placement.counts)


async def holders(nodes: dict[str, ClusterNode], task_id: str) -> list[str]:
    """The members that recorded `task_id` (exactly one, for a task neither lost nor run
    twice)."""
    found = []
    for name, node in nodes.items():
        with contextlib.suppress(NotFound):
            await node.local.task(task_id)
            found.append(name)
    return found


def test_local_first_then_forwarded_from_the_view_without_asking_the_sms(
    tmp_path: Path, hello: str
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"a": (4, {}), "b": (4, {"zone": "x"})}) as (sms, n):
            asked = placements(sms)
            here = await n["a"].call(FunctionSpec(hello))
            assert here.task.node == "a"
            for _ in range(3):  # the label only b has: forwarded, result in the same call
                called = await n["a"].call(FunctionSpec(hello, labels=ZONE_X))
                assert called.task.node == "b" and called.output == b"hello\n"
                assert called.task.state is TaskState.COMPLETED
            handle = await n["a"].submit(FunctionSpec(hello, labels=ZONE_X))
            assert (await handle).task.node == "b"
            assert placements(sms) == asked  # placed from the view: no FindNodes
            # The call was answered before b kept its result (hooks_later): kept still.
            key = f"results/{called.task.id}"
            with anyio.fail_after(10):
                while True:
                    with contextlib.suppress(NotFound):
                        assert bytes((await n["b"].node.objects.get(key))[0]) == b"hello\n"
                        break
                    await anyio.sleep(0.02)

    anyio.run(main)


def test_a_task_no_node_could_ever_run_fails_at_once_with_the_reason(
    tmp_path: Path, hello: str
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"a": (2, {}), "b": (2, {})}) as (_, n):
            task = (await n["a"].submit(FunctionSpec(hello, labels=(("gpu", "yes"),)))).task
            assert task.state is TaskState.FAILED
            assert "no node in the cluster can run this task" in (task.reason or "")
            huge = FunctionSpec(hello, resources=spear.Resources(cpu_millis=100_000))
            assert (await n["a"].submit(huge)).task.state is TaskState.FAILED

    anyio.run(main)


def test_a_new_node_the_view_has_not_seen_is_found_through_the_sms(
    tmp_path: Path, hello: str
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"a": (2, {}), "b": (2, {"zone": "x"})}) as (_, n):
            n["a"].scheduler.view.forget("b")  # a stale view: b unknown
            done = await n["a"].call(FunctionSpec(hello, labels=ZONE_X))
            assert done.task.node == "b"  # not failed: the SMS confirmed b could run it

    anyio.run(main)


def test_two_senders_racing_for_one_slot_spill_back_and_nothing_runs_twice(
    tmp_path: Path, loop: str
) -> None:
    members = {"a": (1, {}), "c": (1, {}), "b": (1, {"zone": "x"}), "d": (1, {"zone": "x"})}

    async def main() -> None:
        async with cluster(tmp_path, members) as (_, n):
            spec = FunctionSpec(loop, labels=ZONE_X)
            # Both views say b and d each have one free slot, b first (by name): both
            # senders forward to b at once; one is refused and places its task again.
            ids: list[str] = []

            async def send(sender: str) -> None:
                ids.append((await n[sender].submit(spec)).id)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send, "a")
                tg.start_soon(send, "c")
            assert n["b"].scheduler.refusals == 1
            assert sorted([(await holders(n, i))[0] for i in ids]) == ["b", "d"]
            for task_id in ids:
                (holder,) = await holders(n, task_id)
                assert (await n[holder].local.task(task_id)).state is TaskState.RUNNING
            # A third finds no room anywhere: it waits in its sender's queue, recorded once.
            third = await n["a"].submit(spec)
            assert third.task.state is TaskState.PENDING and n["a"].scheduler.queued == 1
            assert await holders(n, third.id) == []

    anyio.run(main)


def test_a_stopping_receiver_refuses_forwarded_tasks_and_they_wait_at_the_sender(
    tmp_path: Path, loop: str
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"a": (1, {}), "b": (2, {"zone": "x"})}) as (_, n):
            # b's node is stopping (Spearlet.shutdown's first step) while its server
            # still serves a's open connection, as in a cluster's close: what a forwards
            # then is refused, not taken and cancelled there.
            n["b"].node.state = NodeState.DRAINING
            task = (await n["a"].submit(FunctionSpec(loop, labels=ZONE_X))).task
            assert n["b"].scheduler.refusals == 1
            assert task.state is TaskState.PENDING and n["a"].scheduler.queued == 1

    anyio.run(main)


def test_batches_race_for_the_same_receivers_and_every_task_runs_once(
    tmp_path: Path, hello: str
) -> None:
    members = {"a": (1, {}), "c": (1, {}), "b": (3, {"zone": "x"}), "d": (2, {"zone": "x"})}

    async def main() -> None:
        # A small backlog, so that receivers refuse what exceeds it and senders re-place.
        async with cluster(tmp_path, members, max_queued_tasks=4) as (sms, n):
            asked = placements(sms)
            spec = FunctionSpec(hello, labels=ZONE_X)
            results: dict[str, list[Any]] = {}

            async def batch(sender: str) -> None:
                results[sender] = await n[sender].run_many([spec] * 20)

            async with anyio.create_task_group() as tg:
                tg.start_soon(batch, "a")
                tg.start_soon(batch, "c")
            tasks = [t for sender in ("a", "c") for t in results[sender]]
            assert all(t.state is TaskState.COMPLETED for t in tasks), tasks[:2]
            assert len({t.id for t in tasks}) == 40
            assert {t.node for t in tasks} == {"b", "d"}  # spread over both receivers
            for t in tasks[::7]:
                assert await holders(n, t.id) == [t.node]
            # The two senders shared stale views: receivers refused, senders re-placed.
            assert n["b"].scheduler.refusals + n["d"].scheduler.refusals > 0
            assert placements(sms) == asked

    anyio.run(main)


def test_a_batch_runs_here_what_fits_and_forwards_the_rest_as_batches(
    tmp_path: Path, hello: str
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"a": (2, {}), "b": (2, {"zone": "x"})}) as (_, n):
            tasks = await n["a"].run_many([FunctionSpec(hello)] * 30)
            assert all(t.state is TaskState.COMPLETED for t in tasks)
            assert "a" in {t.node for t in tasks}
            assert len({t.id for t in tasks}) == 30
            # More than b has room for, for b alone: taken into b's backlog, not refused.
            far = await n["a"].run_many([FunctionSpec(hello, labels=ZONE_X)] * 30)
            assert {t.node for t in far} == {"b"} and len({t.id for t in far}) == 30
            assert n["b"].scheduler.refusals == 0 and n["b"].scheduler.backlog == 0
            # A bad module is refused as a single task's is, here or forwarded.
            missing = str(tmp_path / "nope.wasm")
            for labels in ((), ZONE_X):
                out = await n["a"].run_many(
                    [FunctionSpec(hello), FunctionSpec(missing, labels=labels)]
                )
                assert isinstance(out[1], NotFound), out[1]

    anyio.run(main)


def test_a_batch_larger_than_the_clusters_room_runs_on_every_node_at_once(
    tmp_path: Path, hello: str
) -> None:
    async def main() -> None:
        members = {"a": (2, {}), "b": (2, {}), "c": (2, {})}
        async with cluster(tmp_path, members) as (_, n):
            tasks = await n["a"].run_many([FunctionSpec(hello)] * 60)
            assert all(t.state is TaskState.COMPLETED for t in tasks), tasks[:2]
            assert len({t.id for t in tasks}) == 60
            ran = Counter(t.node for t in tasks)
            # What fits nowhere now is dealt in turn to a, b and c (each keeps its share
            # in its waves or its backlog), not left to wait at a while b and c idle.
            assert ran == {"a": 20, "b": 20, "c": 20}, ran
            assert n["b"].scheduler.refusals == n["c"].scheduler.refusals == 0
            for t in tasks[::9]:
                assert await holders(n, t.id) == [t.node]

    anyio.run(main)


def test_a_member_is_ready_for_its_first_tasks_before_they_come(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"a": (1, {}), "b": (1, {})}) as (_, n):
            a, b = n["a"], n["b"]
            with anyio.fail_after(30):
                # Its wasm runtime made, and its channel to b's peer port connected,
                # before any task asked for either (node/membership.py warm_up).
                while not (a.node.agents["wasm"].made and a.peers._aio):
                    await anyio.sleep(0.05)
            record = a.scheduler.view.node("b")
            assert record is not None
            assert list(a.peers._aio) == [(b.address, record.incarnation)]
            channel = a.peers._aio[(b.address, record.incarnation)]
            assert channel is not None
            await channel.ready()  # (already: returns at once)

    anyio.run(main)


def test_a_clients_next_like_call_goes_to_the_member_that_ran_its_forwarded_one(
    tmp_path: Path, hello: str
) -> None:
    from spear.transport.auth import read_owner_token
    from spear.transport.channels import Credentials

    async def main() -> None:
        async with cluster(tmp_path, {"a": (1, {}), "b": (1, {"zone": "x"})}) as (_, n):
            spec = FunctionSpec(hello, labels=ZONE_X)
            forwards = n["a"].scheduler.forwarded_to
            async with Client(n["a"].address, credentials=_member(tmp_path, "a")) as client:
                first = await client.call(spec)
                assert len(forwards) == 1  # a placed it on b and forwarded it
                again = [await client.call(spec) for _ in range(3)]
                assert len(forwards) == 1  # the next three went to b directly
                for result in (first, *again):
                    assert (result.task.node, result.output) == ("b", b"hello\n")
                    assert await holders(n, result.task.id) == ["b"]
            # A token b does not accept (a's own): the call is refused at b before anything
            # runs, made through a, and b is not tried again by this client.
            owner = Credentials(token=read_owner_token(tmp_path / "a"), tls=_ca(tmp_path))
            async with Client(n["a"].address, credentials=owner) as client:
                results = [await client.call(spec) for _ in range(3)]
                assert [r.task.node for r in results] == ["b"] * 3
                assert len(forwards) == 1 + 3  # each through a: b refused the second
                assert client._refused == {n["b"].address}

    anyio.run(main)


def test_an_overloaded_node_refuses_with_resource_exhausted(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        members = {"a": (1, {}), "b": (1, {})}
        async with cluster(tmp_path, members, max_queued_tasks=2) as (_, n):
            spec = FunctionSpec(loop)
            placed = [(await n["a"].submit(spec)).task for _ in range(4)]
            assert [t.node for t in placed[:2]] == ["a", "b"]
            assert [t.state for t in placed[2:]] == [TaskState.PENDING] * 2
            with pytest.raises(ResourceExhausted, match="overloaded"):
                await n["a"].submit(spec)
            # Over gRPC: the status RESOURCE_EXHAUSTED, rebuilt as the same error.
            async with Client(n["a"].address, credentials=_member(tmp_path, "a")) as client:
                with pytest.raises(ResourceExhausted, match="overloaded"):
                    await client.submit(spec)
            assert n["a"].scheduler.queued == 2  # the queue did not grow past its bound

    anyio.run(main)


def _ca(tmp_path: Path) -> Any:
    """TLS files that hold only the cluster's CA (a user's: no certificate of its own)."""
    import shutil

    user = tmp_path / "user-tls"
    if not user.exists():
        user.mkdir()
        shutil.copy(tmp_path / "a" / "tls" / "ca.crt", user / "ca.crt")
    return tls.TlsFiles(user)


def _member(tmp_path: Path, name: str) -> Any:
    from spear.transport.channels import Credentials

    return Credentials(tls=tls.TlsFiles(tmp_path / name / "tls"))


def test_placement_settings_are_read_from_the_settings_file(tmp_path: Path) -> None:
    from spear.core.forwarding import max_queued_from, view_refresh_from
    from spear.errors import InvalidArgument

    cfg = tmp_path / "spear.toml"
    cfg.write_text("max_queued_tasks = 50\nview_refresh_s = 0.25\n")
    env = {"HOME": str(tmp_path / "home"), "SPEAR_HOME": str(tmp_path / "data")}
    settings = Settings.load(env=env, config_file=cfg)
    assert max_queued_from(settings.extra) == 50
    assert view_refresh_from(settings.extra, 1.0) == 0.25
    assert max_queued_from({}) == 10_000 and view_refresh_from({}, 2.0) == 2.0
    with pytest.raises(InvalidArgument, match="max_queued_tasks"):
        max_queued_from({"max_queued_tasks": "lots"})
    cfg.write_text("view_refresh_s = -1\n")
    with pytest.raises(InvalidArgument, match="view_refresh_s"):
        Settings.load(env=env, config_file=cfg)


def test_queued_tasks_are_placed_by_priority_then_first_come(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"a": (1, {})}) as (_, n):
            a = n["a"]
            first = await a.submit(FunctionSpec(loop))  # takes the only slot
            low = await a.submit(FunctionSpec(loop, timeout_s=0.05))
            high = await a.submit(FunctionSpec(loop, timeout_s=0.05, priority=5))
            also_high = await a.submit(FunctionSpec(loop, timeout_s=0.05, priority=5))
            assert a.scheduler.queued == 3
            order = [t.id for t in a.scheduler.queued_tasks()]
            assert order == [high.id, also_high.id, low.id]
            await a.cancel(first.id)  # room: the queue drains in that order
            ends = [await a.wait(t.id) for t in (high, also_high, low)]
            starts = [t.started_at or 0 for t in ends]
            assert starts == sorted(starts) and all(s > 0 for s in starts)

    anyio.run(main)


def test_priority_travels_over_grpc_and_is_checked(tmp_path: Path, hello: str) -> None:
    from spear.core.models import FunctionSpec as Spec
    from spear.errors import InvalidArgument
    from spear.transport import _convert as cv

    spec = Spec(hello, priority=-7)
    assert cv.spec_from_wire(cv.spec_to_wire(spec)) == spec
    assert Spec.from_json(spec.to_json()) == spec
    assert Spec.from_json({"artifact": str(hello)}).priority == 0  # (an older record)
    with pytest.raises(InvalidArgument, match="priority"):
        Spec(hello, priority=10_000)
