"""Idempotent submission (node/idempotency.py), each rule on its own: what task id a key
names, and how a submit finds the task a key made or makes it once. The same through real
nodes and a lost reply: tests/transport/test_idempotent_submit.py.

Written for mutation testing: each test states one behaviour exactly.
"""

from __future__ import annotations

import hashlib

import pytest

from spear.errors import Conflict, InvalidArgument, NotFound, StorageError, Unavailable
from spear.node.idempotency import MAX_KEY_CHARS, submit_once, task_id_for_key


def test_a_key_that_is_a_task_id_names_that_task_and_any_other_is_hashed() -> None:
    task_id = "01a2328bfb40547479587c"
    assert task_id_for_key(task_id) == task_id
    for key in (task_id.upper(), task_id[:-1], task_id + "0", "my-job-7", " " + task_id):
        assert task_id_for_key(key) == hashlib.sha256(key.encode()).hexdigest()[:22]
    assert task_id_for_key("\udcff") == hashlib.sha256(b"\xff").hexdigest()[:22]
    assert MAX_KEY_CHARS == 256
    assert len(task_id_for_key("k" * MAX_KEY_CHARS)) == 22


@pytest.mark.parametrize("key", ["", "k" * (MAX_KEY_CHARS + 1)])
def test_a_key_has_one_to_256_characters(key: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        task_id_for_key(key)
    assert str(caught.value) == "an idempotency key has 1 to 256 characters"


class _Node:
    """A node's two steps, scripted: `found` answers finds (an error to raise, or the
    task), `started` answers starts; every call is noted."""

    def __init__(self, found: list[object], started: object = "started") -> None:
        self.found = found
        self.started = started
        self.calls: list[tuple[str, str]] = []

    async def find(self, task_id: str) -> object:
        self.calls.append(("find", task_id))
        answer = self.found.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def start(self, task_id: str) -> object:
        self.calls.append(("start", task_id))
        if isinstance(self.started, Exception):
            raise self.started
        return self.started


KEY = "my-job"
ID = task_id_for_key(KEY)


async def test_a_task_the_key_made_already_is_returned_and_nothing_starts() -> None:
    node = _Node(["the first attempt's task"])
    assert await submit_once(KEY, node.find, node.start) == "the first attempt's task"  # type: ignore[arg-type]
    assert node.calls == [("find", ID)]


@pytest.mark.parametrize("absent", [NotFound("no such task"), Unavailable("the SMS is away")])
async def test_a_key_not_found_or_not_answered_starts_its_task_once(absent: Exception) -> None:
    node = _Node([absent])
    assert await submit_once(KEY, node.find, node.start) == "started"  # type: ignore[arg-type]
    assert node.calls == [("find", ID), ("start", ID)]


@pytest.mark.parametrize("error", [StorageError("the disk"), Conflict("odd")])
async def test_any_other_failure_to_find_is_the_submits_and_starts_nothing(
    error: Exception,
) -> None:
    node = _Node([error])
    with pytest.raises(type(error)):
        await submit_once(KEY, node.find, node.start)  # type: ignore[arg-type]
    assert node.calls == [("find", ID)]


async def test_a_twin_that_won_the_race_is_found_and_returned() -> None:
    node = _Node(
        [NotFound("no such task"), "the twin's task"],
        started=InvalidArgument(f"task {ID} exists already"),
    )
    assert await submit_once(KEY, node.find, node.start) == "the twin's task"  # type: ignore[arg-type]
    assert node.calls == [("find", ID), ("start", ID), ("find", ID)]


async def test_a_start_refused_for_another_reason_is_the_submits() -> None:
    node = _Node([NotFound("no such task")], started=InvalidArgument("bad spec"))
    with pytest.raises(InvalidArgument, match="bad spec"):
        await submit_once(KEY, node.find, node.start)  # type: ignore[arg-type]
    assert node.calls == [("find", ID), ("start", ID)]
