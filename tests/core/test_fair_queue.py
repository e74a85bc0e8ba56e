"""The placement order of a node's queue (core/fair_queue.py): priority first, then the
namespaces in turn, then first come first served within a namespace."""

from __future__ import annotations

import pytest

from spear.core.fair_queue import FairQueue


def _queue(*items: tuple[str, int, str]) -> FairQueue[str]:
    queue: FairQueue[str] = FairQueue()
    for name, priority, namespace in items:
        queue.push(name, priority, namespace)
    return queue


def test_one_namespace_is_first_come_first_served_by_priority() -> None:
    queue = _queue(("p0", 0, "a"), ("p5", 5, "a"), ("q0", 0, "a"), ("q5", 5, "a"), ("p9", 9, "a"))
    assert list(queue) == ["p9", "p5", "q5", "p0", "q0"]
    assert (queue.head, queue.head_priority, len(queue)) == ("p9", 9, 5)


def test_a_namespace_with_a_backlog_delays_anothers_task_by_one_turn() -> None:
    queue = _queue(*[(f"a{i}", 0, "a") for i in range(5)])
    queue.push("b0", 0, "b")
    queue.push("b1", 0, "b")
    queue.push("c0", 0, "c")
    assert list(queue) == ["a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4"]


def test_namespaces_join_the_round_being_served() -> None:
    queue = _queue(*[(f"a{i}", 0, "a") for i in range(4)])
    queue.push("b0", 0, "b")
    assert list(queue) == ["a0", "b0", "a1", "a2", "a3"]
    for placed in ("a0", "b0", "a1"):  # the head goes, as the scheduler places it
        assert queue.head == placed
        queue.remove(placed)
    queue.push("b1", 0, "b")  # b had nothing waiting: it joins a2's round
    queue.push("c0", 0, "c")
    assert list(queue) == ["a2", "b1", "c0", "a3"]


def test_priorities_keep_their_own_turns() -> None:
    queue = _queue(("a0", 0, "a"), ("a1", 0, "a"), ("b0", 0, "b"))
    queue.push("a9", 9, "a")
    queue.push("b9", 9, "b")
    queue.push("a10", 9, "a")
    assert list(queue) == ["a9", "b9", "a10", "a0", "b0", "a1"]


def test_a_removed_task_leaves_the_turns_of_the_rest() -> None:
    queue = _queue(("a0", 0, "a"), ("a1", 0, "a"), ("b0", 0, "b"))
    assert "a1" in queue and "zz" not in queue
    queue.remove("a1")  # (cancelled while it waited)
    assert list(queue) == ["a0", "b0"]
    queue.remove("a0")
    queue.remove("b0")
    assert not queue and len(queue) == 0
    queue.push("a2", 0, "a")  # nothing of a waits: a fresh start
    assert list(queue) == ["a2"]
    with pytest.raises(ValueError):
        queue.remove("a0")
    with pytest.raises(IndexError):
        _ = FairQueue[str]().head


def test_a_queue_is_true_while_anything_waits_and_a_stranger_is_named_not_queued() -> None:
    queue = _queue(("a0", 0, "a"))
    assert queue and bool(queue) is True
    with pytest.raises(ValueError, match="^not queued$"):
        queue.remove("zz")


def test_a_namespace_keeps_its_own_next_round_after_its_head_was_placed() -> None:
    queue = _queue(*[(f"a{i}", 0, "a") for i in range(4)])
    for placed in ("a0", "a1"):
        queue.remove(placed)
    queue.push("a4", 0, "a")  # after a3's round, not in it (a has two waiting still)
    for i in range(3):
        queue.push(f"b{i}", 0, "b")  # b joins the round being served (a2's)
    assert list(queue) == ["a2", "b0", "a3", "b1", "a4", "b2"]


def test_a_namespace_whose_tasks_were_all_taken_out_starts_afresh() -> None:
    queue = _queue(("a0", 0, "a"), ("a1", 0, "a"), ("b0", 0, "b"), ("b1", 0, "b"), ("b2", 0, "b"))
    queue.remove("a1")  # (cancelled: the last of a's first)
    queue.remove("a0")
    queue.push("a2", 0, "a")  # nothing of a waits: a2 joins b0's round
    assert list(queue) == ["b0", "a2", "b1", "b2"]
    queue = _queue(("a0", 0, "a"), ("a1", 0, "a"), ("a2", 0, "a"), ("b0", 0, "b"))
    queue.remove("a1")  # one of three out: a still has two waiting
    queue.push("a3", 0, "a")  # after a2's round
    queue.push("b1", 0, "b")
    assert list(queue) == ["a0", "b0", "b1", "a2", "a3"]


def test_a_lower_priority_is_inserted_behind_every_higher_one() -> None:
    queue = _queue(("h0", 5, "a"), ("h1", 5, "b"), ("l0", 1, "a"))
    queue.push("m0", 3, "c")
    queue.push("l1", 1, "b")
    queue.push("h2", 5, "c")
    assert list(queue) == ["h0", "h1", "h2", "m0", "l0", "l1"]
