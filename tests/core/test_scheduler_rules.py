"""More of the scheduler's rules (core/scheduler.py), each stated for a mutant that the
first tests let live (issue 22, docs/mutation/REPORT.md): how fast a queue's head is tried
again, what the queue loop does with an unexpected error, what a failed view refresh
falls back to, and where a task goes when the SMS names nodes the view does not know.
Same real parts as tests/core/test_scheduler.py (tests/placement_world.py `World`):
LocalNodes on LevelDB, the SMS's logic on LevelDB, a loopback forwarder.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
from log_capture import SpearLog
from placement_world import _until, _world

from spear import FunctionSpec, TaskState
from spear.core.cluster import INPUTS_LABEL

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.cluster import NodeRecord, PlacementQuery
    from spear.core.sms import MetadataServer


async def test_a_head_with_no_room_anywhere_is_tried_again_less_and_less_often(
    tmp_path: Path,
) -> None:
    """The pause before the head is tried again starts at 10 ms and doubles (up to
    `retry_s`): a queue that finds no room does not probe the other nodes every 10 ms."""
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1)
        await world.occupy("a", 1)
        await world.occupy("b", 1)
        await world.register("b")  # the SMS (and so a's view) hears b is full
        await a.refresh_view()
        a.retry_s = 60.0  # only the doubling bounds the pace here
        task = await a.submit(FunctionSpec(world.hello))
        assert a.queued == 1
        with SpearLog("WARNING") as logged:
            async with anyio.create_task_group() as tg:
                await tg.start(a.run)
                started = time.monotonic()
                # Observe the loop for a second: probes at about 0, 0.02, 0.06, 0.14,
                # 0.3, 0.62 s (fewer on a slow machine, never more).
                await anyio.sleep(1.0)
                elapsed = time.monotonic() - started
                tg.cancel_scope.cancel()
        probes = [n for n, ids in world.forwarder.calls if ids == [task.id]]
        assert set(probes) == {"b"}  # the node most likely to have room is probed...
        # ...but with a doubling pause: at most one probe per doubling of the time.
        assert 1 <= len(probes) <= 3 + int(elapsed / 0.01).bit_length()
        assert a.queued == 1 and logged == []  # no error: simply no room yet


async def test_a_queue_drains_in_one_pass_without_an_error(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 3)
        blockers = await world.occupy("a", 3)
        await a.refresh_view()
        queued = [await a.submit(FunctionSpec(world.hello), task_id=f"q{i}") for i in range(3)]
        assert a.queued == 3
        with SpearLog("WARNING") as logged:
            async with anyio.create_task_group() as tg:
                await tg.start(a.run)
                for blocker in blockers:
                    await a.node.controller.cancel(blocker.id)
                await _until(lambda: _true(a.queued == 0))
                tg.cancel_scope.cancel()
        assert logged == []
        assert [d.task.id for d in a.decisions if d.how == "local"] == [t.id for t in queued]


async def test_an_unexpected_error_while_placing_is_logged_and_the_queue_tried_again(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1)
        await world.occupy("a", 1)
        b_blockers = await world.occupy("b", 1)
        await world.register("b")
        await a.refresh_view()
        task = await a.submit(FunctionSpec(world.hello))
        assert a.queued == 1
        await world.nodes["b"].node.controller.cancel(b_blockers[0].id)
        await world.register("b")
        await a.refresh_view()  # b has room: the head goes there, but the first try breaks
        inner = world.forwarder.forward_batch
        broken = [True]

        async def once_broken(node: NodeRecord, tasks: Any, **kw: Any) -> Any:
            if broken:
                broken.clear()
                raise RuntimeError("a bug in the forwarder")
            return await inner(node, tasks, **kw)

        world.forwarder.forward_batch = once_broken  # type: ignore[method-assign]
        with SpearLog("ERROR") as logged:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    await tg.start(a.run)
                    await _until(lambda: _true(a.queued == 0))
                    tg.cancel_scope.cancel()
        assert a.forwarded_to[task.id].name == "b"
        assert len(logged) == 1
        assert logged[0].startswith("ERROR: placing queued tasks failed\n")
        assert "RuntimeError: a bug in the forwarder" in logged[0]  # with its traceback
        done = await world.nodes["b"].node.controller.wait(task.id)
        assert done.state is TaskState.COMPLETED


class _ViewlessSms:
    """The SMS's logic, but its node list fails (an SMS that answers placements only)."""

    def __init__(self, sms: MetadataServer) -> None:
        self._sms = sms

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sms, name)

    async def nodes(self, *, live_only: bool = False) -> list[NodeRecord]:
        from spear.errors import StorageError

        raise StorageError("the node list cannot be read")

    async def find_nodes(self, query: PlacementQuery) -> Any:
        return await self._sms.find_nodes(query)


async def test_a_view_that_cannot_be_filled_leaves_placement_to_the_sms(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1)
        await world.occupy("a", 1)
        a.cluster = _ViewlessSms(world.sms)  # type: ignore[assignment]
        task = await a.submit(FunctionSpec(world.hello))
        assert not a.view.known
        assert task.node == "b" and world.forwarder.calls == [("b", [task.id])]


async def test_a_node_the_view_has_not_seen_yet_is_tried_in_the_smss_order(
    tmp_path: Path,
) -> None:
    """A task naming input objects is placed by the SMS; with the view never filled, a
    refusal passes to the next node the SMS named (never one tried already)."""
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 3)
        await world.node("c", 2)
        await world.node("d", 1)
        await world.occupy("a", 1)
        await world.occupy("b", 3)  # full since the SMS heard of it: b refuses
        spec = FunctionSpec(world.hello, labels=((INPUTS_LABEL, "k1"),))
        task = await a.submit(spec)
        assert not a.view.known
        assert [n for n, _ in world.forwarder.calls] == ["b", "c"]
        assert task.node == "c"


async def _true(value: bool) -> bool:
    return value


async def test_a_node_being_forwarded_to_is_debited_until_it_answers(tmp_path: Path) -> None:
    """While a forward to b waits for b's answer, the view counts the room as taken: the
    next task goes to c, not to b again."""
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1)
        await world.node("c", 1)
        await world.occupy("a", 1)
        await a.refresh_view()
        inner = world.forwarder.forward_batch
        targets: list[str] = []
        entered, release = anyio.Event(), anyio.Event()

        async def held_at_b(node: NodeRecord, tasks: Any, **kw: Any) -> Any:
            targets.append(node.name)
            if node.name == "b":
                entered.set()
                await release.wait()
            return await inner(node, tasks, **kw)

        world.forwarder.forward_batch = held_at_b  # type: ignore[method-assign]
        placed: dict[str, Any] = {}

        async def submit(name: str) -> None:
            placed[name] = await a.submit(FunctionSpec(world.hello))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(submit, "first")
                await entered.wait()  # b (first by name among equals) is being asked
                tg.start_soon(submit, "second")
                await _until(lambda: _true(len(targets) == 2))
                assert targets == ["b", "c"]  # the second did not go where the first went
                release.set()
        assert (placed["first"].node, placed["second"].node) == ("b", "c")


class _NoReports:
    """The SMS's logic, but a task's report cannot be written (its storage fails)."""

    def __init__(self, sms: MetadataServer) -> None:
        self._sms = sms

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sms, name)

    async def report_task(self, task: Any) -> None:
        from spear.errors import StorageError

        raise StorageError("the SMS cannot write the report")


async def test_a_refused_task_raises_its_refusal_even_if_it_cannot_be_reported(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        await world.node("b", 1, (("zone", "x"),))
        await a.refresh_view()
        a.cluster = _NoReports(world.sms)  # type: ignore[assignment]
        junk = world.tmp_path / "junk.wasm"
        junk.write_bytes(b"not wasm")
        from spear.errors import SpearError, StorageError

        try:
            await a.submit(FunctionSpec(str(junk), labels=(("zone", "x"),)))
        except SpearError as exc:
            raised: SpearError = exc
        else:
            raise AssertionError("a task its receiver refuses must raise the refusal")
        assert not isinstance(raised, StorageError)
        assert raised.exit_code == 65 and "wasm" in str(raised).lower()


async def test_a_new_task_carries_the_trace_it_was_submitted_in(tmp_path: Path) -> None:
    from spear.tracing.base import current_traceparent

    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        assert a.new_task(FunctionSpec(world.hello)).traceparent == ""  # no trace: none
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        token = current_traceparent.set(parent)
        try:
            assert a.new_task(FunctionSpec(world.hello)).traceparent == parent
        finally:
            current_traceparent.reset(token)


async def test_after_a_refusal_a_known_view_decides_where_next(tmp_path: Path) -> None:
    """The SMS placed a task (it names input objects) on nodes the view thinks full; the
    first refuses: the next try is from the view as that refusal corrected it (no room
    anywhere: the task waits here), not from the SMS's older list."""
    async with _world(tmp_path) as world:
        a = await world.node("a", 1)
        b = await world.node("b", 1)
        c = await world.node("c", 1)
        await world.occupy("a", 1)
        (b_blocker,) = await world.occupy("b", 1)
        (c_blocker,) = await world.occupy("c", 1)
        await world.register("b")
        await world.register("c")
        await a.refresh_view()  # the view: b and c full
        for node, blocker in ((b, b_blocker), (c, c_blocker)):
            await node.node.controller.cancel(blocker.id)
            await world.register(node.node.name)  # the SMS: b and c have room
        await world.occupy("b", 1)  # b is full again, unknown to the SMS
        spec = FunctionSpec(world.hello, labels=((INPUTS_LABEL, "k1"),))
        task = await a.submit(spec)
        assert [n for n, _ in world.forwarder.calls] == ["b"]
        assert task.state is TaskState.PENDING and a.queued_task(task.id) == task
