"""Deleting finished tasks (records, logs, results) by hand and by a node's retention
policy: locally, over gRPC behind the tokens, per namespace, and on the command line."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from conftest import Cli, cli_env, one_error_line
from test_cli_client import Daemon
from wat_tasks import hello, ticker

import spear
from spear.core.models import FunctionSpec, Task, TaskState
from spear.core.retention import expired
from spear.errors import Conflict, InvalidArgument, NotFound, PermissionDenied
from spear.node.client import Client
from spear.node.inprocess import InProcessNode
from spear.node.server import serve_spearlet
from spear.transport.auth import Role, TokenStore
from spear.transport.channels import Credentials

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


def _gone_everywhere(node: spear.LocalNode, task_id: str) -> bool:
    return not node.logs.directory(task_id).exists()


async def _has_result(node: spear.LocalNode, key: str) -> bool:
    try:
        await node.objects.info(key)
    except NotFound:
        return False
    return True


async def test_delete_removes_the_record_the_logs_and_the_result(tmp_path: Path) -> None:
    module = str(hello(tmp_path))
    async with spear.LocalNode(tmp_path / "home") as node:
        api = InProcessNode(node)
        first, second = await node.run(FunctionSpec(module)), await node.run(FunctionSpec(module))
        assert node.logs.directory(first.id).exists()
        assert await _has_result(node, f"results/{first.id}")
        assert await api.delete_tasks([first.id[:16]]) == [first.id]  # a prefix names it
        with pytest.raises(NotFound):
            await api.task(first.id)
        assert _gone_everywhere(node, first.id)
        assert not await _has_result(node, f"results/{first.id}")
        # The other is untouched; deleting the deleted one again is "not found".
        assert (await api.result(second.id)).output == b"hello\n"
        with pytest.raises(NotFound):
            await api.delete_tasks([first.id])


async def test_a_running_task_is_refused_and_nothing_is_deleted(tmp_path: Path) -> None:
    async with spear.LocalNode(tmp_path / "home") as node:
        api = InProcessNode(node)
        done = await node.run(FunctionSpec(str(hello(tmp_path))))
        running = await api.submit(FunctionSpec(str(ticker(tmp_path, 400, 50))))
        with pytest.raises(Conflict, match="cancel it before deleting it"):
            await api.delete_tasks([done.id, running.id])
        assert (await api.task(done.id)).state is TaskState.COMPLETED  # all or nothing
        await api.cancel(running.id)
        await api.wait(running.id)
        assert sorted(await api.delete_tasks([done.id, running.id])) == sorted(
            [done.id, running.id]
        )
        assert await api.tasks() == []


async def test_policy_keeps_the_newest_and_the_young(tmp_path: Path) -> None:
    module = str(hello(tmp_path))
    async with spear.LocalNode(tmp_path / "home") as node:
        api = InProcessNode(node)
        tasks = [await node.run(FunctionSpec(module)) for _ in range(4)]
        assert await api.delete_tasks(older_than_s=3600) == []  # all ended just now
        gone = await api.delete_tasks(keep=1)
        assert sorted(gone) == sorted(t.id for t in tasks[:3])
        assert [t.id for t in await api.tasks()] == [tasks[3].id]
        assert await api.delete_tasks(older_than_s=0) == [tasks[3].id]


def _ended(task_id: str, at: float, state: TaskState = TaskState.COMPLETED) -> Task:
    return Task(task_id, FunctionSpec("m.wasm"), state=state, created_at=at - 1, finished_at=at)


def test_expired_picks_by_age_and_by_rank_never_the_unfinished() -> None:
    tasks = [
        _ended("a", 100.0),
        _ended("b", 200.0),
        _ended("c", 300.0, TaskState.FAILED),
        Task("d", FunctionSpec("m.wasm"), state=TaskState.RUNNING, created_at=1.0),
    ]
    ids = lambda found: sorted(t.id for t in found)  # noqa: E731
    assert ids(expired(tasks, older_than_s=150, now=400)) == ["a", "b"]
    assert ids(expired(tasks, keep=1, now=400)) == ["a", "b"]
    assert ids(expired(tasks, keep=0, now=400)) == ["a", "b", "c"]
    assert ids(expired(tasks, older_than_s=50, keep=5, now=400)) == ["a", "b", "c"]
    assert expired(tasks, now=400) == []
    with pytest.raises(InvalidArgument):
        expired(tasks, keep=-1)


async def test_the_node_applies_its_retention_policy(tmp_path: Path) -> None:
    module = str(hello(tmp_path))
    async with spear.LocalNode(
        tmp_path / "home", task_retention_records=2, task_log_prune_interval_s=0.05
    ) as node:
        tasks = [await node.run(FunctionSpec(module)) for _ in range(4)]

        # A pass deletes the records in one commit, then each task's logs and result: the
        # commit is visible to reads while it waits for its turn, so the pass is waited
        # for until it has also removed the oldest task's logs and result.
        oldest = tasks[0].id
        with anyio.fail_after(10):
            while (
                len(await node.tasks()) > 2
                or node.logs.directory(oldest).exists()
                or await _has_result(node, f"results/{oldest}")
            ):
                await anyio.sleep(0.02)
        assert sorted(t.id for t in await node.tasks()) == sorted(t.id for t in tasks[2:])
        assert not node.logs.directory(oldest).exists()
        assert not await _has_result(node, f"results/{oldest}")


@contextlib.asynccontextmanager
async def _served(home: Path) -> AsyncIterator[tuple[spear.LocalNode, str]]:
    async with spear.LocalNode(home) as node:
        server = await serve_spearlet(node, "127.0.0.1:0")
        try:
            assert server.address is not None
            yield node, server.address
        finally:
            await server.close()


def _client(address: str, token: str, **kwargs: Any) -> Client:
    return Client(address, credentials=Credentials(token=token, **kwargs))


async def test_over_grpc_a_namespace_deletes_only_its_own(tmp_path: Path) -> None:
    home = tmp_path / "home"
    module = str(hello(tmp_path))
    async with _served(home) as (node, address):
        tokens = TokenStore(home)
        alice = tokens.issue("alice", Role.SUBMITTER, "team-a")
        bob = tokens.issue("bob", Role.SUBMITTER, "team-b")
        reader = tokens.issue("ann", Role.READER, "team-a")
        async with _client(address, alice) as a, _client(address, bob) as b:
            mine = (await a.call(FunctionSpec(module))).task
            theirs = (await b.call(FunctionSpec(module))).task
            with pytest.raises(NotFound):
                await b.delete_tasks([mine.id])
            # Bob's policy sweep reaches only team-b's tasks.
            assert await b.delete_tasks(older_than_s=0) == [theirs.id]
            async with _client(address, reader) as r:
                with pytest.raises(PermissionDenied):
                    await r.delete_tasks([mine.id])
            assert (await a.task(mine.id)).id == mine.id
            assert await a.delete_tasks([mine.id]) == [mine.id]
            assert await a.tasks() == []
            assert not await _has_result(node, f"@ns/team-a/results/{mine.id}")


async def test_without_a_token_nothing_is_deleted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with _served(home) as (node, address):
        done = await node.run(FunctionSpec(str(hello(tmp_path))))
        async with _client(address, "spear_bogus_token") as c:
            with pytest.raises(PermissionDenied):
                await c.delete_tasks([done.id])
        assert (await node.task(done.id)).id == done.id


def test_the_delete_command_locally_and_on_a_daemon(
    data_dir: Path, cli: Cli, tmp_path: Path
) -> None:
    module = str(hello(tmp_path))
    ids = [cli("run", "--json", module) for _ in range(3)]
    assert all(p.returncode == 0 for p in ids)
    listed = [t["id"] for t in cli.json("tasks")]
    assert len(listed) == 3
    gone = cli("delete", listed[-1])
    assert (gone.returncode, gone.stdout.decode().split()) == (0, [listed[-1]])
    assert cli.json("delete", "--keep", "1") == {"deleted": [listed[1]]}
    assert [t["id"] for t in cli.json("tasks")] == [listed[0]]
    nothing = cli("delete")
    assert nothing.returncode == 64 and "give --older-than or --keep" in one_error_line(
        nothing.stderr
    )
    bad = cli("delete", "--older-than", "soon")
    assert bad.returncode == 64 and "not an age" in one_error_line(bad.stderr)
    # The same through a daemon on the data dir (found by its address file) and --node.
    daemon = Daemon(data_dir)
    try:
        slow = cli("submit", "--node", daemon.address, str(ticker(tmp_path, 400, 50)))
        running = slow.stdout.decode().strip()
        refused = cli("delete", "--node", daemon.address, running)
        assert refused.returncode == 69 and "cancel it" in one_error_line(refused.stderr)
        assert cli.json("delete", "--older-than", "0s") == {"deleted": [listed[0]]}
        assert cli("stop", running).returncode == 0
        assert cli("result", running).returncode != 0
        assert cli.json("delete", "--node", daemon.address, running) == {"deleted": [running]}
        assert cli.json("tasks") == []
    finally:
        daemon.stop()


def test_delete_help_imports_no_node(data_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "spear", "delete", "--help"],
        capture_output=True,
        env=cli_env(data_dir),
        timeout=60,
    )
    assert proc.returncode == 0 and b"--older-than" in proc.stdout


def test_expired_keeps_a_task_exactly_as_old_as_allowed_and_dates_old_records_as_it_can() -> None:
    no_end = Task(
        "h", FunctionSpec("m.wasm"), state=TaskState.CANCELLED, created_at=10.0,
        history=(("PENDING", 10.0), ("RUNNING", 20.0), ("CANCELLED", 30.0)),
    )  # fmt: skip
    bare = Task("n", FunctionSpec("m.wasm"), state=TaskState.FAILED, created_at=40.0)
    tasks = [_ended("a", 100.0), no_end, bare]
    ids = lambda found: sorted(t.id for t in found)  # noqa: E731
    assert ids(expired(tasks, older_than_s=50, now=150)) == ["h", "n"]  # (a: exactly 50)
    assert ids(expired(tasks, older_than_s=69, now=100)) == ["h"]  # (ended at 30: its last)
    assert ids(expired(tasks, older_than_s=75, now=100)) == []  # (not at 20 or 10)
    assert ids(expired(tasks, older_than_s=59, now=100)) == ["h", "n"]  # (n: created 40)
    assert [t.id for t in expired(tasks, keep=1, now=100)] == ["n", "h"]  # (newest end kept)
    for bad, words in (({"older_than_s": -1}, "older-than"), ({"keep": -1}, "keep")):
        with pytest.raises(InvalidArgument) as caught:
            expired(tasks, **bad)  # type: ignore[arg-type]
        assert str(caught.value) == f"{words} must not be negative"


async def test_a_deleted_tasks_result_goes_even_if_pinned_and_a_missing_one_is_no_error(
    tmp_path: Path,
) -> None:
    from spear.core.retention import delete_tasks

    module = str(hello(tmp_path))
    async with spear.LocalNode(tmp_path / "home") as node:
        pinned, missing = await node.run(FunctionSpec(module)), await node.run(FunctionSpec(module))
        await node.objects.pin(f"results/{pinned.id}")
        await node.objects.delete(f"results/{missing.id}", force=True)  # (removed already)
        assert await delete_tasks(node, [pinned, missing]) == [pinned.id, missing.id]
        assert not await _has_result(node, f"results/{pinned.id}")


async def test_on_a_cluster_member_the_sms_forgets_each_deleted_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear.core import retention
    from spear.errors import Unavailable

    monkeypatch.setattr(retention, "_BATCH", 2)
    module = str(hello(tmp_path))
    async with spear.LocalNode(tmp_path / "home") as node:
        tasks = [await node.run(FunctionSpec(module)) for _ in range(3)]
        forgotten: list[list[str]] = []

        async def forget(task_ids: list[str]) -> None:
            forgotten.append(list(task_ids))

        monkeypatch.setattr(node, "forget_tasks", forget)
        assert await retention.delete_tasks(node, tasks) == [t.id for t in tasks]
        assert forgotten == [[tasks[0].id, tasks[1].id], [tasks[2].id]]
        more = [await node.run(FunctionSpec(module))]

        async def away(task_ids: list[str]) -> None:
            raise Unavailable("the SMS is away")

        monkeypatch.setattr(node, "forget_tasks", away)
        with pytest.raises(Unavailable) as caught:
            await retention.delete_tasks(node, more)
        assert str(caught.value) == (
            "deleted 1 task(s) on this node, but the SMS still lists them: the SMS is away"
        )
