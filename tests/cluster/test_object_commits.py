"""A member's object commits grouped while one is on the wire (node/object_commits.py):
a real SMS serving gRPC with TLS, a member's SmsClient with its certificate. Grouped or
not, each commit is a compare-and-swap of its own: answered on its own, in order per key."""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

import anyio
import pytest
from test_embedding import _certify

import spear
from spear.errors import Conflict, InvalidArgument, PermissionDenied, Unavailable
from spear.node.object_commits import CLOSED, CommitQueue
from spear.transport.channels import Credentials
from spear.transport.sms_client import ObjectCommit, SmsClient
from spear.transport.tls import TlsFiles

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from spear.core.object_index import ObjectRecord


def _member(tmp_path: Path, address: str, timeout_s: float = 10) -> SmsClient:
    credentials = Credentials(tls=TlsFiles(tmp_path / "node-1" / "tls"))
    return SmsClient(address, timeout_s=timeout_s, credentials=credentials)


@contextlib.asynccontextmanager
async def _queue(
    tmp_path: Path, address: str, timeout_s: float = 10
) -> AsyncIterator[tuple[SmsClient, CommitQueue]]:
    """node-1's SMS client (its certificate) and a commit queue over it, both closed after."""
    client = _member(tmp_path, address, timeout_s)
    queue = CommitQueue(client)
    try:
        yield client, queue
    finally:
        await queue.aclose()
        await client.aclose()


async def _all(
    queue: CommitQueue, commits: list[ObjectCommit], within_s: float = 5
) -> list[ObjectRecord | Exception]:
    """Every commit made at once (as a wave of tasks' results is): each one's outcome,
    all within `within_s` (a commit never answered fails the test, it does not hang it)."""
    outcomes: list[ObjectRecord | Exception] = [Exception("not answered")] * len(commits)

    async def one(i: int) -> None:
        try:
            outcomes[i] = await queue.commit(commits[i])
        except Exception as exc:
            outcomes[i] = exc

    with anyio.fail_after(within_s):
        async with anyio.create_task_group() as tg:
            for i in range(len(commits)):
                tg.start_soon(one, i)
    return outcomes


def test_commits_made_at_once_go_in_few_calls_each_answered(tmp_path: Path) -> None:
    _certify(tmp_path, "sms", "node-1")

    async def main() -> None:
        async with (
            spear.serve_sms(tmp_path / "sms") as sms,
            _queue(tmp_path, sms.address) as (client, queue),
        ):
            commits = [
                ObjectCommit(f"results/{i}", "node-1", "a:1", 2, None, b"ok") for i in range(60)
            ]
            first = await _all(queue, commits[:1])  # alone: one call
            assert queue.calls == 1 and first[0].key == "results/0"  # type: ignore[union-attr]
            outcomes = first + await _all(queue, commits[1:])
            keys = [r.key for r in outcomes]  # type: ignore[union-attr]
            assert keys == [f"results/{i}" for i in range(60)]
            assert queue.calls < 11  # (60 alone would be 60 calls)
            record = await client.lookup_object("results/7")
            assert (record.version, record.value) == (outcomes[7].version, b"ok")  # type: ignore[union-attr]
            # A commit alone is one call.
            before = queue.calls
            alone = await queue.commit(ObjectCommit("solo", "node-1", "a:1", 1, 0, b"x"))
            assert alone.version > 0 and queue.calls == before + 1

    anyio.run(main)


def test_a_refused_commit_refuses_only_itself_and_one_key_keeps_its_order(
    tmp_path: Path,
) -> None:
    _certify(tmp_path, "sms", "node-1")

    async def main() -> None:
        async with (
            spear.serve_sms(tmp_path / "sms") as sms,
            _queue(tmp_path, sms.address) as (client, queue),
        ):
            await queue.commit(ObjectCommit("first", "node-1", "a:1", 1, None))
            commits = [
                # Five writers expecting "absent" of one new key: one wins.
                *(ObjectCommit("counter", "node-1", "a:1", 1, 0, b"1") for _ in range(5)),
                ObjectCommit("", "node-1", "a:1", 1, None),  # malformed: refused alone
                # One key written twice in one group: in that order.
                ObjectCommit("log", "node-1", "a:1", 1, None, b"a"),
                ObjectCommit("log", "node-1", "a:1", 2, None, b"ab"),
            ]
            outcomes = await _all(queue, commits)
            won = [o for o in outcomes[:5] if not isinstance(o, Exception)]
            assert len(won) == 1
            assert all(isinstance(o, Conflict) for o in outcomes[:5] if o is not won[0])
            assert isinstance(outcomes[5], InvalidArgument)
            first, second = outcomes[6:]
            assert first.version < second.version  # type: ignore[union-attr]
            log = await client.lookup_object("log")
            assert (log.version, log.value) == (second.version, b"ab")  # type: ignore[union-attr]

    anyio.run(main)


def test_a_member_cannot_commit_for_another_node_even_in_a_group(tmp_path: Path) -> None:
    _certify(tmp_path, "sms", "node-1")

    async def main() -> None:
        async with spear.serve_sms(tmp_path / "sms") as sms:
            client = _member(tmp_path, sms.address)
            try:
                with pytest.raises(PermissionDenied, match="node-2"):
                    await client.commit_objects(
                        [
                            ObjectCommit("mine", "node-1", "a:1", 1, None),
                            ObjectCommit("theirs", "node-2", "a:1", 1, None),
                        ]
                    )
                # All or none: the member's own commit of that call was not written.
                assert [r.key for r in await client.list_object_records("")] == []
            finally:
                await client.aclose()

    anyio.run(main)


def test_every_commit_waiting_fails_when_the_sms_cannot_be_reached(tmp_path: Path) -> None:
    _certify(tmp_path, "sms", "node-1")

    async def main() -> None:
        async with spear.serve_sms(tmp_path / "sms") as sms:
            address = sms.address
        async with _queue(tmp_path, address, timeout_s=1) as (_, queue):
            commits = [ObjectCommit(f"k{i}", "node-1", "a:1", 1, None) for i in range(5)]
            outcomes = await _all(queue, commits)
            assert all(isinstance(o, Unavailable) for o in outcomes), outcomes

    anyio.run(main)


def test_commits_queued_together_go_in_groups_each_answered_in_order(tmp_path: Path) -> None:
    _certify(tmp_path, "sms", "node-1")

    async def main() -> None:
        async with (
            spear.serve_sms(tmp_path / "sms") as sms,
            _queue(tmp_path, sms.address) as (client, queue),
        ):
            commits = [ObjectCommit(f"r/{i}", "node-1", "a:1", 1, 0, b"v") for i in range(300)]
            commits[150] = ObjectCommit("r/0", "node-1", "a:1", 1, 0, b"w")  # (exists by then)
            with anyio.fail_after(10):
                outcomes = await queue.commit_many(commits)
            assert queue.calls == 2  # (groups of MAX_GROUP = 256)
            assert isinstance(outcomes[150], Conflict)
            keys = [getattr(o, "key", None) for o in outcomes]
            assert keys == [f"r/{i}" if i != 150 else None for i in range(300)]
            assert (await client.lookup_object("r/0")).value == b"v"
            assert (await client.lookup_object("r/299")).version == outcomes[299].version  # type: ignore[union-attr]

            # Cancelled while waiting: its commits are given up; another caller's are not.
            others: list[ObjectRecord | Exception] = []

            async def other() -> None:
                others.extend(
                    await queue.commit_many([ObjectCommit("o", "node-1", "a:1", 1, None)])
                )

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    with anyio.CancelScope() as scope:
                        tg.start_soon(other)
                        scope.cancel()
                        await queue.commit_many([ObjectCommit("c", "node-1", "a:1", 1, None)])
            assert [getattr(o, "key", o) for o in others] == ["o"]

    anyio.run(main)


def test_a_members_commits_made_together_each_answered_an_unheard_one_unsure(
    tmp_path: Path,
) -> None:
    _certify(tmp_path, "sms", "node-1")

    from spear.node.object_space import ClusterObjects
    from spear.transport.object_transfer import ObjectTransferClient

    async def main() -> None:
        credentials = Credentials(tls=TlsFiles(tmp_path / "node-1" / "tls"))
        async with spear.serve_sms(tmp_path / "sms") as sms:
            client = _member(tmp_path, sms.address)
            transfer = ObjectTransferClient(credentials)
            authority = ClusterObjects(client, "node-1", "127.0.0.1:1", transfer)
            try:
                with anyio.fail_after(10):  # (a commit never answered fails, not hangs)
                    await authority.commit("exists", 1, 0, b"x")
                    answers = await authority.commit_many(
                        [("", 1, None, None), ("exists", 1, 0, b"y"), ("fresh", 1, 0, b"z")]
                    )
                assert isinstance(answers[0], InvalidArgument)
                assert isinstance(answers[1], Conflict)  # (refused: nothing written)
                assert answers[2] == (await client.lookup_object("fresh")).version
                # A refused commit wrote nothing; any other failure may have: unsure.
                assert "" in authority.cache._unsure
                assert "exists" not in authority.cache._unsure
                assert "fresh" not in authority.cache._unsure
                assert authority._commits.calls == 2  # (the three together: one call)
            finally:
                await authority.aclose()
                await transfer.aclose()
                await client.aclose()

    anyio.run(main)


def test_a_cancelled_caller_leaves_the_others_answered(tmp_path: Path) -> None:
    _certify(tmp_path, "sms", "node-1")

    async def main() -> None:
        async with (
            spear.serve_sms(tmp_path / "sms") as sms,
            _queue(tmp_path, sms.address) as (client, queue),
        ):
            answered: dict[int, ObjectRecord] = {}

            async def one(i: int, scope: anyio.CancelScope) -> None:
                with scope:
                    answered[i] = await queue.commit(
                        ObjectCommit(f"k{i}", "node-1", "a:1", 1, None)
                    )

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    scopes = [anyio.CancelScope() for _ in range(6)]
                    for i, scope in enumerate(scopes):
                        tg.start_soon(one, i, scope)
                    await anyio.sleep(0)  # (all six queued, none sent yet)
                    scopes[0].cancel()
                    scopes[3].cancel()
            assert sorted(answered) == [1, 2, 4, 5]

    anyio.run(main)


def test_commits_made_during_a_failing_call_fail_too_and_close_ends_a_wait(
    tmp_path: Path,
) -> None:
    _certify(tmp_path, "node-1")
    # An SMS that never answers: a socket that accepts connections and reads nothing.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    outcomes: list[Exception | None] = []

    async def one(queue: CommitQueue, i: int) -> None:
        try:
            await queue.commit(ObjectCommit(f"k{i}", "node-1", "a:1", 1, None))
        except Exception as exc:
            outcomes[i] = exc

    async def failing_calls() -> None:
        outcomes[:] = [None] * 4
        # (each call fails after 1 s)
        async with _queue(tmp_path, address, timeout_s=1) as (_, queue):
            with anyio.fail_after(6):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(one, queue, 0)
                    await anyio.sleep(0.3)  # (the first call on the wire)
                    for i in (1, 2, 3):
                        tg.start_soon(one, queue, i)
            assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
            assert queue.calls == 2  # (the three made meanwhile went together)

    async def closed_meanwhile() -> None:
        async with _queue(tmp_path, address, timeout_s=60) as (_, queue):
            for wait_s in (0.3, 0):  # (on the wire; and before the call was even made)
                outcomes[:] = [None]
                with anyio.fail_after(5):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(one, queue, 0)
                        await anyio.sleep(wait_s)
                        await queue.aclose()  # (the wait ends at once)
                assert isinstance(outcomes[0], Unavailable), outcomes
                assert str(outcomes[0]) == CLOSED

    try:
        anyio.run(failing_calls)
        anyio.run(closed_meanwhile)
    finally:
        silent.close()


def test_a_wave_of_results_is_committed_in_a_few_calls(tmp_path: Path) -> None:
    """A member's store keeps the results of tasks that ended together (one finished hook,
    `store_results`) by making their commits together: they go to the SMS grouped, not
    one call each (a batch of 300 tasks was ~67 calls), and every result is indexed."""
    from spear.node.object_space import ClusterObjects
    from spear.store.leveldb import LevelDBKV
    from spear.store.objects import ObjectStore
    from spear.transport.object_transfer import ObjectTransferClient

    _certify(tmp_path, "sms", "node-1")
    outputs = tmp_path / "stdout"
    outputs.mkdir()
    items = []
    for i in range(40):
        path = outputs / f"t{i}"
        path.write_bytes(f"result {i}".encode())
        items.append((f"t{i}", path))
    items.append(("t-silent", None))  # (a task that wrote nothing: an empty result)

    async def main() -> None:
        credentials = Credentials(tls=TlsFiles(tmp_path / "node-1" / "tls"))
        async with (
            spear.serve_sms(tmp_path / "sms") as sms,
            LevelDBKV.open(str(tmp_path / "node.ldb")) as kv,
        ):
            client = _member(tmp_path, sms.address)
            transfer = ObjectTransferClient(credentials)
            authority = ClusterObjects(client, "node-1", "127.0.0.1:1", transfer)
            store = ObjectStore(kv, tmp_path / "objects", authority=authority)
            try:
                with anyio.fail_after(10):
                    await store.store_results(items)
                # Small results are committed as one group: one call, where one after
                # another they were 41 (and a put each, grouped by timing, 2 to 8).
                assert authority._commits.calls == 1
                for i in (0, 17, 39):
                    record = await client.lookup_object(f"results/t{i}")
                    assert record.value == f"result {i}".encode()
                assert (await client.lookup_object("results/t-silent")).value == b""
                value, _ = await store.get_local("results/t5")
                assert bytes(value) == b"result 5"
            finally:
                await authority.aclose()
                await transfer.aclose()
                await client.aclose()

    anyio.run(main)
