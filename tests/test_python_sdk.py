"""The Python agent SDK against a real node: real agent processes, the real Unix socket,
the real object store and streams; credentials checked between tasks."""

from __future__ import annotations

import errno
import json
import socket
import struct
import textwrap
import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from spear import FunctionSpec, LocalNode, NotFound, Runtime, TaskState
from spear import agent as sdk
from spear.core.models import Task
from spear.core.worker import ExecutionControl, TaskContext, TaskIO
from spear.runtimes.process.channel import AgentChannel

if TYPE_CHECKING:
    from pathlib import Path


def write(tmp_path: Path, text: str, name: str = "agent.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def py(path: str, *args: str, warm: bool = False, **kw: object) -> FunctionSpec:
    return FunctionSpec(path, runtime=Runtime.PROCESS, args=args, warm=warm, **kw)  # type: ignore[arg-type]


OBJECTS_AGENT = """
    import errno
    from spear import agent

    agent.log("starting", "DEBUG")
    v1 = agent.put("sdk/a", b"one")
    assert agent.get("sdk/a") == b"one"
    v2 = agent.put("sdk/a", b"two", expected_version=v1)
    try:
        agent.put("sdk/a", b"three", expected_version=v1)
    except agent.HostcallError as exc:
        assert exc.errno == errno.ESTALE, exc
    else:
        raise SystemExit("a stale put succeeded")
    try:
        agent.get("sdk/missing")
    except agent.HostcallError as exc:
        assert exc.errno == errno.ENOENT
    assert agent.get_versioned("sdk/a") == (b"two", v2)
    agent.put("sdk/b", bytes(range(256)) * 4096)
    assert agent.info("sdk/b").size == 1024 * 1024
    assert [i.key for i in agent.list_objects("sdk/")] == ["sdk/a", "sdk/b"]
    agent.delete("sdk/b")
    agent.set_result(b"result of " + agent.task_id().encode())
    print("done")
"""


@pytest.mark.parametrize("warm", [False, True])
async def test_objects_from_a_python_agent(tmp_path: Path, warm: bool) -> None:
    agent_py = write(tmp_path, OBJECTS_AGENT)
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(py(agent_py, warm=warm))
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        assert await node.logs_of(task.id) == b"done\n"
        assert b"DEBUG   starting" in await node.logs_of(task.id, "agent")
        value, _ = await node.objects.get("sdk/a")
        assert bytes(value) == b"two"
        assert [i.key for i in await node.objects.list("sdk/")] == ["sdk/a"]
        result, _ = await node.objects.get(f"results/{task.id}")
        assert bytes(result) == f"result of {task.id}".encode()


async def test_the_async_client(tmp_path: Path) -> None:
    agent_py = write(
        tmp_path,
        """
        import asyncio
        from spear.agent import AsyncAgent

        async def main():
            async with AsyncAgent() as a:
                versions = await asyncio.gather(*(a.put(f"k{i}", b"x" * i) for i in range(20)))
                assert len(set(versions)) == 20
                sizes = [(await a.info(f"k{i}")).size for i in range(20)]
                assert sizes == list(range(20)), sizes
                await a.log("async ok")
                async for message in a.messages():
                    await a.send(message[::-1])

        asyncio.run(main())
        """,
    )
    async with LocalNode(tmp_path / "home") as node:
        stream = await node.start_task(py(agent_py))
        for word in (b"abc", b"", b"hello"):
            await stream.send(word)
        await stream.close()
        received = [m async for m in stream.messages()]
        task = await stream.wait()
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        assert received == [b"cba", b"", b"olleh"]
        assert b"async ok" in await node.logs_of(task.id, "agent")


async def test_streams_with_the_sync_sdk_and_backpressure(tmp_path: Path) -> None:
    agent_py = write(
        tmp_path,
        """
        from spear import agent
        for message in agent.messages():
            for _ in range(int(message)):
                agent.send(b"tick")   # more than the queue holds: waits for the caller
        agent.close_output()
        """,
    )
    async with LocalNode(tmp_path / "home", stream_queue_messages=4) as node:
        stream = await node.start_task(py(agent_py))
        await stream.send(b"50")
        await stream.close()
        received = [m async for m in stream.messages()]
        assert received == [b"tick"] * 50
        assert (await stream.wait()).state is TaskState.COMPLETED


async def test_one_task_cannot_read_another_tasks_stream(tmp_path: Path) -> None:
    echo_py = write(
        tmp_path,
        """
        import os
        from spear import agent
        agent.send(os.environ["SPEAR_AGENT_TOKEN"])
        for message in agent.messages():
            agent.send(b"echo " + message)
        """,
    )
    async with LocalNode(tmp_path / "home") as node:
        first = await node.start_task(py(echo_py))
        second = await node.start_task(py(echo_py))
        token_first = await first.receive()
        token_second = await second.receive()
        assert token_first and token_second and token_first != token_second
        await first.send(b"for first")
        await second.send(b"for second")
        assert await first.receive() == b"echo for first"
        assert await second.receive() == b"echo for second"

        channel = await node.agents["process"].channel()  # type: ignore[attr-defined]

        def as_outsider(token: str) -> str:
            client = sdk.Agent(channel.path, token)
            try:
                return client.call("stream_caller")[0]  # type: ignore[no-any-return]
            finally:
                client.close()

        # A forged token is refused; the first task's token acts as the first task only.
        with pytest.raises(sdk.HostcallError) as refused:
            await anyio.to_thread.run_sync(as_outsider, "not-a-token")
        assert refused.value.errno == errno.EACCES
        client = sdk.Agent(channel.path, token_first.decode())
        if node.agents["process"].cgroup is None:  # type: ignore[attr-defined]
            # The token alone is the credential: it acts as the first task, and only that.
            assert await anyio.to_thread.run_sync(client.caller) >= 1
            assert client.task_id == first.id
        else:
            # With task cgroups, it is also no use outside the first task's processes.
            with pytest.raises(sdk.HostcallError) as outside:
                await anyio.to_thread.run_sync(client.caller)
            assert outside.value.errno == errno.EACCES
            assert "not a process of the task" in str(outside.value)
        client.close()

        await first.close()
        await second.close()
        assert (await first.wait()).state is TaskState.COMPLETED
        assert (await second.wait()).state is TaskState.COMPLETED
        # The credential died with its task.
        with pytest.raises(sdk.HostcallError) as dead:
            await anyio.to_thread.run_sync(as_outsider, token_first.decode())
        assert dead.value.errno == errno.EACCES


async def test_an_agent_that_closes_the_channel_mid_request(tmp_path: Path) -> None:
    agent_py = write(
        tmp_path,
        """
        import json, os, socket, struct, sys
        s = socket.socket(socket.AF_UNIX)
        s.connect(os.environ["SPEAR_AGENT_SOCKET"])
        hello = json.dumps({"op": "hello", "id": 1, "version": 1,
                            "token": os.environ["SPEAR_AGENT_TOKEN"]}).encode()
        s.sendall(struct.pack("!II", len(hello), 0) + hello)
        s.recv(4096)
        s.sendall(struct.pack("!II", 100, 5) + b'{"op": "obj_p')   # cut short
        s.close()
        sys.exit(1)
        """,
    )
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(py(agent_py))
        assert task.state is TaskState.FAILED
        assert task.reason == (
            "exit status 1 (the agent closed the channel in the middle of a request)"
        )
        assert b"hostcall channel" in await node.logs_of(task.id, "agent")
        # The node is unharmed: the next task still talks to it.
        ok = await node.run(
            py(write(tmp_path, "from spear import agent\nagent.put('k', b'v')\n", "ok.py"))
        )
        assert ok.state is TaskState.COMPLETED


async def test_an_agent_that_leaves_during_a_blocking_call(tmp_path: Path) -> None:
    agent_py = write(
        tmp_path,
        """
        import threading, time
        from spear import agent
        a = agent.Agent()
        handle = a.caller()
        threading.Thread(target=lambda: a.poll([(handle, agent.POLLIN)]), daemon=True).start()
        time.sleep(0.3)
        print("leaving", flush=True)
        """,
    )
    async with LocalNode(tmp_path / "home") as node:
        stream = await node.start_task(py(agent_py))  # its input stays open: poll blocks
        task = await stream.wait()
        assert task.state is TaskState.COMPLETED
        log = await node.logs_of(task.id, "agent")
        assert b"during a call (poll)" in log


async def test_the_sdk_sees_a_closed_channel_as_one_error(tmp_path: Path) -> None:
    channel = AgentChannel(tmp_path / "run")
    await channel.start()
    try:
        task = Task("t1", py("x.py"))
        ctx = TaskContext(task, ExecutionControl(), TaskIO(lambda b: None, lambda b: None),
                          lambda level, message: None)  # fmt: skip
        credential = channel.register(ctx)
        client = sdk.Agent(channel.path, credential.token)
        outcome: list[BaseException] = []
        started = threading.Event()

        def blocked() -> None:
            try:
                client.call("log", message="hi")
                started.set()
                client.call("poll", interests=[], timeout=None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=blocked)
        thread.start()
        await anyio.to_thread.run_sync(started.wait, 10)
        await channel.revoke(credential)
        await anyio.to_thread.run_sync(thread.join, 10)
        assert len(outcome) == 1 and isinstance(outcome[0], sdk.ChannelClosed)
        assert "closed the hostcall channel" in str(outcome[0])
    finally:
        await channel.aclose()


async def test_malformed_requests_are_answered_not_fatal(tmp_path: Path) -> None:
    channel = AgentChannel(tmp_path / "run")
    await channel.start()
    try:
        task = Task("t1", py("x.py"))
        lines: list[str] = []
        ctx = TaskContext(task, ExecutionControl(), TaskIO(lambda b: None, lambda b: None),
                          lambda level, message: lines.append(message))  # fmt: skip
        credential = channel.register(ctx)

        def session() -> list[dict[str, object]]:
            client = sdk.Agent(channel.path, credential.token)
            answers = []
            for op, args in [
                ("no_such_op", {}),
                ("obj_get", {}),  # no key
                ("obj_put", {"key": 5}),
                ("log", {"message": "x", "level": "LOUD"}),
                ("obj_get", {"key": "k"}),  # no object store behind this context
            ]:
                try:
                    client.call(op, **args)
                except sdk.HostcallError as exc:
                    answers.append({"errno": exc.errno})
            client.close()
            return answers

        answers = await anyio.to_thread.run_sync(session)
        assert [a["errno"] for a in answers] == [
            errno.ENOSYS, errno.EINVAL, errno.EINVAL, errno.EINVAL, errno.ENOSYS,
        ]  # fmt: skip

        def exchange(frame: bytes) -> bytes:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(channel.path)
                s.sendall(frame)
                data = b""
                while chunk := s.recv(4096):  # the server answers, then hangs up
                    data += chunk
                return data

        request = json.dumps({"op": "obj_get", "id": 7, "key": "k"}).encode()
        reply = await anyio.to_thread.run_sync(
            exchange, struct.pack("!II", len(request), 0) + request
        )  # no hello first
        assert json.loads(reply[8:])["errno"] == errno.EACCES
        assert await anyio.to_thread.run_sync(exchange, struct.pack("!II", 2, 0) + b"[]") == b""
        assert await anyio.to_thread.run_sync(exchange, struct.pack("!II", 0, 0)) == b""
    finally:
        await channel.aclose()


def test_outside_a_task_the_sdk_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPEAR_AGENT_SOCKET", raising=False)
    with pytest.raises(sdk.ChannelClosed, match="not running as a spear process agent"):
        sdk.Agent()


async def test_receive_with_a_timeout(tmp_path: Path) -> None:
    agent_py = write(
        tmp_path,
        """
        from spear import agent
        try:
            agent.receive(timeout=0.2)
        except TimeoutError:
            agent.send(b"timed out")
        print(agent.receive())
        """,
    )
    async with LocalNode(tmp_path / "home") as node:
        stream = await node.start_task(py(agent_py))
        assert await stream.receive() == b"timed out"
        await stream.send(b"late")
        await stream.close()
        task = await stream.wait()
        assert task.state is TaskState.COMPLETED
        assert await node.logs_of(task.id) == b"b'late'\n"


@pytest.mark.parametrize("warm", [[], ["--warm"]], ids=["cold", "warm"])
def test_spear_run_stream_with_a_python_agent(tmp_path: Path, warm: list[str]) -> None:
    from tests.conftest import Cli

    upper = write(
        tmp_path,
        "from spear import agent\nfor m in agent.messages():\n    agent.send(m.upper())\n",
    )
    done = Cli(tmp_path / "home")("run", "--stream", *warm, upper, input=b"hello\nworld\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"HELLO\nWORLD\n"


@pytest.mark.parametrize("holder_warm", [False, True], ids=["cold", "warm"])
async def test_a_token_taken_from_another_task_is_refused(
    tmp_path: Path, holder_warm: bool
) -> None:
    """Also from a warm task, whose cgroup is the one its child made as a spare."""
    holder = write(
        tmp_path,
        """
        import os
        from spear import agent
        agent.send(os.environ["SPEAR_AGENT_TOKEN"])
        agent.receive()
        """,
        "holder.py",
    )
    thief = write(
        tmp_path,
        """
        import errno
        from spear import agent
        stolen = agent.receive().decode()
        try:
            agent.Agent(token=stolen).put("stolen", b"x")
        except agent.HostcallError as exc:
            agent.send(errno.errorcode[exc.errno])
        else:
            agent.send(b"accepted")
        """,
        "thief.py",
    )
    async with LocalNode(tmp_path / "home") as node:
        if node.agents["process"].cgroup is None:  # type: ignore[attr-defined]
            await node.run(py(write(tmp_path, "pass\n", "probe.py")))
        if node.agents["process"].cgroup is None:  # type: ignore[attr-defined]
            pytest.skip("cgroup v2 is not writable here: the token alone is the credential")
        first = await node.start_task(py(holder, warm=holder_warm))
        second = await node.start_task(py(thief, warm=True))
        token = await first.receive()
        assert token is not None
        await second.send(token)
        assert await second.receive() == b"EACCES"
        await first.close()
        assert (await second.wait()).state is TaskState.COMPLETED
        assert (await first.wait()).state is TaskState.COMPLETED
        with pytest.raises(NotFound):  # nothing was written as the first task
            await node.objects.get("stolen")


def test_the_sdk_imports_only_what_a_new_interpreter_has(tmp_path: Path) -> None:
    """`from spear import agent` is the first line of every agent: it loads no module
    beyond the interpreter's own start-up ones and spear's three (the socket and JSON
    come with the first call)."""
    import os
    import subprocess
    import sys

    probe = (
        "import sys\nbefore = set(sys.modules)\nfrom spear import agent\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    src = os.path.dirname(os.path.dirname(os.path.abspath(sdk.__file__)))
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": src, "PATH": os.environ["PATH"]},
        capture_output=True,
        check=True,
    )
    loaded = set(done.stdout.split())
    allowed = {b"spear", b"spear.agent", b"spear._agent_wire", b"struct", b"_struct", b"errno"}
    assert loaded <= allowed | {b"__future__"}, loaded - allowed


def test_object_info_is_a_read_only_value() -> None:
    info = sdk.ObjectInfo(key="k", size=3, version=2, refcount=1, pinned=False)
    same = sdk.ObjectInfo("k", 3, 2, 1, False)
    assert info == same and hash(info) == hash(same)
    assert info != sdk.ObjectInfo("k", 3, 3, 1, False)
    assert repr(info) == "ObjectInfo(key='k', size=3, version=2, refcount=1, pinned=False)"
    assert (info.key, info.size, info.version, info.refcount, info.pinned) == ("k", 3, 2, 1, False)
    with pytest.raises(AttributeError):
        info.size = 4  # type: ignore[misc]
