"""The process runtime with real child processes: exit codes, signals, process groups,
limits, logs, warm workers, and what is left behind (counted in /proc)."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from spear import (
    FunctionSpec,
    InvalidArgument,
    InvalidModule,
    LocalNode,
    NotFound,
    Runtime,
    TaskState,
)
from spear.runtimes.process.agent import ProcessWorkerAgent
from tests.conftest import Cli, assert_eventually, one_error_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def proc(*argv: str, **kw: object) -> FunctionSpec:
    return FunctionSpec(argv[0], runtime=Runtime.PROCESS, args=argv[1:], **kw)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # (gone between the open and the read)
        return False


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            out.append((int(entry), fields[0]))
    return out


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    """Every test leaves this process with the children it had before it (none of them a
    zombie): nothing a task started outlives it."""
    from spear.runtimes.process.cgroups import _own_cgroup_dir

    parent = _own_cgroup_dir()
    pattern = f"spear-{os.getpid()}-*"
    before = {pid for pid, _ in children_of(os.getpid())}
    cgroups_before = set(parent.glob(pattern)) if parent is not None else set()
    yield
    after = children_of(os.getpid())
    assert [c for c in after if c[0] not in before or c[1] == "Z"] == []
    if parent is not None:  # and no node left its cgroup behind
        assert set(parent.glob(pattern)) - cgroups_before == set()


def new_node(tmp_path: Path) -> LocalNode:
    return LocalNode(tmp_path / "home", process_kill_grace_s=0.3)


def agent_of(node: LocalNode) -> ProcessWorkerAgent:
    agent = node.agents["process"]
    agent = getattr(agent, "agent", agent)  # (made on first use: runtimes/deferred.py)
    assert isinstance(agent, ProcessWorkerAgent)
    return agent


def script(tmp_path: Path, text: str, name: str = "agent.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


async def first_line(node: LocalNode, task_id: str) -> str:
    """Poll the task's stdout log until it has a whole first line."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = await node.logs_of(task_id)
        if b"\n" in out:
            return out.split(b"\n", 1)[0].decode()
        await anyio.sleep(0.02)
    raise AssertionError("the task printed nothing")


# -- exit, signals, output ------------------------------------------------------------


async def test_exit_codes_and_signals_end_the_task(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        ok = await node.run(proc("true"))
        assert (ok.state, ok.exit_code, ok.reason) == (TaskState.COMPLETED, 0, None)
        failed = await node.run(proc("sh", "-c", "exit 3"))
        assert (failed.state, failed.exit_code, failed.reason) == (
            TaskState.FAILED,
            3,
            "exit status 3",
        )
        crashed = await node.run(proc("sh", "-c", "kill -SEGV $$"))
        assert crashed.state is TaskState.FAILED
        assert crashed.exit_code == 128 + 11
        assert crashed.reason == "killed by signal SIGSEGV"


async def test_output_goes_to_logs_and_the_caller(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        seen: list[bytes] = []
        task = await node.run(
            proc("sh", "-c", "echo out; echo err >&2; cat"),
            stdin=b"from stdin\n",
            tee_stdout=seen.append,
        )
        assert task.state is TaskState.COMPLETED
        assert await node.logs_of(task.id) == b"out\nfrom stdin\n"
        assert await node.logs_of(task.id, "stderr") == b"err\n"
        assert b"".join(seen) == b"out\nfrom stdin\n"


async def test_args_env_and_workdir(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        spec = proc(
            "sh", "-c", 'echo "$0 $GREETING $(pwd)"', "arg0",
            env=(("GREETING", "hi"),), workdir=str(tmp_path),
        )  # fmt: skip
        task = await node.run(spec)
        assert task.state is TaskState.COMPLETED, task.reason
        assert await node.logs_of(task.id) == f"arg0 hi {tmp_path}\n".encode()


async def test_the_node_environment_is_not_leaked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with new_node(tmp_path) as node:
        monkeypatch.setenv("SPEAR_TEST_SECRET", "s3cret")
        task = await node.run(proc("env"))
        out = await node.logs_of(task.id)
        assert b"s3cret" not in out
        assert b"PATH=" in out and b"SPEAR_AGENT_TOKEN=" in out


async def test_bad_commands_are_refused_before_they_run(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        with pytest.raises(NotFound, match="command not found: no-such-command-here"):
            await node.run(proc("no-such-command-here"))
        plain = tmp_path / "plain"
        plain.write_text("#!/bin/sh\necho hi\n")
        with pytest.raises(InvalidModule, match="not executable"):
            await node.run(proc(str(plain)))
        with pytest.raises(InvalidModule, match="is a directory"):
            await node.run(proc(str(tmp_path)))
        with pytest.raises(NotFound, match="no such file"):
            await node.run(proc(str(tmp_path / "missing.py")))
        failed = await node.tasks(TaskState.FAILED)
        assert len(failed) == 4  # each attempt is recorded, with its reason


async def test_a_file_that_cannot_be_executed_fails_its_task(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        junk = tmp_path / "junk"
        junk.write_bytes(b"\x00\x01 not a program")
        junk.chmod(0o755)
        task = await node.run(proc(str(junk)))
        assert task.state is TaskState.FAILED
        assert task.exit_code == 126
        assert "cannot execute" in (task.reason or "")


# -- stopping: timeout, cancel, leftovers -------------------------------------------------


async def test_timeout_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        task = await node.run(
            proc("sh", "-c", "trap '' TERM; sleep 60 & echo $!; wait", timeout_s=0.5)
        )
        assert (task.state, task.exit_code, task.reason) == (TaskState.FAILED, 124, "timeout")
        grandchild = int((await node.logs_of(task.id)).split()[0])
        await eventually(lambda: not alive(grandchild))  # (SIGKILL takes effect soon after)
        assert [c for c in children_of(os.getpid()) if c[1] == "Z"] == []


async def test_cancel_stops_the_whole_group(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        task = await node.submit(proc("sh", "-c", "sleep 60 & echo $!; wait"))
        grandchild = int(await first_line(node, task.id))
        assert alive(grandchild)
        cancelled = await node.cancel(task.id, "no longer needed")
        assert cancelled.state is TaskState.CANCELLED
        assert (cancelled.exit_code, cancelled.reason) == (130, "no longer needed")
        await eventually(lambda: not alive(grandchild))  # (SIGKILL takes effect soon after)


async def test_what_a_task_leaves_in_its_group_is_killed(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        task = await node.run(proc("sh", "-c", "sleep 60 >/dev/null & echo $!"))
        assert task.state is TaskState.COMPLETED
        left = int((await node.logs_of(task.id)).split()[0])
        # SIGKILL was sent as the task ended; on a busy machine it takes effect a moment later
        await eventually(lambda: not alive(left))


async def test_no_zombies_after_many_tasks(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(node.run, proc("sh", "-c", f"exit {i % 2}"))
        assert [c for c in children_of(os.getpid()) if c[1] == "Z"] == []


async def test_no_processes_outlive_the_node(tmp_path: Path) -> None:
    agent_py = script(tmp_path, "import subprocess, sys, time\n"
                      "p = subprocess.Popen(['sleep', '60'])\n"
                      "print(p.pid, flush=True)\ntime.sleep(60)\n")  # fmt: skip
    pids: list[int] = []
    async with LocalNode(tmp_path / "home", process_kill_grace_s=0.3) as node:
        cold = await node.submit(proc("sh", "-c", "trap '' TERM; sleep 60 & echo $!; wait"))
        warm = await node.submit(FunctionSpec(agent_py, runtime=Runtime.PROCESS, warm=True))
        pids += [int(await first_line(node, cold.id)), int(await first_line(node, warm.id))]
        server = agent_of(node)._forkserver
        assert server is not None and server.pid is not None
        pids.append(server.pid)
        assert all(alive(p) for p in pids)
    await eventually(lambda: not any(alive(p) for p in pids))  # (SIGKILL: soon after)
    assert [c for c in children_of(os.getpid()) if c[1] == "Z"] == []


# -- limits -------------------------------------------------------------------------------


async def test_cpu_time_limit_fails_the_task(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        task = await node.run(proc(sys.executable, "-c", "while True: pass", cpu_time_s=1))
        assert task.state is TaskState.FAILED
        assert task.reason == "CPU time limit exceeded (1 s)"


async def test_memory_limit_fails_the_task(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        grab = "x = bytearray(512 * 1024 * 1024)"
        task = await node.run(proc(sys.executable, "-c", grab, memory_limit_bytes=256 * 1024**2))
        assert task.state is TaskState.FAILED
        assert b"MemoryError" in await node.logs_of(task.id, "stderr")
        fine = await node.run(proc(sys.executable, "-c", grab))
        assert fine.state is TaskState.COMPLETED


async def test_open_files_limit(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        code = "fs = [open('/dev/null') for _ in range(64)]"
        task = await node.run(proc(sys.executable, "-c", code, open_files=32))
        assert task.state is TaskState.FAILED
        assert b"Too many open files" in await node.logs_of(task.id, "stderr")


async def test_a_flood_of_output_hits_the_log_cap_not_memory(tmp_path: Path) -> None:
    async with LocalNode(tmp_path / "home", task_log_max_bytes=1024**2) as node:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # 256 MiB through the pipe, in one burst.
        task = await node.run(proc("sh", "-c", "head -c 268435456 /dev/zero"))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert task.state is TaskState.COMPLETED
    out = node.logs.path(task.id, "stdout")
    assert 1024**2 <= out.stat().st_size < 1024**2 + 100
    assert out.read_bytes().endswith(b"[spear: log truncated at 1048576 bytes]\n")
    assert (after - before) * 1024 < 64 * 1024**2  # peak RSS grew far less than the output


# -- warm Python workers ----------------------------------------------------------------


async def test_warm_python_agents_behave_like_cold_ones(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        agent_py = script(
            tmp_path,
            """
            import os, sys
            print("args", sys.argv[1:], os.environ.get("GREETING"), __name__)
            print("to stderr", file=sys.stderr)
            sys.exit(int(sys.argv[1]))
            """,
        )
        outputs = []
        for warm in (False, True, True):
            spec = FunctionSpec(
                agent_py, runtime=Runtime.PROCESS, args=("5",), env=(("GREETING", "hi"),), warm=warm
            )
            task = await node.run(spec)
            assert (task.state, task.exit_code) == (TaskState.FAILED, 5)
            outputs.append((await node.logs_of(task.id), await node.logs_of(task.id, "stderr")))
        assert outputs[0] == outputs[1] == outputs[2]
        assert outputs[0][0] == b"args ['5'] hi __main__\n"
        assert agent_of(node).warm_starts == 2


async def test_warm_agents_are_stopped_and_limited_as_cold_ones(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        stubborn = script(
            tmp_path,
            """
            import signal, subprocess, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            p = subprocess.Popen(["sleep", "60"])
            print(p.pid, flush=True)
            time.sleep(60)
            """,
        )
        task = await node.run(
            FunctionSpec(stubborn, runtime=Runtime.PROCESS, warm=True, timeout_s=1)
        )
        assert (task.state, task.reason) == (TaskState.FAILED, "timeout")
        left = int((await node.logs_of(task.id)).split()[0])
        assert_eventually(lambda: not alive(left), timeout=5)  # (its files closed: exiting)
        hog = script(tmp_path, "x = bytearray(512 * 1024 * 1024)\n", "hog.py")
        limited = FunctionSpec(
            hog, runtime=Runtime.PROCESS, warm=True, memory_limit_bytes=256 << 20
        )
        task = await node.run(limited)
        assert task.state is TaskState.FAILED
        assert b"MemoryError" in await node.logs_of(task.id, "stderr")
        crash = script(
            tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGABRT)\n", "c.py"
        )
        task = await node.run(FunctionSpec(crash, runtime=Runtime.PROCESS, warm=True))
        assert task.reason == "killed by signal SIGABRT"


async def test_how_a_warm_agent_ends_is_its_own(tmp_path: Path) -> None:
    """A child that returns reports its exit itself, one that calls os._exit or is
    killed is reported by the fork server, and a process the agent forked that returns
    through the runner reports nothing."""
    async with new_node(tmp_path) as node:
        cases = {
            "import sys\nprint('bye', flush=True)\nsys.exit(3)\n": (3, b"bye\n"),
            "import os\nprint('now', flush=True)\nos._exit(4)\n": (4, b"now\n"),
            "import os, sys\npid = os.fork()\nif pid == 0:\n    sys.exit(0)\n"
            "os.waitpid(pid, 0)\nprint('parent', flush=True)\nsys.exit(7)\n": (7, b"parent\n"),
        }
        for i, (text, (code, out)) in enumerate(cases.items()):
            agent_py = script(tmp_path, text, f"end{i}.py")
            task = await node.run(FunctionSpec(agent_py, runtime=Runtime.PROCESS, warm=True))
            assert (task.exit_code, await node.logs_of(task.id)) == (code, out)


async def eventually(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll `check` on the event loop (whose timers keep running) until it is true."""
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.02)


def spares_of(server_pid: int) -> list[int]:
    return [pid for pid, state in children_of(server_pid) if state != "Z"]


async def test_the_warm_pool_keeps_its_spares_and_no_more(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        agent = agent_of(node)
        agent.warm_spares = 3
        spec = FunctionSpec(
            script(tmp_path, "import os\nprint(os.getpid())\n"), runtime=Runtime.PROCESS, warm=True
        )
        assert (await node.run(spec)).state is TaskState.COMPLETED
        server = agent._forkserver
        assert server is not None and server.pid is not None
        await eventually(lambda: len(spares_of(server.pid)) == 3)  # type: ignore[arg-type]
        # More tasks at once than spares: each still runs, warm, and then there are
        # three spares again, not one per task that ran.
        with anyio.fail_after(60):
            tasks = await asyncio.gather(*(node.run(spec) for _ in range(8)))
        assert {t.state for t in tasks} == {TaskState.COMPLETED}
        assert agent.warm_starts == 9
        # (a task's child, killed at its end, is the server's until it has died)
        ran = [int(await node.logs_of(t.id)) for t in tasks]
        await eventually(lambda: not any(alive(pid) for pid in ran))
        await eventually(lambda: len(spares_of(server.pid)) == 3)  # type: ignore[arg-type]
        assert len(spares_of(server.pid)) == 3


async def test_warm_tasks_beyond_the_fork_servers_queue_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests go out from the event loop without waiting; one the control socket's full
    queue refuses (made to happen here: Linux queues a socketpair's messages without
    bound) is sent from a worker thread, which may wait."""
    from spear.runtimes.process.forkserver import ForkServer

    refused: list[int] = []
    spawn = ForkServer.spawn

    def sometimes_full(self: ForkServer, *args: Any, block: bool = True, **kw: Any) -> Any:
        if not block and len(refused) < 6:
            refused.append(1)
            raise BlockingIOError(errno.EAGAIN, "queue full")
        return spawn(self, *args, block=block, **kw)

    monkeypatch.setattr(ForkServer, "spawn", sometimes_full)
    async with new_node(tmp_path) as node:
        agent = agent_of(node)
        spec = FunctionSpec(script(tmp_path, "print('ok')\n"), runtime=Runtime.PROCESS, warm=True)
        with anyio.fail_after(60):
            tasks = await asyncio.gather(*(node.run(spec) for _ in range(12)))
        assert [t.state for t in tasks] == [TaskState.COMPLETED] * 12
        assert [await node.logs_of(t.id) for t in tasks] == [b"ok\n"] * 12
        assert (len(refused), agent.warm_starts) == (6, 12)


async def test_an_idle_warm_pool_is_stopped_and_restarted_on_demand(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        agent = agent_of(node)
        # Idle for 2 s: a task every 0.2 s keeps it, even when a run takes a second here.
        agent.warm_idle_s = 2.0
        spec = FunctionSpec(script(tmp_path, "print('ok')\n"), runtime=Runtime.PROCESS, warm=True)
        assert (await node.run(spec)).state is TaskState.COMPLETED
        server = agent._forkserver
        assert server is not None and server.pid is not None
        await eventually(lambda: len(spares_of(server.pid)) == 2)  # type: ignore[arg-type]
        pids = [server.pid, *spares_of(server.pid)]
        # Kept while used: a task every 0.2 s for 1 s (and more).
        for _ in range(5):
            await anyio.sleep(0.2)
            assert (await node.run(spec)).state is TaskState.COMPLETED
            assert agent._forkserver is server and alive(server.pid)
        await eventually(lambda: agent._forkserver is None)
        await eventually(lambda: not any(alive(pid) for pid in pids))
        task = await node.run(spec)
        assert (task.state, await node.logs_of(task.id)) == (TaskState.COMPLETED, b"ok\n")
        assert agent._forkserver is not None and agent._forkserver.pid not in pids


def test_a_gone_fork_server_starts_nothing(tmp_path: Path) -> None:
    """A request the server can no longer take says so (WarmUnavailable: the node then
    starts the task cold) rather than leaving a task half-started."""
    from spear.runtimes.process.command import resolve_command
    from spear.runtimes.process.forkserver import ForkServer, WarmUnavailable

    command = resolve_command(FunctionSpec(script(tmp_path, "pass\n"), runtime=Runtime.PROCESS))
    server = ForkServer()
    server.start()
    assert server.pid is not None
    spares = assert_eventually(lambda: spares_of(server.pid))  # type: ignore[arg-type]
    os.kill(server.pid, 9)
    assert_eventually(lambda: not server.alive)
    assert_eventually(lambda: not any(alive(pid) for pid in spares))  # (they die with it)
    r, w = os.pipe()
    try:
        with pytest.raises(WarmUnavailable):
            server.spawn(command, None, w, w)
    finally:
        os.close(r)
        os.close(w)
        server.stop()


async def test_a_dead_fork_server_is_replaced(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        agent_py = script(tmp_path, "print('ok')\n")
        spec = FunctionSpec(agent_py, runtime=Runtime.PROCESS, warm=True)
        assert (await node.run(spec)).state is TaskState.COMPLETED
        server = agent_of(node)._forkserver
        assert server is not None and server.pid is not None
        os.kill(server.pid, 9)
        assert_eventually(lambda: not server.alive)
        task = await node.run(spec)
        assert task.state is TaskState.COMPLETED
        assert await node.logs_of(task.id) == b"ok\n"


# -- the CLI ------------------------------------------------------------------------------


def test_cli_runs_python_agents_and_commands(cli: Cli, tmp_path: Path) -> None:
    agent_py = script(tmp_path, "import sys\nprint('hi', *sys.argv[1:])\nsys.exit(4)\n")
    done = cli("run", agent_py, "a", "b")
    assert (done.returncode, done.stdout) == (4, b"hi a b\n")
    warm = cli("run", "--warm", agent_py, "c")
    assert (warm.returncode, warm.stdout) == (4, b"hi c\n")
    echo = cli("run", "--runtime", "process", "--", "sh", "-c", "cat; echo done", input=b"in\n")
    assert (echo.returncode, echo.stdout) == (0, b"in\ndone\n")


def test_cli_bad_commands_are_one_line(cli: Cli, tmp_path: Path) -> None:
    missing = cli("run", "--runtime", "process", "--", "no-such-command-here")
    assert missing.returncode == 66
    assert one_error_line(missing.stderr) == "spear: error: command not found: no-such-command-here"
    plain = tmp_path / "plain"
    plain.write_text("echo hi\n")
    not_exec = cli("run", "--runtime", "process", "--", str(plain))
    assert not_exec.returncode == 65
    assert "not executable" in one_error_line(not_exec.stderr)
    bad = cli("run", "--runtime", "java", "x.jar")
    assert bad.returncode == 2  # the parser's usage error
    assert "'java' is not one of 'wasm', 'process'" in one_error_line(bad.stderr)


def test_cli_timeout_kills_a_sigterm_ignoring_program(cli: Cli) -> None:
    proc_ = cli(
        "run", "--timeout", "0.5", "--runtime", "process", "--",
        "sh", "-c", "trap '' TERM; sleep 60 & echo $!; wait",
        SPEAR_PROCESS_KILL_GRACE_S="0.2",
    )  # fmt: skip
    assert proc_.returncode == 124
    assert proc_.stderr.decode().endswith("failed: timeout\n")
    left, deadline = int(proc_.stdout.split()[0]), time.monotonic() + 10
    while alive(left):  # (SIGKILL takes effect soon after on a busy machine)
        assert time.monotonic() < deadline, "the program outlived its timeout"
        time.sleep(0.02)


async def test_nul_bytes_are_refused(tmp_path: Path) -> None:
    async with new_node(tmp_path) as node:
        with pytest.raises(InvalidArgument, match="NUL"):
            await node.run(proc("echo", "a\0b"))


def test_cli_copies_a_terminal_stdin_through_a_pipe(cli: Cli) -> None:
    import pty

    master, slave = pty.openpty()
    try:
        child = cli.popen("run", "--runtime", "process", "--", "head", "-n", "1", stdin=slave)
        os.write(master, b"typed line\n")
        out, err = child.communicate(timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    assert child.returncode == 0, err
    assert out == b"typed line\n"


# -- cgroup v2 containment (where the hierarchy is writable) -----------------------------

ESCAPE = """
import subprocess
p = subprocess.Popen(["sleep", "60"], start_new_session=True, stdout=subprocess.DEVNULL)
print(p.pid, flush=True)
"""


@pytest.fixture
def cgroups_here() -> None:
    from spear.runtimes.process.cgroups import NodeCgroup

    probe = NodeCgroup.create()
    if probe is None:
        pytest.skip("cgroup v2 is not writable here")
    probe.close()


@pytest.mark.usefixtures("cgroups_here")
@pytest.mark.parametrize(
    "options", [{"warm": True}, {"memory_limit_bytes": 1 << 30}], ids=["warm", "limited"]
)
async def test_a_process_that_leaves_its_group_is_still_killed(
    tmp_path: Path, options: dict[str, object]
) -> None:
    escape = script(tmp_path, ESCAPE)
    async with new_node(tmp_path) as node:
        task = await node.run(FunctionSpec(escape, runtime=Runtime.PROCESS, **options))  # type: ignore[arg-type]
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        escaped = int((await node.logs_of(task.id)).split()[0])
        assert_eventually(lambda: not alive(escaped))
        cgroup = agent_of(node).cgroup
        assert cgroup is not None
        # Removed once its processes are gone, which the task's end does not wait for.
        assert_eventually(lambda: not (cgroup.directory / task.id).exists())
    assert not cgroup.directory.exists()


@pytest.mark.usefixtures("cgroups_here")
async def test_a_warm_child_that_cannot_join_its_cgroup_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear.runtimes.process.cgroups import NodeCgroup, TaskCgroup
    from spear.runtimes.process.forkserver import ForkServer

    def gone(self: NodeCgroup, task_id: str) -> TaskCgroup:  # removed under the task
        return TaskCgroup(self.directory / "gone" / task_id, f"{self.path}/gone/{task_id}")

    monkeypatch.setattr(NodeCgroup, "for_task", gone)
    # A warm child runs in the cgroup its spare made while it waited: there, that failed.
    init = ForkServer.__init__

    def spares_cannot_make_theirs(self: ForkServer, spares: int, cgroup_dir: str | None) -> None:
        init(self, spares, None if cgroup_dir is None else f"{cgroup_dir}/gone")

    monkeypatch.setattr(ForkServer, "__init__", spares_cannot_make_theirs)
    agent_py = script(tmp_path, "print('ran')\n")
    async with new_node(tmp_path) as node:
        task = await node.run(FunctionSpec(agent_py, runtime=Runtime.PROCESS, warm=True))
        assert (task.state, await node.logs_of(task.id)) == (TaskState.COMPLETED, b"ran\n")
        stderr = await node.logs_of(task.id, "stderr")
        assert stderr.startswith(b"spear: the task's cgroup could not be joined: [Errno 2]")


@pytest.mark.usefixtures("cgroups_here")
def test_a_dead_nodes_cgroup_is_emptied_by_the_next_node() -> None:
    import subprocess

    from spear.runtimes.process.cgroups import NodeCgroup

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has any more: the "dead node"
    mine = NodeCgroup.create()
    assert mine is not None
    dead = mine.directory.parent / f"spear-{gone.pid}-0"
    dead.mkdir()
    left = subprocess.Popen(["sleep", "60"])
    try:
        (dead / "cgroup.procs").write_text(str(left.pid))
        again = NodeCgroup.create()
        assert again is not None
        again.close()
        assert left.wait(timeout=10) == -9
        assert not dead.exists()
    finally:
        left.kill()
        left.wait()
        mine.close()
