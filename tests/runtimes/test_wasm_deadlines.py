"""The wasm runtime stops a guest that never ends: at its deadline (timeout, exit 124) or
when cancelled (exit 130), within a bounded time, on a worker thread and inline.

Only the runtime can stop a guest spinning in wasm code (epoch interruption: see
runtimes/wasm/agent.py), so a deadline it forgets to check would hang the task: each
test bounds its own wait, and fails in seconds rather than at pytest's timeout.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
from conftest import build_wat

from spear import FunctionSpec, LocalNode, TaskState
from spear.core.worker import EXIT_CANCELLED, EXIT_TIMEOUT

if TYPE_CHECKING:
    from pathlib import Path

# A guest stopped later than this after its deadline or cancel fails the test. The
# runtime checks every few milliseconds; the margin is for a machine busy with others.
BOUND_S = 5.0

# Spins in wasm code forever, calling nothing (no hostcall that could notice a cancel).
SPIN = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'

# Ends at once without arguments; spins forever with any argument. It imports nothing
# that could block, so once its short runs proved it short it runs inline.
SPIN_WITH_ARGS = """(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $argsz (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $argsz (i32.const 0) (i32.const 4)))
    (if (i32.gt_u (i32.load (i32.const 0)) (i32.const 1))
      (then (loop $l (br $l))))))"""


def _stats(node: LocalNode) -> dict[str, int]:
    agent: Any = node.agents["wasm"]
    stats: dict[str, int] = agent.run_stats
    return dict(stats)


async def test_a_spinning_guest_times_out_on_its_thread(tmp_path: Path) -> None:
    module = build_wat(SPIN, tmp_path, "spin")
    async with LocalNode(tmp_path / "home") as node:
        started = time.monotonic()
        with anyio.fail_after(0.3 + BOUND_S):
            task = await node.run(FunctionSpec(str(module), timeout_s=0.3))
        elapsed = time.monotonic() - started
        assert (task.state, task.reason, task.exit_code) == (
            TaskState.FAILED,
            "timeout",
            EXIT_TIMEOUT,
        )
        assert elapsed >= 0.3, elapsed  # not before its deadline
        assert _stats(node)["thread"] == 1 and _stats(node)["inline"] == 0
        # The node goes on: the thread it ran on is free for the next task.
        again = await node.run(FunctionSpec(str(module), timeout_s=0.05))
        assert again.reason == "timeout"


async def test_a_spinning_guest_is_cancelled_on_its_thread(tmp_path: Path) -> None:
    module = build_wat(SPIN, tmp_path, "spin")
    async with LocalNode(tmp_path / "home") as node:
        # A deadline far off, only so that a cancel that never stops it fails this test by
        # its assertions (a guest nothing stops would hang the node's shutdown instead).
        task = await node.submit(FunctionSpec(str(module), timeout_s=3 * BOUND_S))
        with anyio.fail_after(BOUND_S):
            while (await node.task(task.id)).state is not TaskState.RUNNING:
                await anyio.sleep(0.01)
        # Not a wait for a condition: a moment of spinning, so that the cancel reaches it
        # in wasm code rather than before its first instruction.
        await anyio.sleep(0.1)
        started = time.monotonic()
        await node.cancel(task.id, "enough")
        final = await node.wait(task.id)
        assert time.monotonic() - started < BOUND_S
        assert (final.state, final.reason, final.exit_code) == (
            TaskState.CANCELLED,
            "enough",
            EXIT_CANCELLED,
        )
        assert _stats(node)["thread"] == 1


async def test_a_guest_spinning_inline_times_out_there(tmp_path: Path) -> None:
    """Inline, the event loop itself runs the guest: the deadline must stop it there.

    (A cancel cannot reach a guest running inline: the loop that would deliver it is
    busy running the guest, and a task cancelled before it starts never runs inline.)
    """
    module = build_wat(SPIN_WITH_ARGS, tmp_path, "spin_args")
    async with LocalNode(tmp_path / "home") as node:
        # On a busy machine a quick run may count as long and send the next one to a
        # thread: try until one spinning run started inline (each try is milliseconds).
        for _ in range(50):
            for _ in range(300):  # quick runs until its runs go inline
                before = _stats(node)
                assert (await node.run(FunctionSpec(str(module)))).state is TaskState.COMPLETED
                if _stats(node)["inline"] > before["inline"]:
                    break
            before = _stats(node)
            with anyio.fail_after(BOUND_S):
                task = await node.run(FunctionSpec(str(module), args=("spin",), timeout_s=0.001))
            assert (task.state, task.reason, task.exit_code) == (
                TaskState.FAILED,
                "timeout",
                EXIT_TIMEOUT,
            )
            if _stats(node)["inline"] > before["inline"]:
                break
        after = _stats(node)
        # It ran inline and timed out there: not moved to a thread to time out later.
        assert after["inline"] == before["inline"] + 1, (before, after)
        assert after["moved"] == before["moved"] and after["thread"] == before["thread"]


# Sleeps an hour through the `sleep` hostcall, then exits 3 at once: nothing in between
# runs wasm code the epoch check could stop, so the exit itself tells how it ended.
SLEEP_THEN_EXIT = """(module
  (import "spear" "sleep" (func $sleep (param i64) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $sleep (i64.const 3600000000000)))
    (call $exit (i32.const 3))))"""


async def test_a_guest_that_exits_because_it_was_cancelled_is_cancelled(tmp_path: Path) -> None:
    """A cancel ends the guest's hostcall (ECANCELED) and the guest exits non-zero before
    the runtime's epoch check stops it: the task was cancelled, it did not fail."""
    module = build_wat(SLEEP_THEN_EXIT, tmp_path, "sleep_exit")
    async with LocalNode(tmp_path / "home") as node:
        task = await node.submit(FunctionSpec(str(module)))
        with anyio.fail_after(BOUND_S):
            while (await node.task(task.id)).state is not TaskState.RUNNING:
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)  # (into its sleep)
        with anyio.fail_after(BOUND_S):
            final = await node.cancel(task.id, "enough")
        assert (final.state, final.reason, final.exit_code) == (
            TaskState.CANCELLED,
            "enough",
            EXIT_CANCELLED,
        )


async def test_a_guest_that_exits_because_its_deadline_passed_timed_out(tmp_path: Path) -> None:
    module = build_wat(SLEEP_THEN_EXIT, tmp_path, "sleep_exit")
    async with LocalNode(tmp_path / "home") as node:
        with anyio.fail_after(BOUND_S):
            task = await node.run(FunctionSpec(str(module), timeout_s=0.2))
        assert (task.state, task.reason, task.exit_code) == (
            TaskState.FAILED,
            "timeout",
            EXIT_TIMEOUT,
        )


async def test_a_guest_still_spinning_when_its_node_closes_is_stopped(tmp_path: Path) -> None:
    """Without a timeout and never cancelled, a spinning guest is stopped by the node's
    close: once the node's epoch ticker stops, nothing else could interrupt it, and its
    thread would spin for the life of the process."""
    import threading

    module = build_wat(SPIN, tmp_path, "spin")
    before = set(threading.enumerate())
    async with LocalNode(tmp_path / "home") as node:
        task = await node.submit(FunctionSpec(str(module)))
        with anyio.fail_after(BOUND_S):
            while (await node.task(task.id)).state is not TaskState.RUNNING:
                await anyio.sleep(0.01)
    guests = [t for t in set(threading.enumerate()) - before if t.name == "spear-wasm"]
    for thread in guests:
        thread.join(BOUND_S)
    assert not [t for t in guests if t.is_alive()], "a guest's thread outlived its node"
