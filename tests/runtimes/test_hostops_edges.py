"""The host operations' edges (runtimes/host/ops.py) that mutation testing showed
unchecked (issue 22): the words of each refusal a process agent reads (its reply carries
the message beside the errno), the default prefix of a listing, whose reference a
`remove_ref` drops, a poll of an unknown handle among good ones, a poll on a node without
streams, a timeout of zero on a clock that has not moved, and every wait bounded: a sleep
or poll that a wrong deadline rule would make endless fails here by assertion within
seconds, instead of hanging until the test's time limit.
"""

from __future__ import annotations

import dataclasses
import errno
import threading
import time
import types
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from spear import FunctionSpec, Task
from spear.core.streams import POLLIN, POLLNVAL, POLLOUT, StreamRegistry
from spear.core.worker import ExecutionControl, NodeServices, TaskContext, TaskIO
from spear.runtimes.host import ops as hostops
from spear.runtimes.host.ops import HostError
from spear.store.leveldb import LevelDBKV
from spear.store.objects import ObjectStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

BOUND_S = 10.0  # far above any wait below (at most 0.1 s), far below a test's time limit
FAR = 3600.0


def _context(
    services: NodeServices, deadline: float | None = None, task_id: str = "t1"
) -> TaskContext:
    return TaskContext(
        task=Task(id=task_id, spec=FunctionSpec("x.wasm")),
        control=ExecutionControl(deadline),
        io=TaskIO(stdout=lambda b: None, stderr=lambda b: None),
        agent_log=lambda level, message: None,
        services=services,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    try:
        yield ObjectStore(kv, tmp_path / "objects", max_bytes=1000, capacity_bytes=5000)
    finally:
        await kv.aclose()


@pytest.fixture
def ctx(store: ObjectStore) -> TaskContext:
    return _context(NodeServices(objects=store, streams=StreamRegistry(2, 64)))


def _bounded(call: Callable[[], Any]) -> Any:
    """`call()` on its own thread: its result or its exception, and an assertion failure
    if it is still running after BOUND_S (the thread is a daemon: a wait made endless by
    a bug does not keep the test process alive)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("value", call()))
        except BaseException as exc:  # handed to the test's thread
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), f"still waiting after {BOUND_S} s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def _fails(err: int, call: Callable[[], Any]) -> HostError:
    with pytest.raises(HostError) as info:
        _bounded(call)
    assert info.value.errno == err, (errno.errorcode[info.value.errno], info.value)
    return info.value


async def _afails(err: int, call: Any) -> HostError:
    with pytest.raises(HostError) as info, anyio.fail_after(BOUND_S):
        await call
    assert info.value.errno == err, (errno.errorcode[info.value.errno], info.value)
    return info.value


class Idle:
    """A handle that is open and never ready."""

    def readiness(self) -> int:
        return 0


# -- the words of each refusal --------------------------------------------------------


async def test_each_refusal_says_why_in_words(ctx: TaskContext) -> None:
    assert str(_fails(errno.EINVAL, lambda: hostops.sleep(ctx, -0.001))) == (
        "cannot sleep a negative time"
    )
    error = await _afails(errno.EINVAL, hostops.poll_async(ctx, [], -0.001))
    assert str(error) == "timeout must not be negative"
    await hostops.obj_put(ctx, "k", b"12345")
    error = await _afails(errno.ENOSPC, hostops.obj_get(ctx, "k", capacity=4))
    assert (str(error), error.needed) == ("buffer too small", 5)
    registry: StreamRegistry = ctx.services.streams  # type: ignore[assignment]
    registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    error = _fails(errno.EMSGSIZE, lambda: hostops.stream_write(ctx, h, b"x" * 65))
    assert str(error) == "a message is at most 64 bytes, not 65"


async def test_a_stopped_task_is_told_so_in_words(ctx: TaskContext) -> None:
    ctx.control.cancel()
    h = hostops.add_handle(ctx, Idle())
    for call in (
        lambda: hostops.sleep(ctx, FAR),
        lambda: hostops.poll(ctx, [(h, POLLIN)], None),
    ):
        assert str(_fails(errno.ECANCELED, call)) == "the task is being stopped"
    error = await _afails(errno.ECANCELED, hostops.poll_async(ctx, [(h, POLLIN)], FAR))
    assert str(error) == "the task is being stopped"


# -- objects --------------------------------------------------------------------------


async def test_a_listing_without_a_prefix_lists_every_object(ctx: TaskContext) -> None:
    await hostops.obj_put(ctx, "a", b"1")
    await hostops.obj_put(ctx, "b/c", b"2")
    assert sorted(i.key for i in await hostops.obj_list(ctx)) == ["a", "b/c"]


async def test_a_listing_of_a_reserved_prefix_is_einval_with_its_reason(
    ctx: TaskContext,
) -> None:
    error = await _afails(errno.EINVAL, hostops.obj_list(ctx, "@ns/other/"))
    assert str(error) == "object keys starting with '@ns/' are reserved"


async def test_a_reference_removed_is_the_callers_not_anothers(
    ctx: TaskContext, store: ObjectStore
) -> None:
    other = _context(ctx.services, task_id="t2")
    await hostops.obj_put(ctx, "shared", b"v")
    assert await hostops.obj_add_ref(ctx, "shared") == 1
    assert await hostops.obj_add_ref(other, "shared") == 2
    assert await hostops.obj_remove_ref(ctx, "shared") == 1
    # t1 ends holding nothing: the reference t2 holds must stay.
    await store.release_holder("t1")
    assert (await hostops.obj_info(other, "shared")).refs == 1
    await store.release_holder("t2")
    assert (await store.info("shared")).refs == 0


async def test_a_write_at_a_stale_version_is_estale(ctx: TaskContext) -> None:
    version = await hostops.obj_put(ctx, "k", b"v")
    await _afails(errno.ESTALE, hostops.obj_put(ctx, "k", b"w", version + 1))
    assert await hostops.obj_put(ctx, "k", b"w", version) > version


# -- handles and poll -----------------------------------------------------------------


def test_an_unknown_handle_does_not_hide_the_ones_after_it(ctx: TaskContext) -> None:
    registry: StreamRegistry = ctx.services.streams  # type: ignore[assignment]
    registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    got = _bounded(lambda: hostops.poll(ctx, [(99, POLLIN), (h, POLLOUT), (98, 0)], 0))
    assert got == [POLLNVAL, POLLOUT, POLLNVAL]


def test_the_smallest_free_handle_is_found_in_bounded_time(ctx: TaskContext) -> None:
    assert _bounded(lambda: hostops.add_handle(ctx, Idle())) == 1
    assert _bounded(lambda: hostops.add_handle(ctx, Idle())) == 2


async def test_a_poll_on_a_node_without_streams_waits_out_its_timeout() -> None:
    bare = _context(NodeServices())
    h = hostops.add_handle(bare, Idle())
    with anyio.fail_after(BOUND_S):
        assert await hostops.poll_async(bare, [(h, POLLIN)], 0.05) == [0]
    assert _bounded(lambda: hostops.poll(bare, [(h, POLLIN)], 0.05)) == [0]


async def test_a_timeout_of_zero_just_looks_even_on_a_clock_that_has_not_moved(
    ctx: TaskContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = hostops.add_handle(ctx, Idle())
    frozen = types.SimpleNamespace(monotonic=lambda: 1000.0, time_ns=time.time_ns)
    monkeypatch.setattr(hostops, "time", frozen)
    assert hostops.poll(ctx, [(h, POLLIN)], 0) == [0]
    assert await hostops.poll_async(ctx, [(h, POLLIN)], 0) == [0]


# -- every wait ends: its own time, or the task's deadline ----------------------------


def _idle_ctx(deadline: float | None) -> tuple[TaskContext, int]:
    ctx = _context(NodeServices(streams=StreamRegistry(2, 64)), deadline=deadline)
    return ctx, hostops.add_handle(ctx, Idle())


@pytest.mark.parametrize("deadline_in", [None, FAR], ids=["no-deadline", "far-deadline"])
async def test_a_short_wait_ends_on_its_own_time(deadline_in: float | None) -> None:
    deadline = None if deadline_in is None else time.monotonic() + deadline_in
    ctx, h = _idle_ctx(deadline)
    _bounded(lambda: hostops.sleep(ctx, 0.05))
    assert _bounded(lambda: hostops.poll(ctx, [(h, POLLIN)], 0.05)) == [0]
    with anyio.fail_after(BOUND_S):
        await hostops.sleep_async(ctx, 0.05)
        assert await hostops.poll_async(ctx, [(h, POLLIN)], 0.05) == [0]


async def test_a_long_wait_ends_at_the_tasks_deadline() -> None:
    ctx, h = _idle_ctx(time.monotonic() + 0.1)
    assert str(_fails(errno.ECANCELED, lambda: hostops.sleep(ctx, FAR))) == (
        "the task is being stopped"
    )
    ctx, h = _idle_ctx(time.monotonic() + 0.1)
    error = _fails(errno.ECANCELED, lambda: hostops.poll(ctx, [(h, POLLIN)], None))
    assert str(error) == "the task ran out of time"
    ctx, h = _idle_ctx(time.monotonic() + 0.1)
    error = await _afails(errno.ECANCELED, hostops.sleep_async(ctx, FAR))
    assert str(error) == "the task is being stopped"
    ctx, h = _idle_ctx(time.monotonic() + 0.1)
    error = await _afails(errno.ECANCELED, hostops.poll_async(ctx, [(h, POLLIN)], None))
    assert str(error) == "the task ran out of time"
    ctx, h = _idle_ctx(time.monotonic() + 0.1)
    error = await _afails(errno.ECANCELED, hostops.poll_async(ctx, [(h, POLLIN)], FAR))
    assert str(error) == "the task ran out of time"


# -- what only the node writes, and a result's size -----------------------------------


async def test_a_task_cannot_delete_what_only_the_node_writes(ctx: TaskContext) -> None:
    key = "results/" + "another-task"
    version = await hostops.result_set(ctx, b"mine")
    error = await _afails(errno.EACCES, hostops.obj_delete(ctx, key))
    assert str(error) == f"{key!r} is written only by the node"
    mine = [i.key for i in await hostops.obj_list(ctx, "results/")]
    assert mine == ["results/t1"]
    await _afails(errno.EACCES, hostops.obj_delete(ctx, "results/t1"))
    assert (await hostops.obj_info(ctx, "results/t1")).version == version


async def test_a_result_is_at_most_its_cap(store: ObjectStore) -> None:
    ctx = _context(NodeServices(objects=store, result_max_bytes=10))
    assert await hostops.result_set(ctx, b"x" * 10) > 0  # exactly the cap
    error = await _afails(errno.EFBIG, hostops.result_set(ctx, b"x" * 11))
    assert str(error) == "a result is at most 10 bytes (task_result_max_bytes)"


async def test_a_task_cannot_write_what_only_the_node_writes(ctx: TaskContext) -> None:
    error = await _afails(errno.EACCES, hostops.obj_put(ctx, "results/other", b"forged"))
    assert str(error) == "'results/other' is written only by the node"
    assert await hostops.obj_list(ctx, "results/") == []


def test_a_store_failure_is_eio_and_logged_with_its_cause() -> None:
    from loguru import logger

    from spear.errors import SpearError

    logged: list[str] = []
    sink = logger.add(
        lambda m: logged.append(f"{m.record['level'].name} {m}"),
        format="{message}",
        level="INFO",
        filter="spear",
    )
    logger.enable("spear")  # (spear's log is off as a library: on for this test only)
    try:
        error = hostops.translate(SpearError("the disk broke"))
    finally:
        logger.disable("spear")
        logger.remove(sink)
    assert (error.errno, str(error)) == (errno.EIO, "the disk broke")
    assert logged == ["WARNING a host operation failed: the disk broke\n"]


# -- namespaces: a task sees its own keys -------------------------------------------------


async def test_a_namespaced_task_sees_its_keys_as_it_named_them(store: ObjectStore) -> None:
    ctx = _context(NodeServices(objects=store))
    ctx = dataclasses.replace(
        ctx, task=Task(id="t1", spec=FunctionSpec("x.wasm", namespace="team-a"))
    )
    plain = _context(NodeServices(objects=store))
    await hostops.obj_put(ctx, "k", b"theirs")
    await hostops.obj_put(plain, "k", b"ours")
    info = await hostops.obj_info(ctx, "k")
    assert (info.key, info.size) == ("k", 6)
    assert [(i.key, i.size) for i in await hostops.obj_list(ctx)] == [("k", 6)]
    assert (await hostops.obj_info(plain, "k")).key == "k"
    assert [i.key for i in await hostops.obj_list(plain)] == ["k"]  # not team-a's
    assert (await store.info("@ns/team-a/k")).size == 6


async def test_a_reserved_key_is_einval_with_its_reason(ctx: TaskContext) -> None:
    error = await _afails(errno.EINVAL, hostops.obj_get(ctx, "@ns/other/k"))
    assert str(error) == "object keys starting with '@ns/' are reserved"
