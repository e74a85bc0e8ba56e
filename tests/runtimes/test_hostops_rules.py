"""The host operations' rules (runtimes/host/ops.py) stated exactly, as a guest or a
process agent sees them: the log levels and their names, which errno each refusal is,
that closing the caller stream ends both directions, that a wait ends with the task's
deadline (ECANCELED) but a poll's own timeout just returns, and that a node without a
service says ENOSYS. Written for mutation testing (issue 22); the broader contract is in
test_hostcalls_ops.py.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from spear import FunctionSpec, Task
from spear.core.streams import POLLIN, POLLNVAL, POLLOUT, StreamEnded, StreamRegistry
from spear.core.worker import ExecutionControl, NodeServices, TaskContext, TaskIO
from spear.runtimes.host import ops as hostops
from spear.runtimes.host.ops import HostError
from spear.store.leveldb import LevelDBKV
from spear.store.objects import ObjectStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

POLLERR, POLLHUP = 0x8, 0x10


class Logged(list[tuple[str, str]]):
    def __call__(self, level: str, message: str) -> None:
        self.append((level, message))


BOUND_S = 10.0  # far above any wait here, far below a test's time limit


def _bounded(call: Callable[[], Any]) -> Any:
    """`call()` on a daemon thread: its result or its exception, or an assertion failure
    if it still runs after BOUND_S (a wait made endless by a bug)."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the test's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), f"still waiting after {BOUND_S} s"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _context(services: NodeServices, deadline: float | None = None) -> TaskContext:
    return TaskContext(
        task=Task(id="t1", spec=FunctionSpec("x.wasm")),
        control=ExecutionControl(deadline),
        io=TaskIO(stdout=lambda b: None, stderr=lambda b: None),
        agent_log=Logged(),
        services=services,
    )


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[TaskContext]:
    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    store = ObjectStore(kv, tmp_path / "objects", max_bytes=1000, capacity_bytes=5000)
    try:
        yield _context(NodeServices(objects=store, streams=StreamRegistry(2, 64)))
    finally:
        await kv.aclose()


def _fails(err: int, call: Callable[[], Any]) -> HostError:
    with pytest.raises(HostError) as info:
        _bounded(call)
    assert info.value.errno == err, (errno.errorcode[info.value.errno], info.value)
    return info.value


async def _afails(err: int, call: Any) -> HostError:
    # Bounded: a wait that a wrong deadline rule makes endless fails here by assertion.
    with pytest.raises(HostError) as info, anyio.fail_after(BOUND_S):
        await call
    assert info.value.errno == err, (errno.errorcode[info.value.errno], info.value)
    return info.value


# -- log ------------------------------------------------------------------------------


def test_each_log_level_by_number_and_by_name(ctx: TaskContext) -> None:
    logged: Logged = ctx.agent_log  # type: ignore[assignment]
    for number, name in enumerate(["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"]):
        hostops.log(ctx, number, f"n{number}")
        hostops.log(ctx, name.lower(), f"s{number}")
        hostops.log(ctx, name, f"u{number}")
    assert logged == [
        (name, f"{how}{n}")
        for n, name in enumerate(["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"])
        for how in "nsu"
    ]


def test_bad_log_levels_and_long_messages_are_refused(ctx: TaskContext) -> None:
    logged: Logged = ctx.agent_log  # type: ignore[assignment]
    assert str(_fails(errno.EINVAL, lambda: hostops.log(ctx, -1, "x"))) == "log level must be 0..4"
    assert str(_fails(errno.EINVAL, lambda: hostops.log(ctx, 5, "x"))) == "log level must be 0..4"
    bad = _fails(errno.EINVAL, lambda: hostops.log(ctx, "loud", "x"))
    assert str(bad) == "unknown log level 'loud'"
    hostops.log(ctx, 0, "x" * hostops.MAX_LOG_MESSAGE)  # exactly the limit
    too_long = _fails(errno.E2BIG, lambda: hostops.log(ctx, 0, "x" * (65536 + 1)))
    assert str(too_long) == "a log message is at most 65536 bytes"
    assert logged == [("TRACE", "x" * 65536)]


def test_a_host_error_without_a_message_is_named_by_its_errno() -> None:
    assert str(HostError(errno.EAGAIN)) == "EAGAIN"
    assert str(HostError(99999)) == "99999"
    assert str(HostError(errno.EAGAIN, "later")) == "later"
    error = HostError(errno.ENOSPC, needed=12)
    assert (error.errno, error.needed) == (errno.ENOSPC, 12)
    assert HostError(errno.EIO).needed is None


# -- services a node may not offer ----------------------------------------------------


async def test_a_node_without_a_service_says_enosys() -> None:
    bare = _context(NodeServices())
    error = await _afails(errno.ENOSYS, hostops.obj_get(bare, "k"))
    assert str(error) == "this node has no object store"
    error = _fails(errno.ENOSYS, lambda: hostops.stream_caller(bare))
    assert str(error) == "this node has no streams"
    # poll without streams still looks at (and times out on) what it is given.
    assert hostops.poll(bare, [(5, POLLIN)], 0) == [POLLNVAL]
    assert await hostops.poll_async(bare, [(5, POLLIN)], 0) == [POLLNVAL]


# -- objects --------------------------------------------------------------------------


async def test_object_operations_keep_their_errnos(ctx: TaskContext) -> None:
    version = await hostops.obj_put(ctx, "k", b"x" * 1000)  # exactly the maximum
    error = await _afails(errno.EFBIG, hostops.obj_put(ctx, "big", b"x" * 1001))
    assert str(error) == "an object is at most 1000 bytes"
    value, got = await hostops.obj_get(ctx, "k", capacity=1000)
    assert (bytes(value), got) == (b"x" * 1000, version)
    error = await _afails(errno.ENOSPC, hostops.obj_get(ctx, "k", capacity=999))
    assert error.needed == 1000
    await _afails(errno.ENOENT, hostops.obj_info(ctx, "missing"))
    await _afails(errno.ENOENT, hostops.obj_delete(ctx, "missing"))
    await _afails(errno.ENOENT, hostops.obj_add_ref(ctx, "missing"))
    await _afails(errno.ENOENT, hostops.obj_remove_ref(ctx, "missing"))
    await _afails(errno.ENOENT, hostops.obj_pin(ctx, "missing"))
    await _afails(errno.ENOENT, hostops.obj_unpin(ctx, "missing"))
    await _afails(errno.ESTALE, hostops.obj_delete(ctx, "k", version + 1))
    assert (await hostops.obj_info(ctx, "k")).version == version


async def test_a_referenced_object_is_busy_until_the_reference_goes(ctx: TaskContext) -> None:
    await hostops.obj_put(ctx, "k", b"v")
    await hostops.obj_put(ctx, "keep", b"v")
    assert await hostops.obj_add_ref(ctx, "k") == 1
    assert await hostops.obj_add_ref(ctx, "k") == 2
    error = await _afails(errno.EBUSY, hostops.obj_delete(ctx, "k"))
    assert str(error) == "object 'k' is pinned or referenced"
    assert await hostops.obj_remove_ref(ctx, "k") == 1
    await _afails(errno.EBUSY, hostops.obj_delete(ctx, "k"))
    await hostops.obj_pin(ctx, "keep")
    assert (await hostops.obj_info(ctx, "keep")).pinned is True
    await _afails(errno.EBUSY, hostops.obj_delete(ctx, "keep"))
    await hostops.obj_unpin(ctx, "keep")
    await hostops.obj_delete(ctx, "keep")
    assert await hostops.obj_remove_ref(ctx, "k") == 0  # the last: an unpinned one goes
    assert [i.key for i in await hostops.obj_list(ctx)] == []


async def test_a_result_is_the_tasks_result_object(ctx: TaskContext) -> None:
    version = await hostops.result_set(ctx, b"answer")
    infos = await hostops.obj_list(ctx, "")
    assert [(i.version, i.size) for i in infos] == [(version, 6)]
    value, _ = await hostops.obj_get(ctx, infos[0].key)
    assert bytes(value) == b"answer" and "t1" in infos[0].key


# -- handles and streams --------------------------------------------------------------


class Closable:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_handles_are_the_smallest_free_numbers_from_one(ctx: TaskContext) -> None:
    a, b, c = (hostops.add_handle(ctx, Closable()) for _ in range(3))
    assert (a, b, c) == (1, 2, 3)
    hostops.close(ctx, 2)
    assert hostops.add_handle(ctx, object()) == 2
    assert hostops.add_handle(ctx, object()) == 4


def test_closing_a_handle_closes_what_it_holds_once(ctx: TaskContext) -> None:
    work = Closable()
    handle = hostops.add_handle(ctx, work)
    hostops.close(ctx, handle)
    assert work.closed == 1 and handle not in ctx.handles
    assert str(_fails(errno.EBADF, lambda: hostops.close(ctx, handle))) == "no open handle 1"
    plain = hostops.add_handle(ctx, object())  # nothing to close: just forgotten
    hostops.close(ctx, plain)
    assert plain not in ctx.handles


def test_a_handle_that_is_not_a_stream_is_ebadf_for_stream_calls(ctx: TaskContext) -> None:
    handle = hostops.add_handle(ctx, Closable())
    for call in (
        lambda: hostops.stream_read(ctx, handle),
        lambda: hostops.stream_write(ctx, handle, b"x"),
    ):
        assert str(_fails(errno.EBADF, call)) == f"handle {handle} is not a stream"
    assert str(_fails(errno.EBADF, lambda: hostops.stream_read(ctx, 42))) == "no open handle 42"


def test_the_caller_stream_is_one_handle_and_closing_it_ends_both_ways(
    ctx: TaskContext,
) -> None:
    registry: StreamRegistry = ctx.services.streams  # type: ignore[assignment]
    streams = registry.attach(ctx.task.id)
    other = hostops.add_handle(ctx, Closable())
    h = hostops.stream_caller(ctx)
    assert h == other + 1 and hostops.stream_caller(ctx) == h
    assert streams.inbound.offer(b"in")
    assert hostops.stream_write(ctx, h, memoryview(b"out")) == 3
    assert hostops.stream_read(ctx, h) == b"in"
    hostops.close(ctx, h)
    assert h not in ctx.handles
    # The caller reads what was sent, then the end; its further input is refused.
    assert streams.outbound.take(None) == b"out"
    with pytest.raises(StreamEnded, match="end of stream"):
        streams.outbound.take(None)
    with pytest.raises(StreamEnded, match="the stream is closed"):
        streams.inbound.offer(b"late")
    # A new caller handle on the same streams: the input ended, nobody reads output.
    h2 = hostops.stream_caller(ctx)
    assert str(_fails(errno.EPIPE, lambda: hostops.stream_write(ctx, h2, b"x"))) == (
        "nobody reads this task's output"
    )


def test_stream_errnos_and_messages(ctx: TaskContext) -> None:
    registry: StreamRegistry = ctx.services.streams  # type: ignore[assignment]
    streams = registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    assert str(_fails(errno.EAGAIN, lambda: hostops.stream_read(ctx, h))) == "no message yet"
    streams.inbound.offer(b"12345")
    error = _fails(errno.ENOSPC, lambda: hostops.stream_read(ctx, h, 4))
    assert (str(error), error.needed) == ("buffer too small", 5)
    assert hostops.stream_read(ctx, h, 5) == b"12345"
    assert hostops.stream_write(ctx, h, b"x" * 64) == 64  # exactly the maximum
    hostops.stream_write(ctx, h, b"")
    error = _fails(errno.EAGAIN, lambda: hostops.stream_write(ctx, h, b"y"))
    assert str(error) == "the caller's queue is full"
    streams.inbound.close_writer()
    error = _fails(errno.EPIPE, lambda: hostops.stream_read(ctx, h))
    assert str(error) == "the caller's input has ended"


# -- poll -----------------------------------------------------------------------------


def test_poll_reports_what_was_asked_and_always_errors(ctx: TaskContext) -> None:
    registry: StreamRegistry = ctx.services.streams  # type: ignore[assignment]
    streams = registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    plain = hostops.add_handle(ctx, object())  # open, but nothing to poll
    assert hostops.poll(ctx, [(h, POLLOUT)], 0) == [POLLOUT]
    assert hostops.poll(ctx, [(h, POLLIN)], 0) == [0]
    streams.inbound.offer(b"m")
    assert hostops.poll(ctx, [(h, POLLIN | POLLOUT), (plain, POLLIN)], 0) == [
        POLLIN | POLLOUT,
        POLLNVAL,
    ]
    assert hostops.poll(ctx, [(h, POLLIN)], None) == [POLLIN]
    hostops.stream_read(ctx, h)
    streams.inbound.close_writer()  # hang-up is reported even when not asked for
    got = hostops.poll(ctx, [(h, POLLOUT)], 0)
    assert got[0] & POLLOUT and got[0] & ~POLLOUT & ~(POLLERR | POLLHUP) == 0
    assert got[0] & (POLLERR | POLLHUP)


def test_a_poll_that_times_out_returns_nothing_ready(ctx: TaskContext) -> None:
    registry: StreamRegistry = ctx.services.streams  # type: ignore[assignment]
    registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    start = time.monotonic()
    assert hostops.poll(ctx, [(h, POLLIN)], 0.05) == [0]
    assert time.monotonic() - start >= 0.05
    error = _fails(errno.EINVAL, lambda: hostops.poll(ctx, [(h, POLLIN)], -0.001))
    assert str(error) == "timeout must not be negative"


async def test_an_async_poll_that_times_out_returns_nothing_ready(ctx: TaskContext) -> None:
    registry: StreamRegistry = ctx.services.streams  # type: ignore[assignment]
    registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    start = time.monotonic()
    assert await hostops.poll_async(ctx, [(h, POLLIN)], 0.05) == [0]
    assert time.monotonic() - start >= 0.05
    await _afails(errno.EINVAL, hostops.poll_async(ctx, [(h, POLLIN)], -0.001))


async def test_a_wait_past_the_tasks_deadline_is_ecanceled(tmp_path: Path) -> None:
    registry = StreamRegistry(2, 64)
    ctx = _context(NodeServices(streams=registry), deadline=time.monotonic() + 0.05)
    registry.attach(ctx.task.id)
    h = hostops.stream_caller(ctx)
    start = time.monotonic()
    error = _fails(errno.ECANCELED, lambda: hostops.poll(ctx, [(h, POLLIN)], None))
    assert str(error) == "the task ran out of time"
    assert time.monotonic() - start < 30
    error = await _afails(errno.ECANCELED, hostops.poll_async(ctx, [(h, POLLIN)], 3600))
    assert str(error) == "the task ran out of time"
    # Past the deadline, a poll that just looks still answers.
    assert hostops.poll(ctx, [(h, POLLOUT)], 0) == [POLLOUT]
    _fails(errno.ECANCELED, lambda: hostops.sleep(ctx, 1))
    await _afails(errno.ECANCELED, hostops.sleep_async(ctx, 1))


async def test_a_sleep_shorter_than_the_deadline_is_slept_whole() -> None:
    ctx = _context(NodeServices(), deadline=time.monotonic() + 3600)
    start = time.monotonic()
    hostops.sleep(ctx, 0.05)
    await hostops.sleep_async(ctx, 0.05)
    assert time.monotonic() - start >= 0.1
    for seconds in (0.0, 0.001):
        hostops.sleep(ctx, seconds)
        await hostops.sleep_async(ctx, seconds)
    error = await _afails(errno.EINVAL, hostops.sleep_async(ctx, -0.001))
    assert str(error) == "cannot sleep a negative time"


async def test_a_sleep_cut_by_the_deadline_ends_there() -> None:
    ctx = _context(NodeServices(), deadline=time.monotonic() + 0.1)
    start = time.monotonic()
    error = await _afails(errno.ECANCELED, hostops.sleep_async(ctx, 3600))
    assert str(error) == "the task is being stopped"
    assert 0.05 <= time.monotonic() - start < 30
    ctx = _context(NodeServices(), deadline=time.monotonic() + 0.1)
    start = time.monotonic()
    _fails(errno.ECANCELED, lambda: hostops.sleep(ctx, 3600))
    assert 0.05 <= time.monotonic() - start < 30


async def test_a_cancelled_task_does_not_sleep_at_all() -> None:
    ctx = _context(NodeServices())
    ctx.control.cancel()
    start = time.monotonic()
    await _afails(errno.ECANCELED, hostops.sleep_async(ctx, 3600))
    _fails(errno.ECANCELED, lambda: hostops.sleep(ctx, 3600))
    assert time.monotonic() - start < 30


def test_clocks(ctx: TaskContext) -> None:
    before = time.time_ns()
    real = hostops.now(ctx)
    assert before <= real <= time.time_ns()
    mono = hostops.now(ctx, 1)
    assert time.monotonic_ns() >= mono >= mono - 1
    assert abs(mono - time.monotonic_ns()) < 10**10
    assert str(_fails(errno.EINVAL, lambda: hostops.now(ctx, 2))) == (
        "clock must be 0 (realtime) or 1 (monotonic)"
    )


def test_a_spear_error_reaches_the_agent_as_its_errno_with_its_message() -> None:
    from spear.errors import Conflict, InvalidArgument, NotFound, ResourceExhausted, SpearError

    cases = [
        (NotFound("no such object 'k'"), errno.ENOENT),
        (Conflict("k is at version 3"), errno.ESTALE),
        (ResourceExhausted("the store is full"), errno.EDQUOT),
        (InvalidArgument("bad key"), errno.EINVAL),
        (SpearError("the store failed"), errno.EIO),  # anything else
    ]
    for exc, err in cases:
        got = hostops.translate(exc)
        assert (got.errno, str(got), got.needed) == (err, str(exc), None)
    # A hostcall family's own table is looked at first.
    got = hostops.translate(NotFound("gone"), ((NotFound, errno.EPIPE),))
    assert (got.errno, str(got)) == (errno.EPIPE, "gone")
