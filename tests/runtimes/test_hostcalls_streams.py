"""Caller streams, readiness, time and sleep, from real C agents and from Python."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import anyio
import pytest
from conftest import ROOT, build_c

from spear import FunctionSpec, LocalNode, TaskState, Unavailable
from spear.core.streams import POLLHUP, POLLIN, POLLOUT, MessageQueue, StreamEnded

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="session")
def hostcalls_wasm() -> Path:
    return build_c(ROOT / "tests" / "wasm" / "hostcalls.c")


@pytest.fixture(scope="session")
def transform_wasm() -> Path:
    return build_c(ROOT / "examples" / "stream_transform" / "transform.c")


async def test_the_transform_agent_answers_each_message(
    tmp_path: Path, transform_wasm: Path
) -> None:
    async with LocalNode(tmp_path / "home") as node:
        # A bounded task: an agent that never gets a message's length back (it asks again
        # with the same small buffer, forever) fails this test instead of hanging it.
        stream = await node.start_task(FunctionSpec(str(transform_wasm), timeout_s=20))
        received: list[bytes] = []

        async def read() -> None:
            async for message in stream.messages():
                received.append(message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            for word in ("hello", "stream", "x" * 10_000, ""):
                await stream.send(word)
            await stream.close()
        assert received == [b"1: HELLO", b"2: STREAM", b"3: " + b"X" * 10_000, b"4: "]
        assert await stream.result() == b"transformed 4 messages\n"
        assert (await stream.wait()).state is TaskState.COMPLETED
        with pytest.raises(Unavailable):
            await stream.send(b"too late")


async def test_a_slow_reader_applies_backpressure(tmp_path: Path, hostcalls_wasm: Path) -> None:
    async with LocalNode(tmp_path / "home", stream_queue_messages=4) as node:
        stream = await node.start_task(FunctionSpec(str(hostcalls_wasm), args=("flood", "200")))
        queue = stream._streams.outbound
        # The agent writes 200 messages while nobody reads: it must find the queue full and
        # wait, never holding more than the bound.
        await _until(lambda: len(queue) == 4)
        assert (await node.task(stream.id)).state is TaskState.RUNNING
        got = [m async for m in stream.messages()]
        assert got == [f"m{i}".encode() for i in range(200)]
        task = await stream.wait()
        assert task.state is TaskState.COMPLETED
        assert await stream.result() == b"eagain 1\n"


async def _until(check: object, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.005)


async def test_poll_times_out_and_time_and_sleep_work(tmp_path: Path, hostcalls_wasm: Path) -> None:
    async with LocalNode(tmp_path / "home") as node:
        stream = await node.start_task(FunctionSpec(str(hostcalls_wasm), args=("poll",)))
        task = await stream.wait()
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        assert await stream.result() == b"ok\n"


async def test_a_task_without_a_caller_sees_an_ended_stream(
    tmp_path: Path, hostcalls_wasm: Path
) -> None:
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(hostcalls_wasm), args=("detached",)))
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")


async def test_a_sleeping_or_waiting_task_holds_up_neither_the_loop_nor_others(
    tmp_path: Path, hostcalls_wasm: Path, hello_wasm: Path
) -> None:
    async with LocalNode(tmp_path / "home") as node:
        sleeper = await node.submit(FunctionSpec(str(hostcalls_wasm), args=("sleep",)))
        waiter = await node.start_task(FunctionSpec(str(hostcalls_wasm), args=("wait",)))
        await _until(lambda: node.controller.running_count == 2)
        # Both guests are blocked in a hostcall; the node still runs other tasks.
        for _ in range(3):
            assert (await node.run(FunctionSpec(str(hello_wasm)))).state is TaskState.COMPLETED
        cancelled = await node.cancel(sleeper.id)
        assert cancelled.state is TaskState.CANCELLED
        await node.cancel(waiter.id)
        assert (await waiter.wait()).state is TaskState.CANCELLED


async def test_a_timeout_stops_a_task_blocked_in_sleep(
    tmp_path: Path, hostcalls_wasm: Path
) -> None:
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(hostcalls_wasm), args=("sleep",), timeout_s=0.3))
        assert (task.state, task.reason) == (TaskState.FAILED, "timeout")


# -- the queue itself ---------------------------------------------------------------


def _queue(max_messages: int = 2) -> MessageQueue:
    return MessageQueue(max_messages, 16, threading.Condition())


def test_a_queue_is_bounded_and_says_when_it_is_full() -> None:
    q = _queue()
    assert q.offer(b"a") and q.offer(b"b")
    assert not q.offer(b"c") and not q.writable
    assert q.take() == b"a" and q.writable
    with pytest.raises(Exception, match="at most 16"):
        q.offer(b"x" * 17)


def test_a_queue_ends_after_its_last_message() -> None:
    q = _queue()
    q.offer(b"last")
    q.close_writer()
    assert q.readable and not q.ended
    assert q.take() == b"last"
    assert q.ended
    with pytest.raises(StreamEnded):
        q.take()


async def test_an_async_sender_waits_for_room_a_thread_makes() -> None:
    q = _queue(1)
    await q.put(b"1")
    taker = threading.Timer(0.05, q.take)
    taker.start()
    await q.put(b"2")  # waits until the thread took one, without blocking the loop
    taker.join()
    assert q.take() == b"2"


async def test_readiness_bits_follow_the_queues(tmp_path: Path) -> None:
    from spear.core.streams import TaskStreams

    s = TaskStreams("t", 1, 64)
    assert s.readiness() == POLLOUT
    s.inbound.offer(b"m")
    assert s.readiness() == POLLOUT | POLLIN
    s.outbound.offer(b"o")
    assert s.readiness() == POLLIN
    s.inbound.take()
    s.inbound.close_writer()
    assert s.readiness() & (POLLIN | POLLHUP) == POLLIN | POLLHUP
