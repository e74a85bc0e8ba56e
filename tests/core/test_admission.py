"""Admission (core/tasks/admission.py): a node's CPU and memory, reserved first come,
first served. What a node relies on: a task is started only when both fit, exactly up to
the capacity; a task that waits is served before any later one, even a smaller one that
would fit; a waiter that is cancelled takes nothing with it.

Written for mutation testing (issue 22): each test states one behaviour exactly.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from spear.core.models import Resources
from spear.core.tasks.admission import Admission
from spear.errors import ResourceExhausted


def R(cpu: int, mem: int) -> Resources:
    return Resources(cpu_millis=cpu, memory_bytes=mem)


async def _settle() -> None:
    """Let every task that can run, run (a few turns of the loop)."""
    for _ in range(5):
        await anyio.sleep(0)


def test_a_node_starts_with_everything_free() -> None:
    node = Admission(R(1000, 100))
    assert (node.used, node.free, node.waiting) == (R(0, 0), R(1000, 100), 0)


def test_a_need_is_reserved_exactly_up_to_the_capacity() -> None:
    node = Admission(R(1000, 100))
    assert node.try_acquire(R(600, 40)) is True
    assert (node.used, node.free) == (R(600, 40), R(400, 60))
    assert node.try_acquire(R(400, 60)) is True  # exactly what is left
    assert (node.used, node.free) == (R(1000, 100), R(0, 0))
    assert node.try_acquire(R(0, 0)) is True


@pytest.mark.parametrize("need", [R(401, 1), R(1, 61), R(401, 61)])
def test_a_need_over_what_is_left_of_either_is_refused(need: Resources) -> None:
    node = Admission(R(1000, 100))
    assert node.try_acquire(R(600, 40))
    assert node.try_acquire(need) is False
    assert node.used == R(600, 40)


def test_a_release_gives_back_what_was_taken() -> None:
    node = Admission(R(1000, 100))
    node.try_acquire(R(600, 40))
    node.try_acquire(R(300, 50))
    node.release(R(600, 40))
    assert (node.used, node.free) == (R(300, 50), R(700, 50))
    node.release_many([R(100, 20), R(200, 30)])
    assert node.used == R(0, 0)
    node.release_many([])
    assert node.used == R(0, 0)


def test_release_many_adds_each_part() -> None:
    node = Admission(R(1000, 100))
    node.try_acquire(R(1000, 100))
    node.release_many([R(100, 10), R(200, 20), R(300, 30)])
    assert node.used == R(400, 40)


@pytest.mark.parametrize("need", [R(1001, 1), R(1, 101)])
def test_a_need_larger_than_the_node_is_refused_at_once(need: Resources) -> None:
    node = Admission(R(1000, 100))
    with pytest.raises(ResourceExhausted) as info:
        node.check(need)
    assert str(info.value) == (
        f"the task needs {need.cpu_millis}m CPU and {need.memory_bytes} bytes; "
        "this node has 1000m and 100"
    )
    node.check(R(1000, 100))  # the whole node fits


async def test_acquire_refuses_what_can_never_fit_without_waiting() -> None:
    node = Admission(R(1000, 100))
    with pytest.raises(ResourceExhausted):
        await node.acquire(R(2000, 1))
    assert (node.used, node.waiting) == (R(0, 0), 0)


async def test_acquire_takes_what_fits_at_once() -> None:
    node = Admission(R(1000, 100))
    await node.acquire(R(1000, 100))
    assert (node.used, node.waiting) == (R(1000, 100), 0)


async def test_waiters_are_served_in_order_and_a_later_small_one_waits_its_turn() -> None:
    node = Admission(R(1000, 100))
    assert node.try_acquire(R(800, 80))
    started: list[str] = []

    async def task(name: str, need: Resources) -> None:
        await node.acquire(need)
        started.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(task, "big", R(900, 10))
        await _settle()
        tg.start_soon(task, "small", R(100, 10))  # fits now, but "big" came first
        await _settle()
        assert (started, node.waiting) == ([], 2)
        assert node.try_acquire(R(1, 1)) is False  # nobody jumps the queue either
        node.release(R(800, 80))  # "big" fits now, then "small" does too
        await _settle()
        assert started == ["big", "small"]
        assert (node.used, node.waiting) == (R(1000, 20), 0)


async def test_a_release_serves_only_the_waiters_that_fit_from_the_front() -> None:
    node = Admission(R(1000, 100))
    assert node.try_acquire(R(1000, 100))
    started: list[str] = []

    async def task(name: str, need: Resources) -> None:
        await node.acquire(need)
        started.append(name)

    async with anyio.create_task_group() as tg:
        for name, need in [("a", R(300, 30)), ("b", R(300, 30)), ("c", R(500, 10))]:
            tg.start_soon(task, name, need)
            await _settle()
        node.release(R(600, 60))  # a and b fit; c does not
        await _settle()
        assert (started, node.waiting, node.used) == (["a", "b"], 1, R(1000, 100))
        node.release(R(500, 50))
        await _settle()
        assert (started, node.waiting, node.used) == (["a", "b", "c"], 0, R(1000, 60))


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_nothing() -> None:
    node = Admission(R(1000, 100))
    assert node.try_acquire(R(1000, 100))
    with anyio.move_on_after(0.01):
        await node.acquire(R(500, 50))
    assert (node.waiting, node.used) == (0, R(1000, 100))
    node.release(R(1000, 100))
    assert node.used == R(0, 0)


async def test_a_waiter_cancelled_just_as_it_is_served_gives_it_back() -> None:
    node = Admission(R(1000, 100))
    assert node.try_acquire(R(1000, 100))
    waiter = asyncio.ensure_future(node.acquire(R(500, 50)))
    await _settle()
    assert node.waiting == 1
    node.release(R(500, 50))  # served: its share is taken for it ...
    assert (node.waiting, node.used) == (0, R(1000, 100))
    waiter.cancel()  # ... and it is cancelled before it could run: it gives it back
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (node.waiting, node.used) == (0, R(500, 50))
