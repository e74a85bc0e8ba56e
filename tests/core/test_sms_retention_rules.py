"""Deleting finished tasks' records at the SMS (core/sms_retention.py), each rule on its own
over a real KV: only finished tasks, only of the caller's namespace, only those that ran
on the calling member, all or nothing. The same through real members:
tests/cluster/test_cluster_deletion.py.

Written for mutation testing: each test states one behaviour exactly.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pytest
from test_sms import TIMINGS, Clock, kv, task_on  # noqa: F401 (kv: a fixture)

from spear.core import sms_retention
from spear.core.models import FunctionSpec, TaskState
from spear.core.sms import MetadataServer
from spear.core.sms_retention import delete_finished_records
from spear.errors import Conflict, NotFound, PermissionDenied

if TYPE_CHECKING:
    from spear.core.models import Task
    from spear.store.kv import KV


async def _recorded(sms: MetadataServer, node: str | None, *, namespace: str = "default",
                    state: TaskState = TaskState.COMPLETED) -> Task:  # fmt: skip
    task = task_on(node or "a", TaskState.RUNNING)
    task = dataclasses.replace(task, spec=FunctionSpec("m.wasm", namespace=namespace), node=node)
    if state is not TaskState.RUNNING:
        task = task.transition(state, exit_code=0)
    return await sms.report_task(task)


async def _ids(sms: MetadataServer) -> list[str]:
    return sorted(t.id for t in await sms.tasks())


async def test_finished_records_go_unknown_ids_are_skipped_and_repeats_count_once(
    kv: KV,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sms_retention, "_BATCH", 2)  # (three records: two commits)
    sms = MetadataServer(kv, TIMINGS, Clock())
    done = [await _recorded(sms, "a") for _ in range(3)]
    kept = await _recorded(sms, "a")
    asked = [done[0].id, "no-such-task", done[1].id, done[0].id, done[2].id]
    assert await delete_finished_records(kv, asked) == [t.id for t in done]
    assert await _ids(sms) == [kept.id]
    assert await delete_finished_records(kv, [done[0].id]) == []  # (already gone)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"namespace": "team-b"}, NotFound, "no task {id!r} in namespace 'team-b'"),
        ({"node": "b"}, PermissionDenied, "task {id} ran on a, not on b"),
    ],
)
async def test_another_namespaces_or_members_task_refuses_the_whole_call(
    kv: KV,  # noqa: F811
    kwargs: dict[str, Any],
    error: type[Exception],
    words: str,
) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    mine = await _recorded(sms, "b", namespace="team-b")
    theirs = await _recorded(sms, "a", namespace="team-a")
    with pytest.raises(error) as caught:
        await delete_finished_records(kv, [mine.id, theirs.id], **kwargs)
    assert str(caught.value) == words.format(id=theirs.id)
    assert await _ids(sms) == sorted([mine.id, theirs.id])  # (nothing deleted)
    assert await delete_finished_records(kv, [mine.id], **kwargs) == [mine.id]


async def test_a_task_on_no_node_may_be_deleted_by_any_member_and_an_unfinished_one_by_none(
    kv: KV,  # noqa: F811
) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    placed_nowhere = await _recorded(sms, None, state=TaskState.FAILED)
    running = await _recorded(sms, "b", state=TaskState.RUNNING)
    with pytest.raises(Conflict) as caught:
        await delete_finished_records(kv, [placed_nowhere.id, running.id], node="b")
    assert str(caught.value) == f"task {running.id} is RUNNING: cancel it before deleting it"
    assert await _ids(sms) == sorted([placed_nowhere.id, running.id])
    assert await delete_finished_records(kv, [placed_nowhere.id], node="b") == [placed_nowhere.id]


async def test_a_record_changed_while_it_is_deleted_refuses_and_keeps_it(
    kv: KV,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sms = MetadataServer(kv, TIMINGS, Clock())
    task = await _recorded(sms, "a")
    commit = kv.commit
    raced: list[bool] = []

    async def racing(writes: Any) -> int:
        if not raced:  # (the deletion's commit: the record rewritten just before it)
            raced.append(True)
            entry = await kv.get("tasks/" + task.id)
            assert entry is not None
            await kv.put("tasks/" + task.id, entry.value)  # (a new version)
        return await commit(writes)

    monkeypatch.setattr(kv, "commit", racing)
    with pytest.raises(Conflict) as caught:
        await delete_finished_records(kv, [task.id])
    assert str(caught.value) == "a task record changed while it was being deleted: try again"
    assert await _ids(sms) == [task.id]
