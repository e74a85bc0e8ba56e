"""A node as one namespace sees it (`NamespacedNode`, node/namespaced.py), on a real
LocalNode in this process: every way to run a task carries the caller's input and output
and runs in the namespace; every way to read, wait for, cancel or delete a task finds only
the namespace's own; every object operation works on the namespace's part of the store;
and nothing else of the node passes through."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

import spear
from spear.core.models import FunctionSpec, TaskState
from spear.errors import Conflict, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from spear.node.inprocess import InProcessNode
from spear.node.namespaced import NamespacedNode
from spear.node.quotas import Quota, QuotaFile, TaskSlots

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.models import Task


def views(local: spear.LocalNode, home: Path) -> tuple[NamespacedNode, NamespacedNode]:
    slots = TaskSlots(QuotaFile(home / "auth"))
    node = InProcessNode(local)
    return NamespacedNode(node, "team-a", slots), NamespacedNode(node, "team-b", slots)


async def test_every_way_to_run_carries_the_callers_io_and_runs_in_its_namespace(
    tmp_path: Path, conformance_wasm: Path
) -> None:
    home = tmp_path / "home"
    upper = FunctionSpec(str(conformance_wasm), args=("stdin",), namespace="team-b")
    lines = FunctionSpec(str(conformance_wasm), args=("stream", "2"))
    async with spear.LocalNode(home) as local:
        a, _ = views(local, home)
        out: list[bytes] = []
        err: list[bytes] = []
        created: list[Task] = []
        ran = await a.run(lines, stdout=out.append, stderr=err.append, on_created=created.append)
        assert b"".join(out) == b"line 0\nline 1\n" and b"".join(err) == b"err 0\nerr 1\n"
        assert [t.id for t in created] == [ran.id] and ran.spec.namespace == "team-a"
        assert (await local.logs_of((await a.run(upper, stdin=b"run")).id, "stdout")) == b"RUN"
        called = await a.call(upper, stdin=b"call")
        assert (called.output, called.task.spec.namespace) == (b"CALL", "team-a")
        handle = await a.submit(upper, stdin=b"submit")
        assert (await handle.result()).output == b"SUBMIT"
        many = await a.run_many([upper, upper], [b"one", b"two"])
        assert [await local.logs_of(t.id, "stdout") for t in many] == [b"ONE", b"TWO"]
        assert {t.spec.namespace for t in many} == {"team-a"}
        QuotaFile(home / "auth").set(Quota("team-a", tasks=5))  # (now one by one)
        many = await a.run_many([upper, upper], [b"three", b"four"])
        assert [await local.logs_of(t.id, "stdout") for t in many] == [b"THREE", b"FOUR"]
        assert {t.spec.namespace for t in many} == {"team-a"}
        limited = await a.call(upper, stdin=b"five")
        assert limited.output == b"FIVE"
        assert (await (await a.submit(upper, stdin=b"six")).result()).output == b"SIX"
        out.clear()
        err.clear()
        await a.run(lines, stdout=out.append, stderr=err.append, on_created=created.append)
        assert b"".join(out) == b"line 0\nline 1\n" and len(created) == 2
        assert b"".join(err) == b"err 0\nerr 1\n"
        plain = await a.run_many([lines, lines])  # (no stdins, one by one)
        assert [t.state for t in plain] == [TaskState.COMPLETED] * 2


async def test_an_idempotency_key_names_one_task_of_one_namespace(
    tmp_path: Path, conformance_wasm: Path
) -> None:
    home = tmp_path / "home"
    upper = FunctionSpec(str(conformance_wasm), args=("stdin",))
    async with spear.LocalNode(home) as local:
        a, b = views(local, home)
        first = await a.submit(upper, stdin=b"x", idempotency_key="k1")
        again = await a.submit(upper, stdin=b"y", idempotency_key="k1")
        assert again.id == first.id
        with pytest.raises(InvalidArgument, match="idempotency key 'k1' names a task of another"):
            await b.submit(upper, idempotency_key="k1")
        QuotaFile(home / "auth").set(Quota("team-b", tasks=3))  # (the slot's path too)
        with pytest.raises(InvalidArgument, match="idempotency key 'k1' names a task of another"):
            await b.submit(upper, idempotency_key="k1")
        mine = await b.submit(upper, stdin=b"z", idempotency_key="k2")
        assert (await mine.result()).output == b"Z"


async def test_another_namespaces_task_is_not_found_by_any_way_in(
    tmp_path: Path, conformance_wasm: Path
) -> None:
    home = tmp_path / "home"
    spec = FunctionSpec(str(conformance_wasm), args=("stream", "1"))
    async with spear.LocalNode(home) as local:
        a, b = views(local, home)
        theirs = await b.run(spec)
        mine = [await a.run(spec) for _ in range(3)]
        for way in (a.task, a.wait, a.cancel, a.result, lambda i: a.delete_tasks([i])):
            with pytest.raises(NotFound, match=f"no task '{theirs.id}' in namespace 'team-a'"):
                await way(theirs.id)
        with pytest.raises(NotFound):
            async for _ in a.logs(theirs.id):
                pass
        with pytest.raises(NotFound):
            async for _ in a.watch(theirs.id):
                pass
        assert (await a.wait(mine[0].id)).id == mine[0].id
        assert (await a.result(mine[0].id)).output == b"line 0\n"
        chunks = [c async for c in a.logs(mine[0].id, ["stderr"])]
        assert b"".join(c.data for c in chunks) == b"err 0\n"
        with pytest.raises(InvalidArgument):  # (an unknown stream first, as the node says)
            async for _ in a.logs(theirs.id, ["nonsense"]):
                pass
        # Listings: only its own, the newest first, as many as asked even when others'
        # newer tasks fill the node's first page.
        for _ in range(6):
            await b.run(spec)
        listed = await a.tasks()
        assert [t.id for t in listed] == [t.id for t in reversed(mine)]
        assert [t.id for t in await a.tasks(limit=2)] == [mine[2].id, mine[1].id]
        assert [t.id for t in await a.tasks(TaskState.COMPLETED, 1)] == [mine[2].id]
        assert await a.tasks(TaskState.FAILED) == []
        # Deleting: its own named ones, and by age or count only among its own.
        assert await a.delete_tasks([mine[0].id]) == [mine[0].id]
        assert await a.delete_tasks(keep=1) == [mine[1].id]
        assert await a.delete_tasks(older_than_s=0) == [mine[2].id]
        assert len(await b.tasks()) == 7
        # A running one: its result not yet there without waiting, its logs read as far
        # as they go (not followed), cancelled with the caller's reason.
        loop = await a.submit(FunctionSpec(str(conformance_wasm), args=("loop",)))
        with pytest.raises(Unavailable, match="has not finished"):
            await a.result(loop.id, wait=False)
        with anyio.fail_after(10):
            assert [c async for c in a.logs(loop.id)] == []
        assert (await a.cancel(loop.id, "stop it")).reason == "stop it"
        again = await a.submit(FunctionSpec(str(conformance_wasm), args=("loop",)))
        assert (await a.cancel(again.id)).reason == "cancelled"


async def test_every_object_operation_works_on_the_namespaces_part_of_the_store(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    async with spear.LocalNode(home) as local:
        a, b = views(local, home)
        await a.put_object("k", b"a's")
        await b.put_object("k", b"b's")
        assert (await a.add_object_ref("k")).key == "k"
        assert (await a.add_object_ref("k")).refs == 2
        assert (await local.objects.info("@ns/team-a/k")).refs == 2
        removed = await a.remove_object_ref("k")
        assert (removed.key, removed.refs) == ("k", 1)
        assert (await local.objects.info("@ns/team-b/k")).refs == 0
        pinned = await a.pin_object("k")
        assert (pinned.key, pinned.pinned) == ("k", True)
        assert (await local.objects.info("@ns/team-a/k")).pinned
        assert not (await local.objects.info("@ns/team-b/k")).pinned
        with pytest.raises(Conflict, match="is pinned"):
            await a.delete_object("k")  # (not forced)
        assert (await a.unpin_object("k")).pinned is False
        assert [o.key for o in await a.list_objects()] == ["k"]
        with pytest.raises(Conflict):
            await a.put_object("k", b"stale", expected_version=99)
        assert await b.delete_object("k")
        assert (await a.get_object("k"))[0] == b"a's"  # (b's delete was b's own key)
        with pytest.raises(NotFound):
            await b.get_object("k")
        assert [o.key for o in await a.list_objects("k")] == ["k"]
        assert await a.delete_object("k", force=True)
        assert await a.list_objects() == []
        QuotaFile(home / "auth").set(Quota("team-a", object_bytes=10))
        await a.put_object("x", b"12345")
        await a.put_object("x", b"1234567890")  # (replacing counts the new size only)
        with pytest.raises(ResourceExhausted, match="10 object bytes .10 used; this object is 1"):
            await a.put_object("y", b"1")
        await b.put_object("y", b"no quota here")


async def test_only_the_nodes_own_parts_pass_through(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with spear.LocalNode(home) as local:
        a, _ = views(local, home)
        assert a.node is local and a.draining is False and a.in_process
        with pytest.raises(AttributeError, match="^NamespacedNode has no attribute 'output'$"):
            _ = a.output  # type: ignore[attr-defined]
        assert (await a.node_info()).name == local.name
