"""A warm task's end seen on the event loop (runtimes/process/loop_watch.py), with real
fork-server children: the same outcomes and output as the supervising thread's, and the
thread taking over whatever the loop does not finish (long tasks, big output, deadlines,
pipes held open after the end)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from spear import FunctionSpec, Runtime, TaskState
from spear.runtimes.process import loop_watch
from tests.conftest import assert_eventually
from tests.runtimes.test_process import agent_of, alive, new_node, no_children_left, script

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

__all__ = ["no_children_left"]  # (the autouse fixture: nothing a task started is left)


def warm(path: str, **kw: object) -> FunctionSpec:
    return FunctionSpec(path, runtime=Runtime.PROCESS, warm=True, **kw)  # type: ignore[arg-type]


SHORT = """
import sys
print("out", sys.argv[1:])
print("err", file=sys.stderr)
sys.exit(3)
"""


async def test_a_short_warm_task_ends_on_the_loop_as_on_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_py = script(tmp_path, SHORT)
    spec = FunctionSpec(agent_py, runtime=Runtime.PROCESS, warm=True, args=("a",))
    async with new_node(tmp_path) as node:
        seen = []
        for window in (loop_watch.LOOP_WINDOW_S, 0.0):  # the loop, then the thread
            monkeypatch.setattr(loop_watch, "LOOP_WINDOW_S", window)
            before = agent_of(node).ends_on_loop
            for _ in range(5):  # (one may miss the window on a busy machine)
                task = await node.run(spec)
                out = (await node.logs_of(task.id), await node.logs_of(task.id, "stderr"))
                seen.append((task.state, task.exit_code, task.reason, *out))
            on_loop = agent_of(node).ends_on_loop - before
            assert on_loop > 0 if window else on_loop == 0
        assert set(seen) == {(TaskState.FAILED, 3, "exit status 3", b"out ['a']\n", b"err\n")}


async def test_output_beyond_a_pipes_capacity_is_all_kept(tmp_path: Path) -> None:
    """The child blocks on a full pipe until the thread that takes over reads it."""
    big = script(tmp_path, "import sys\nsys.stdout.write('x' * 300_000)\nprint('end')\n")
    async with new_node(tmp_path) as node:
        task = await node.run(warm(big))
        assert task.state is TaskState.COMPLETED
        assert await node.logs_of(task.id) == b"x" * 300_000 + b"end\n"


async def test_a_deadline_inside_the_window_still_times_the_task_out(tmp_path: Path) -> None:
    sleeper = script(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    async with new_node(tmp_path) as node:
        t0 = time.monotonic()
        task = await node.run(warm(sleeper, timeout_s=0.02))
        assert (task.state, task.reason) == (TaskState.FAILED, "timeout")
        assert time.monotonic() - t0 < 30  # not the script's minute


async def test_a_cancel_reaches_a_warm_task_watched_on_the_loop(tmp_path: Path) -> None:
    sleeper = script(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    async with new_node(tmp_path) as node:
        for _ in range(3):  # cancelled at once, inside the window, or later: always CANCELLED
            task = await node.submit(warm(sleeper))
            await node.cancel(task.id)
            with anyio.fail_after(30):
                ended = await node.wait(task.id)
            assert ended.state is TaskState.CANCELLED


async def test_what_a_short_warm_task_leaves_holding_its_output_is_killed(
    tmp_path: Path,
) -> None:
    """The end is seen on the loop but a pipe is still open: the thread reads on, and the
    process the task left in its group is killed."""
    leaver = script(
        tmp_path,
        """
        import subprocess
        p = subprocess.Popen(["sleep", "60"])  # holds stdout and stderr
        print(p.pid, flush=True)
        """,
    )
    async with new_node(tmp_path) as node:
        t0 = time.monotonic()
        task = await node.run(warm(leaver))
        assert task.state is TaskState.COMPLETED
        assert time.monotonic() - t0 < 30
        left = int((await node.logs_of(task.id)).split()[0])
        assert_eventually(lambda: not alive(left), timeout=5)  # (its files closed: exiting)
