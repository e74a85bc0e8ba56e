"""Namespaces and quotas on a real served node: a token acts only in its namespace, sees
only its namespace's tasks and objects, and a namespace's quota is refused in one line."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from conftest import ROOT, build_c
from wat_tasks import hello, ticker

import spear
from spear.core.models import FunctionSpec, TaskState
from spear.errors import NotFound, PermissionDenied, ResourceExhausted
from spear.node.client import Client
from spear.node.quotas import Quota, QuotaFile
from spear.node.server import SpearletService, serve_spearlet
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport.auth import AUTH_DIR, Role, TokenStore, read_owner_token
from spear.transport.channels import Credentials
from spear.transport.services import Stub

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@contextlib.asynccontextmanager
async def node_served(home: Path, **kwargs: Any) -> AsyncIterator[tuple[spear.LocalNode, str]]:
    async with spear.LocalNode(home) as node:
        server = await serve_spearlet(node, "127.0.0.1:0", **kwargs)
        try:
            assert server.address is not None
            yield node, server.address
        finally:
            await server.close()


def client(address: str, token: str, namespace: str | None = None) -> Client:
    return Client(address, credentials=Credentials(token=token, namespace=namespace))


@pytest.fixture(scope="module")
def hostcalls_wasm() -> Path:
    return build_c(ROOT / "tests" / "wasm" / "hostcalls.c")


async def test_a_namespace_sees_only_its_own_tasks_and_objects(tmp_path: Path) -> None:
    home = tmp_path / "home"
    module = str(hello(tmp_path))
    async with node_served(home) as (node, address):
        tokens = TokenStore(home)
        alice = tokens.issue("alice", Role.SUBMITTER, "team-a")
        bob = tokens.issue("bob", Role.READER, "team-b")
        bob_writer = tokens.issue("bob-writer", Role.SUBMITTER, "team-b")
        async with client(address, alice) as a, client(address, bob) as b:
            done = await a.call(FunctionSpec(module))
            assert done.task.spec.namespace == "team-a" and done.output == b"hello\n"
            await a.put_object("notes", b"team a's")
            # Bob, in team-b, finds none of it, by list or by id.
            assert await b.tasks() == []
            assert await b.list_objects() == []
            for read in (b.task, b.result):
                with pytest.raises(NotFound):
                    await read(done.task.id)
            with pytest.raises(NotFound):
                await b.get_object("notes")
            # Alice sees her own, under the names she gave them.
            assert [t.id for t in await a.tasks()] == [done.task.id]
            assert [o.key for o in await a.list_objects()] == ["notes", f"results/{done.task.id}"]
            assert (await a.result(done.task.id)).output == b"hello\n"
        # A bound token may not name another namespace.
        async with client(address, bob, namespace="team-a") as sneaky:
            with pytest.raises(PermissionDenied, match="only in namespace 'team-b'"):
                await sneaky.tasks()
        # The same key in two namespaces is two objects; the default namespace is apart.
        async with client(address, bob_writer) as b:
            await b.put_object("notes", b"team b's")
            assert (await b.get_object("notes"))[0] == b"team b's"
        owner = read_owner_token(home)
        assert owner is not None
        async with client(address, owner) as admin:
            assert await admin.tasks() == []  # the default namespace's: none
            with pytest.raises(NotFound):
                await admin.get_object("notes")
        async with client(address, owner, namespace="team-a") as admin:  # an admin names any
            assert [t.id for t in await admin.tasks()] == [done.task.id]
            assert (await admin.get_object("notes"))[0] == b"team a's"
        # On disk, in the one object store, keys are prefixed by their namespace.
        keys = {o.key for o in await node.objects.list()}
        assert {"@ns/team-a/notes", "@ns/team-b/notes"} <= keys
        assert f"@ns/team-a/results/{done.task.id}" in keys


async def test_results_are_written_only_by_the_node(tmp_path: Path, hostcalls_wasm: Path) -> None:
    home = tmp_path / "home"
    async with node_served(home) as (node, address):
        victim = await node.run(FunctionSpec(str(hello(tmp_path))))
        key = f"results/{victim.id}"
        owner = read_owner_token(home)
        assert owner is not None
        async with client(address, owner) as admin:
            with pytest.raises(PermissionDenied, match="written only by the node"):
                await admin.put_object(key, b"forged")
            assert (await admin.result(victim.id)).output == b"hello\n"
        # A guest's spear_obj_put of another task's result: -EACCES (2), nothing written.
        forger = await node.run(
            FunctionSpec(str(hostcalls_wasm), args=("put", key, "forged", "-1"))
        )
        assert (await node.logs_of(forger.id, "stdout")).split()[0] == b"-2"
        assert bytes((await node.objects.get(key))[0]) == b"hello\n"
        # A task still sets its own result, in its own namespace.
        mine = await node.run(
            FunctionSpec(str(hostcalls_wasm), args=("result", "set"), namespace="team-a")
        )
        assert mine.state is TaskState.COMPLETED
        assert bytes((await node.objects.get(f"@ns/team-a/results/{mine.id}"))[0]) == b"set"


async def test_a_guest_sees_only_its_namespace(tmp_path: Path, hostcalls_wasm: Path) -> None:
    async with spear.LocalNode(tmp_path / "home") as node:
        await node.objects.put("shared", b"default's")
        put = await node.run(
            FunctionSpec(str(hostcalls_wasm), args=("put", "k", "v", "-1"), namespace="team-a")
        )
        assert put.state is TaskState.COMPLETED
        assert bytes((await node.objects.get("@ns/team-a/k"))[0]) == b"v"
        listed = await node.run(
            FunctionSpec(str(hostcalls_wasm), args=("list",), namespace="team-a")
        )
        out = await node.logs_of(listed.id, "stdout")
        assert b"k" in out.split() and b"shared" not in out and b"@ns" not in out


async def test_quotas_are_refused_with_resource_exhausted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    slow = str(ticker(tmp_path, 200, 50))
    async with node_served(home) as (_, address):
        token = TokenStore(home).issue("alice", Role.SUBMITTER, "team-a")
        QuotaFile(home / AUTH_DIR).set(Quota("team-a", tasks=1, object_bytes=1000))
        async with client(address, token) as a:
            first = await a.submit(FunctionSpec(slow))
            with pytest.raises(ResourceExhausted, match="quota of 1 unfinished tasks"):
                await a.submit(FunctionSpec(slow))
            await a.cancel(first.id)
            await a.wait(first.id)
            second = await a.submit(FunctionSpec(slow))  # the slot is free again
            await a.cancel(second.id)
            await a.put_object("a", b"x" * 600)
            with pytest.raises(ResourceExhausted, match="quota of 1000 object bytes"):
                await a.put_object("b", b"x" * 600)
            await a.put_object("a", b"y" * 900)  # replacing counts the new size only
            assert [o.key for o in await a.list_objects("a")] == ["a"]


async def test_a_waited_batch_runs_in_the_tokens_namespace_and_keeps_its_quota(
    tmp_path: Path,
) -> None:
    """SubmitTasks with every task waited for runs as one wave of the node's `run_many`:
    in the caller's namespace whatever its specs name, and one task at a time against a
    quota (found: it once ran them in the default namespace, past any quota)."""
    home = tmp_path / "home"
    module = str(hello(tmp_path))
    async with node_served(home) as (node, address):
        token = TokenStore(home).issue("alice", Role.SUBMITTER, "team-a")
        async with client(address, token) as a:
            ran = await a.submit_many(
                [FunctionSpec(module), FunctionSpec(module, namespace="default")], wait=True
            )
            assert [getattr(t, "state", t) for t in ran] == [TaskState.COMPLETED] * 2
            assert {t.spec.namespace for t in ran if not isinstance(t, Exception)} == {"team-a"}
            assert await node.tasks() != [] and await a.tasks() != []
            owner = read_owner_token(home)
            assert owner is not None
            async with client(address, owner) as admin:
                assert await admin.tasks() == []  # nothing ran in the default namespace
            QuotaFile(home / AUTH_DIR).set(Quota("team-a", tasks=1))
            slow = str(ticker(tmp_path, 100, 20))
            capped = await a.submit_many([FunctionSpec(slow)] * 3, wait=True)
            refused = [o for o in capped if isinstance(o, ResourceExhausted)]
            finished = [o for o in capped if not isinstance(o, Exception)]
            assert len(refused) == 2 and "quota of 1 unfinished tasks" in str(refused[0])
            assert [t.state for t in finished] == [TaskState.COMPLETED]
            assert finished[0].spec.namespace == "team-a"


def test_a_namespaces_view_passes_through_only_the_nodes_own_parts(tmp_path: Path) -> None:
    """Every public method of the nodes a server wraps is scoped by NamespacedNode or is
    not reachable through it: a new way to run or read tasks cannot slip past the view."""
    import inspect

    from spear.node.cluster import ClusterNode
    from spear.node.inprocess import InProcessNode
    from spear.node.namespaced import NODE_WIDE, NamespacedNode

    own = set(vars(NamespacedNode))
    for cls in (InProcessNode, ClusterNode):
        view = NamespacedNode(cls.__new__(cls), "team-a")  # type: ignore[arg-type]
        methods = [n for n, m in inspect.getmembers(cls) if callable(m) and n[0] != "_"]
        assert {"run_many", "submit"} <= set(methods)
        for name in methods:
            if name in own:
                continue
            assert name not in NODE_WIDE, f"{cls.__name__}.{name} would pass unscoped"
            with pytest.raises(AttributeError):  # (output, drain: the node's, not a caller's)
                getattr(view, name)


async def test_listings_come_in_pages_so_any_history_can_be_read(tmp_path: Path) -> None:
    home = tmp_path / "home"
    module = str(hello(tmp_path))
    async with node_served(home) as (node, address):
        ran = await node.run_many([FunctionSpec(module)] * 2300)
        for i in range(7):
            await node.objects.put(f"k{i}", b"v")
        owner = read_owner_token(home)
        assert owner is not None
        async with client(address, owner) as c:
            # The client asks page after page (1000 tasks each) by itself.
            listed = await c.tasks()
            assert [t.id for t in listed] == sorted((t.id for t in ran), reverse=True)
            assert len(await c.tasks(limit=1500)) == 1500
            # Pages as the wire gives them: each token picks up where the last page ended.
            assert c._stub is not None  # (opens the client's channel)
            stub = Stub(c._channel, SpearletService.SERVICE)
            first = await stub.list_tasks(pb.ListTasksRequest(page_size=1000))
            second = await stub.list_tasks(
                pb.ListTasksRequest(page_size=1000, page_token=first.next_page_token)
            )
            assert len(first.tasks) == len(second.tasks) == 1000
            assert first.tasks[-1].id > second.tasks[0].id
            keys: list[str] = []
            token = ""
            while True:
                page = await stub.list_objects(
                    pb.ListObjectsRequest(prefix="k", page_size=3, page_token=token)
                )
                assert len(page.objects) <= 3
                keys += [o.key for o in page.objects]
                token = page.next_page_token
                if not token:
                    break
            assert keys == [f"k{i}" for i in range(7)]
            assert [o.key for o in await c.list_objects("k")] == keys
