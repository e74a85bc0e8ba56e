"""Reused warm workers (`FunctionSpec.reuse`, runtimes/process/reuse.py) with real
processes: one process serves several tasks of a function, never another function's,
and a task that fails, times out, is cancelled or leaves something behind ends it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from spear import FunctionSpec, InvalidArgument, Runtime, TaskState
from spear.transport._convert import spec_from_wire, spec_to_wire
from tests.runtimes.test_process import (
    agent_of,
    alive,
    eventually,
    first_line,
    new_node,
    no_children_left,  # noqa: F401 - autouse: nothing a task started outlives it
    script,
)

if TYPE_CHECKING:
    from pathlib import Path

    from spear import LocalNode
    from spear.core.models import Task

# Prints its pid, how many tasks this process ran (a `__main__` global and an imported
# module's counter), its arguments, its input; exits with its first argument.
COUNTER = """
import os, sys
import counted
counted.n += 1
runs = globals().get("runs", 0) + 1
print(os.getpid(), runs, counted.n, sys.argv[1:], sys.stdin.read().strip())
print("err", runs, file=sys.stderr)
sys.exit(int(sys.argv[1]) if sys.argv[1:] else 0)
"""


def reused(path: str, *args: str, **kw: object) -> FunctionSpec:
    return FunctionSpec(
        path,
        runtime=Runtime.PROCESS,
        args=args,
        warm=True,
        reuse=True,
        **kw,  # type: ignore[arg-type]
    )


def counter(tmp_path: Path, name: str = "agent.py") -> str:
    (tmp_path / "counted.py").write_text("n = 0\n")
    return script(tmp_path, COUNTER, name)


async def pid_of(node: LocalNode, task: Task) -> int:
    assert task.state is TaskState.COMPLETED, task.reason
    return int((await node.logs_of(task.id)).split()[0])


async def test_one_process_serves_the_tasks_of_a_function(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        spec = counter(tmp_path)
        outs = []
        for i in range(3):
            task = await node.run(reused(spec, "0", f"arg{i}"), stdin=f"input{i}\n".encode())
            assert (task.state, task.exit_code) == (TaskState.COMPLETED, 0)
            outs.append(await node.logs_of(task.id))
            assert await node.logs_of(task.id, "stderr") == f"err {i + 1}\n".encode()
        pid = int(outs[0].split()[0])
        assert outs == [
            f"{pid} {i + 1} {i + 1} ['0', 'arg{i}'] input{i}\n".encode() for i in range(3)
        ]
        agent = agent_of(node)
        assert (agent.workers.reused, len(agent.workers)) == (2, 1)
        assert alive(pid)
    await eventually(lambda: not alive(pid))  # the node's end ends its kept workers


async def test_the_default_is_still_a_process_per_task(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        path = counter(tmp_path)
        keeper = await pid_of(node, await node.run(reused(path)))
        warm = FunctionSpec(path, runtime=Runtime.PROCESS, warm=True)
        pids = [await pid_of(node, await node.run(warm)) for _ in range(3)]
        assert len(set(pids)) == 3 and keeper not in pids
        # each ran its script once, in a process of its own
        outs = [await node.logs_of(t.id) for t in await node.tasks()]
        assert [out.split()[1:3] for out in outs] == [[b"1", b"1"]] * 4
        await eventually(lambda: not any(alive(p) for p in pids))
        assert alive(keeper)
        assert agent_of(node).workers.reused == 0


async def test_functions_never_share_a_worker(tmp_path: Path) -> None:
    """A different script, namespace, environment or limit is another function."""
    async with new_node(tmp_path) as node:
        path = counter(tmp_path)
        other = script(tmp_path, COUNTER, "other.py")
        specs = [
            reused(path),
            reused(other),
            reused(path, namespace="team-b"),
            reused(path, env=(("MODE", "x"),)),
            reused(path, memory_limit_bytes=1 << 30),
        ]
        first = [await pid_of(node, await node.run(s)) for s in specs]
        again = [await pid_of(node, await node.run(s)) for s in specs]
        assert len(set(first)) == len(specs)
        assert again == first  # each function's own worker took its second task
        assert agent_of(node).workers.reused == len(specs)


async def test_a_failed_task_ends_its_worker_and_the_next_task_runs(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        path = counter(tmp_path)
        pid = await pid_of(node, await node.run(reused(path)))
        failed = await node.run(reused(path, "3"))
        assert (failed.state, failed.exit_code, failed.reason) == (
            TaskState.FAILED,
            3,
            "exit status 3",
        )
        assert int((await node.logs_of(failed.id)).split()[0]) == pid  # it ran there
        await eventually(lambda: not alive(pid))
        nxt = await node.run(reused(path))
        assert await pid_of(node, nxt) != pid
        assert (await node.logs_of(nxt.id)).split()[1:3] == [b"1", b"1"]  # a fresh process


async def test_crashed_and_timed_out_workers_are_replaced(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        agent_py = script(
            tmp_path,
            """
            import os, signal, sys, time
            print(os.getpid(), flush=True)
            if sys.argv[1:] == ["crash"]:
                os.kill(os.getpid(), signal.SIGKILL)
            if sys.argv[1:] == ["exit"]:
                os._exit(0)
            if sys.argv[1:] == ["hang"]:
                time.sleep(60)
            """,
        )
        pid = await pid_of(node, await node.run(reused(agent_py)))
        crashed = await node.run(reused(agent_py, "crash"))
        assert crashed.reason == "killed by signal SIGKILL"
        pid2 = await pid_of(node, await node.run(reused(agent_py)))
        assert pid2 != pid and not alive(pid)
        # os._exit: the process is gone (reported by the fork server), even with exit 0
        quit_ = await node.run(reused(agent_py, "exit"))
        assert quit_.state is TaskState.COMPLETED
        pid3 = await pid_of(node, await node.run(reused(agent_py)))
        assert pid3 != pid2
        timed_out = await node.run(reused(agent_py, "hang", timeout_s=0.5))
        assert (timed_out.state, timed_out.reason) == (TaskState.FAILED, "timeout")
        await eventually(lambda: not alive(pid3))
        pid4 = await pid_of(node, await node.run(reused(agent_py)))
        assert pid4 not in (pid, pid2, pid3)


async def test_a_cancelled_task_ends_its_worker(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        agent_py = script(
            tmp_path,
            "import os, sys, time\nprint(os.getpid(), flush=True)\n"
            "if sys.argv[1:]:\n    time.sleep(60)\n",
        )
        pid = await pid_of(node, await node.run(reused(agent_py)))
        task = await node.submit(reused(agent_py, "wait"))
        assert int(await first_line(node, task.id)) == pid
        cancelled = await node.cancel(task.id)
        assert cancelled.state is TaskState.CANCELLED
        await eventually(lambda: not alive(pid))
        assert await pid_of(node, await node.run(reused(agent_py))) != pid


async def test_a_task_that_leaves_a_process_or_thread_ends_its_worker(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        agent_py = script(
            tmp_path,
            """
            import os, subprocess, sys, threading, time
            print(os.getpid(), flush=True)
            if sys.argv[1:] == ["child"]:  # orphaned: its parent exits at once
                p = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE)
                print(p.stdout.readline().decode().strip(), flush=True)
                p.wait()
            if sys.argv[1:] == ["thread"]:
                threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
            """,
        )
        for leaves in ("child", "thread"):
            pid = await pid_of(node, await node.run(reused(agent_py)))
            task = await node.run(reused(agent_py, leaves))
            assert task.state is TaskState.COMPLETED
            lines = (await node.logs_of(task.id)).split()
            assert int(lines[0]) == pid
            await eventually(lambda: not alive(pid))  # noqa: B023
            if leaves == "child":
                left = int(lines[1])
                await eventually(lambda: not alive(left))  # noqa: B023
            assert await pid_of(node, await node.run(reused(agent_py))) != pid


async def test_each_task_gets_its_own_directory_environment_and_credential(
    tmp_path: Path,
) -> None:
    """What a task changes in its process's cwd and environment is reset for the next;
    the SDK's shared connection is the task's own (a new credential each time)."""
    async with new_node(tmp_path) as node:
        agent_py = script(
            tmp_path,
            """
            import os
            from spear import agent
            print(os.getpid(), os.getcwd(), os.environ.get("LEFT"), agent.task_id(), flush=True)
            agent.put("k-" + agent.task_id(), b"v")
            agent.log("logged")
            os.chdir("/")
            os.environ["LEFT"] = "behind"
            """,
        )
        spec = reused(agent_py, workdir=str(tmp_path))
        tasks = [await node.run(spec) for _ in range(3)]
        lines = [(await node.logs_of(t.id)).decode().split() for t in tasks]
        assert len({line[0] for line in lines}) == 1
        for task, line in zip(tasks, lines, strict=True):
            assert line[1:] == [str(tmp_path), "None", task.id]
            assert bytes((await node.objects.get(f"k-{task.id}"))[0]) == b"v"
        assert agent_of(node).workers.reused == 2


async def test_idle_workers_are_bounded(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        agent_of(node).workers.limit = 1
        path = counter(tmp_path)
        other = script(tmp_path, COUNTER, "other.py")
        first = await pid_of(node, await node.run(reused(path)))
        await pid_of(node, await node.run(reused(other)))  # pushes the first out
        await eventually(lambda: not alive(first))
        assert len(agent_of(node).workers) == 1


async def test_an_idle_worker_is_ended(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        agent = agent_of(node)
        agent.warm_idle_s = 0.3
        pid = await pid_of(node, await node.run(reused(counter(tmp_path))))
        await eventually(lambda: not alive(pid))
        assert len(agent.workers) == 0


async def test_concurrent_tasks_of_one_function_each_get_a_worker(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        path = counter(tmp_path)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(node.run, reused(path))
        assert 1 <= len(agent_of(node).workers) <= 4
        tasks = await node.tasks()
        assert [t.state for t in tasks] == [TaskState.COMPLETED] * 4
        pids = {await pid_of(node, t) for t in tasks}
        assert len(pids) == len(agent_of(node).workers)  # each kept, none twice


def test_reuse_is_validated_and_carried() -> None:
    with pytest.raises(InvalidArgument, match="reuse needs a warm process agent"):
        FunctionSpec("a.py", runtime=Runtime.PROCESS, reuse=True)
    with pytest.raises(InvalidArgument, match="reuse needs a warm process agent"):
        FunctionSpec("a.wasm", warm=True, reuse=True)
    spec = FunctionSpec("a.py", runtime=Runtime.PROCESS, warm=True, reuse=True)
    assert FunctionSpec.from_json(spec.to_json()) == spec
    assert spec_from_wire(spec_to_wire(spec)) == spec
    assert FunctionSpec.from_json({"artifact": "a.py"}).reuse is False


def test_spear_run_reuse_keeps_the_daemons_worker(tmp_path: Path) -> None:
    """Through a serving daemon (the spec over gRPC), two `spear run --reuse` commands
    are served by one process; `--warm` alone still forks one per task."""
    from tests.conftest import Cli, one_error_line
    from tests.test_cli_client import Daemon

    data_dir = tmp_path / "data"
    cli = Cli(data_dir)
    agent_py = counter(tmp_path)
    bad = cli("run", "--reuse", "--runtime", "wasm", agent_py)
    assert bad.returncode == 64
    assert "reuse needs a warm process agent" in one_error_line(bad.stderr)
    daemon = Daemon(data_dir)
    try:
        runs = [cli("run", "--reuse", agent_py, "--", "0", str(i)) for i in range(2)]
        assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
        first, second = (r.stdout.decode().split() for r in runs)
        assert first[0] == second[0] and (first[1], second[1]) == ("1", "2")
        submitted = cli("submit", "--reuse", "--wait", agent_py, "--", "0", "2")
        assert submitted.returncode == 0, submitted.stderr
        task_id = submitted.stdout.decode().split()[0]
        third = cli("result", task_id)
        assert third.stdout.decode().split()[:2] == [first[0], "3"]  # (the same worker)
        warm = cli("run", "--warm", agent_py)
        assert warm.returncode == 0
        assert warm.stdout.decode().split()[:2] != [first[0], "4"]
        assert warm.stdout.decode().split()[1] == "1"
    finally:
        assert daemon.stop() == 0
    assert not alive(int(first[0]))
