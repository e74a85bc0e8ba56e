"""The transport-neutral host operations (hostops) with plain Python values: the contract
the WASM import module and the process-agent channel both build on."""

from __future__ import annotations

import errno
import threading
import time
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest

from spear import FunctionSpec, Task
from spear.core.streams import POLLIN, POLLNVAL, POLLOUT, StreamRegistry
from spear.core.worker import ExecutionControl, NodeServices, TaskContext, TaskIO
from spear.runtimes.host import ops as hostops
from spear.runtimes.host.ops import HostError
from spear.store.leveldb import LevelDBKV
from spear.store.objects import ObjectStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[TaskContext]:
    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    store = ObjectStore(kv, tmp_path / "objects", max_bytes=100_000, capacity_bytes=150_000)
    logged: list[tuple[str, str]] = []
    context = TaskContext(
        task=Task(id="t1", spec=FunctionSpec("x.wasm")),
        control=ExecutionControl(),
        io=TaskIO(stdout=lambda b: None, stderr=lambda b: None),
        agent_log=lambda level, message: logged.append((level, message)),
        services=NodeServices(objects=store, streams=StreamRegistry(2, 64)),
    )
    try:
        yield context
    finally:
        await kv.aclose()


def _errno(exc: pytest.ExceptionInfo[HostError]) -> int:
    return exc.value.errno


async def test_object_errors_have_their_errno(ctx: TaskContext) -> None:
    v = await hostops.obj_put(ctx, "k", b"v", None)
    cases = [
        (hostops.obj_get(ctx, "missing"), errno.ENOENT),
        (hostops.obj_put(ctx, "k", b"w", v + 1), errno.ESTALE),
        (hostops.obj_put(ctx, "k", b"w", 0), errno.ESTALE),
        (hostops.obj_put(ctx, "", b"w"), errno.EINVAL),
        (hostops.obj_put(ctx, "big", b"x" * 100_001), errno.EFBIG),
        (hostops.obj_remove_ref(ctx, "k"), errno.EINVAL),
    ]
    for call, expected in cases:
        with pytest.raises(HostError) as exc:
            await call
        assert _errno(exc) == expected
    await hostops.obj_put(ctx, "a", b"x" * 90_000)
    with pytest.raises(HostError) as exc:
        await hostops.obj_put(ctx, "b", b"x" * 90_000)
    assert _errno(exc) == errno.EDQUOT
    with pytest.raises(HostError) as exc:
        await hostops.obj_get(ctx, "a", capacity=10)
    assert (_errno(exc), exc.value.needed) == (errno.ENOSPC, 90_000)
    await hostops.obj_pin(ctx, "k")
    with pytest.raises(HostError) as exc:
        await hostops.obj_delete(ctx, "k")
    assert _errno(exc) == errno.EBUSY
    await hostops.obj_unpin(ctx, "k")
    await hostops.obj_delete(ctx, "k")
    assert [i.key for i in await hostops.obj_list(ctx, "")] == ["a"]


async def test_references_are_held_by_the_task(ctx: TaskContext) -> None:
    await hostops.obj_put(ctx, "k", b"v")
    assert await hostops.obj_add_ref(ctx, "k") == 1
    store: ObjectStore = ctx.services.objects
    await store.release_holder(ctx.task.id)
    assert (await hostops.obj_info(ctx, "k")).refs == 0


def test_stream_operations_and_their_errno(ctx: TaskContext) -> None:
    registry: StreamRegistry = ctx.services.streams
    streams = registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    assert hostops.stream_caller(ctx) == h
    with pytest.raises(HostError) as exc:
        hostops.stream_read(ctx, h)
    assert _errno(exc) == errno.EAGAIN
    streams.inbound.offer(b"a longer message")
    with pytest.raises(HostError) as exc:
        hostops.stream_read(ctx, h, capacity=4)
    assert (_errno(exc), exc.value.needed) == (errno.ENOSPC, 16)
    assert hostops.stream_read(ctx, h, capacity=16) == b"a longer message"
    assert hostops.stream_write(ctx, h, b"1") == 1
    assert hostops.stream_write(ctx, h, b"2") == 1
    with pytest.raises(HostError) as exc:
        hostops.stream_write(ctx, h, b"3")  # the bound is 2
    assert _errno(exc) == errno.EAGAIN
    with pytest.raises(HostError) as exc:
        hostops.stream_write(ctx, h, b"x" * 65)
    assert _errno(exc) == errno.EMSGSIZE
    with pytest.raises(HostError) as exc:
        hostops.stream_read(ctx, 99)
    assert _errno(exc) == errno.EBADF
    assert hostops.poll(ctx, [(h, POLLIN | POLLOUT), (99, POLLIN)], 0) == [0, POLLNVAL]
    streams.inbound.close_writer()
    with pytest.raises(HostError) as exc:
        hostops.stream_read(ctx, h)
    assert _errno(exc) == errno.EPIPE
    hostops.close(ctx, h)
    with pytest.raises(HostError) as exc:
        hostops.close(ctx, h)
    assert _errno(exc) == errno.EBADF


async def test_poll_wakes_when_the_caller_sends(ctx: TaskContext) -> None:
    registry: StreamRegistry = ctx.services.streams
    streams = registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    async with anyio.create_task_group() as tg:
        result: list[list[int]] = []

        async def wait() -> None:
            result.append(await anyio.to_thread.run_sync(hostops.poll, ctx, [(h, POLLIN)], None))

        tg.start_soon(wait)
        await streams.inbound.put(b"wake up")
    assert result == [[POLLIN]]
    assert hostops.poll(ctx, [(h, POLLIN)], 0.01) == [POLLIN]  # level-triggered: still ready


def test_sleep_and_poll_end_early_when_the_task_is_stopped(ctx: TaskContext) -> None:
    registry: StreamRegistry = ctx.services.streams
    registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    threading.Timer(0.05, ctx.control.cancel).start()
    with pytest.raises(HostError) as exc:
        hostops.sleep(ctx, 3600)
    assert _errno(exc) == errno.ECANCELED
    with pytest.raises(HostError) as exc:
        hostops.poll(ctx, [(h, POLLIN)], None)
    assert _errno(exc) == errno.ECANCELED


def test_time_log_and_bad_arguments(ctx: TaskContext) -> None:
    assert abs(hostops.now(ctx, hostops.CLOCK_REALTIME) / 1e9 - time.time()) < 60
    assert hostops.now(ctx, hostops.CLOCK_MONOTONIC) > 0
    for bad in (
        lambda: hostops.now(ctx, 7),
        lambda: hostops.sleep(ctx, -1),
        lambda: hostops.log(ctx, 9, "x"),
        lambda: hostops.log(ctx, "LOUD", "x"),
    ):
        with pytest.raises(HostError) as exc:
            bad()
        assert _errno(exc) == errno.EINVAL
    hostops.log(ctx, "warning", "careful")


async def test_poll_async_waits_on_the_loop_and_wakes_on_a_message(ctx: TaskContext) -> None:
    registry: StreamRegistry = ctx.services.streams
    streams = registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    assert await hostops.poll_async(ctx, [(h, POLLIN)], 0.02) == [0]  # timed out
    result: list[list[int]] = []

    async def wait() -> None:
        result.append(await hostops.poll_async(ctx, [(h, POLLIN)], None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.sleep(0)  # let it start waiting
        assert result == []
        # A thread (like a guest) sends: the waiter on the loop wakes.
        await anyio.to_thread.run_sync(streams.inbound.offer, b"hi")
    assert result == [[POLLIN]]


async def test_sleep_async_and_poll_async_end_when_the_task_is_stopped(ctx: TaskContext) -> None:
    registry: StreamRegistry = ctx.services.streams
    registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    await hostops.sleep_async(ctx, 0.001)
    async with anyio.create_task_group() as tg:
        errors: list[int] = []

        async def sleeper() -> None:
            with pytest.raises(HostError) as exc:
                await hostops.sleep_async(ctx, 3600)
            errors.append(_errno(exc))

        async def poller() -> None:
            with pytest.raises(HostError) as exc:
                await hostops.poll_async(ctx, [(h, POLLIN)], None)
            errors.append(_errno(exc))

        tg.start_soon(sleeper)
        tg.start_soon(poller)
        await anyio.sleep(0)
        ctx.control.cancel()
    assert errors == [errno.ECANCELED, errno.ECANCELED]
