"""Subtasks: agents start, wait for, read and cancel child tasks on a real LocalNode
(process agents through spear.agent, WASM agents through sdk/c/spear.h)."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import TYPE_CHECKING

import anyio
from conftest import ROOT, build_c

from spear import FunctionSpec, LocalNode
from spear.core.models import Runtime, TaskState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)


def _script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


async def _result(node: LocalNode, task_id: str) -> dict[str, object]:
    value, _ = await node.objects.get(f"results/{task_id}")
    out: dict[str, object] = json.loads(bytes(value))
    return out


async def test_children_run_and_their_ends_reach_the_parent(tmp_path: Path) -> None:
    _script(tmp_path, "square.py", "import sys\nprint(int(sys.argv[1]) ** 2)\n")
    _script(tmp_path, "broken.py", "import sys\nsys.exit('no luck today')\n")
    parent = _script(
        tmp_path,
        "parent.py",
        f"""
        import json
        from spear import agent
        a = agent.Agent()
        kids = [a.spawn({str(tmp_path / "square.py")!r}, [str(n)], runtime="process")
                for n in range(1, 6)]
        done = a.wait(kids)
        squares = [int(k.result()["output"]) for k in kids]
        bad = a.spawn({str(tmp_path / "broken.py")!r}, runtime="process").result()
        a.set_result(json.dumps({{"squares": squares, "done": len(done), "bad": bad}}).encode())
        """,
    )
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(parent), runtime=Runtime.PROCESS, timeout_s=60))
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        out = await _result(node, task.id)
        assert out["squares"] == [1, 4, 9, 16, 25] and out["done"] == 5
        bad = out["bad"]
        assert isinstance(bad, dict)
        assert bad["state"] == "FAILED" and bad["exit_code"] == 1
        # The children went through the node like any task, labelled with their parent.
        children = [t for t in await node.tasks() if dict(t.spec.env).get("SPEAR_PARENT_TASK")]
        assert len(children) == 6
        assert {dict(t.spec.env)["SPEAR_PARENT_TASK"] for t in children} == {task.id}
        assert {dict(t.spec.env)["SPEAR_TASK_DEPTH"] for t in children} == {"1"}


async def test_waiting_for_any_and_cancelling_a_child(tmp_path: Path) -> None:
    _script(tmp_path, "quick.py", "print('quick')\n")
    _script(tmp_path, "slow.py", "import time\ntime.sleep(60)\n")
    parent = _script(
        tmp_path,
        "parent.py",
        f"""
        import json
        from spear import agent
        a = agent.Agent()
        slow = a.spawn({str(tmp_path / "slow.py")!r}, runtime="process")
        quick = a.spawn({str(tmp_path / "quick.py")!r}, runtime="process")
        first = a.wait([slow, quick], return_when="any")
        none_yet = a.wait([slow], timeout_s=0.2)
        slow.cancel()
        ended = slow.result(timeout_s=30)
        a.set_result(json.dumps({{"first": [c.id for c in first], "quick": quick.id,
                                  "none_yet": len(none_yet), "slow": ended}}).encode())
        """,
    )
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(parent), runtime=Runtime.PROCESS, timeout_s=60))
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        out = await _result(node, task.id)
        assert out["first"] == [out["quick"]] and out["none_yet"] == 0
        slow = out["slow"]
        assert isinstance(slow, dict)
        assert slow["state"] == "CANCELLED" and "by its parent" in str(slow["reason"])


async def test_cancelling_a_parent_cancels_its_children(tmp_path: Path) -> None:
    _script(tmp_path, "slow.py", "import time\ntime.sleep(60)\n")
    parent = _script(
        tmp_path,
        "parent.py",
        f"""
        import time
        from spear import agent
        a = agent.Agent()
        a.spawn({str(tmp_path / "slow.py")!r}, runtime="process")
        a.spawn({str(tmp_path / "slow.py")!r}, runtime="process")
        print("spawned", flush=True)
        time.sleep(60)
        """,
    )
    async with LocalNode(tmp_path / "home") as node:
        handle = await node.submit(FunctionSpec(str(parent), runtime=Runtime.PROCESS))

        async def children() -> list[object]:
            return [
                t
                for t in await node.tasks()
                if dict(t.spec.env).get("SPEAR_PARENT_TASK") == handle.id
            ]

        async def two_running() -> bool:
            kids = await children()
            return len(kids) == 2 and all(t.state is TaskState.RUNNING for t in kids)  # type: ignore[attr-defined]

        await _eventually(two_running)
        await node.cancel(handle.id, "stop everything")

        async def all_cancelled() -> bool:
            kids = await children()
            return all(t.state is TaskState.CANCELLED for t in kids)  # type: ignore[attr-defined]

        await _eventually(all_cancelled)
        for kid in await children():
            assert f"parent task {handle.id} ended (cancelled)" in str(kid.reason)  # type: ignore[attr-defined]


async def test_a_child_the_parent_may_not_start_is_refused(tmp_path: Path) -> None:
    wasm = build_c(ROOT / "tests" / "wasm" / "subtask_agent.c")
    async with LocalNode(tmp_path / "home") as node:
        spec = json.dumps({"artifact": sys.executable, "runtime": "process"})
        task = await node.run(FunctionSpec(str(wasm), args=("spawn", spec), timeout_s=60))
        out = (await node.logs_of(task.id, "stdout")).decode()
        assert out.strip() == "ERR 2"  # EACCES in WASI's numbering
        malformed = await node.run(FunctionSpec(str(wasm), args=("spawn", "{}"), timeout_s=60))
        assert (await node.logs_of(malformed.id, "stdout")).decode().strip() == "ERR 28"


async def test_map_reduce_example(tmp_path: Path) -> None:
    script = ROOT / "examples" / "map_reduce" / "map_reduce.py"
    async with LocalNode(tmp_path / "home") as node:
        await node.objects.put("docs/a", b"the cat sat on the mat")
        await node.objects.put("docs/b", b"The dog sat")
        await node.objects.put("other/c", b"not counted")
        spec = FunctionSpec(str(script), runtime=Runtime.PROCESS, args=("docs/",), timeout_s=60)
        task = await node.run(spec)
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        counts = await _result(node, task.id)
        assert counts == {"the": 3, "sat": 2, "cat": 1, "on": 1, "mat": 1, "dog": 1}
        assert json.loads(await node.logs_of(task.id, "stdout")) == counts  # printed too


async def test_children_stay_in_their_parents_namespace(tmp_path: Path) -> None:
    _script(
        tmp_path,
        "child.py",
        """
        from spear import agent
        agent.Agent().set_result(b"from the child")
        """,
    )
    child = str(tmp_path / "child.py")
    parent = _script(
        tmp_path,
        "parent.py",
        f"""
        import errno, json
        from spear import agent
        a = agent.Agent()
        kid = a.spawn({child!r}, runtime="process").result()
        out = {{"state": kid["state"], "output": kid["output"]}}
        for namespace in ("default", "team-b"):
            try:
                a.spawn({child!r}, runtime="process", namespace=namespace)
            except agent.HostcallError as exc:
                out[namespace] = [errno.errorcode[exc.errno], str(exc)]
        a.set_result(json.dumps(out).encode())
        """,
    )
    async with LocalNode(tmp_path / "home") as node:
        spec = FunctionSpec(str(parent), runtime=Runtime.PROCESS, namespace="team-a", timeout_s=60)
        task = await node.run(spec)
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        value, _ = await node.objects.get(f"@ns/team-a/results/{task.id}")
        out = json.loads(bytes(value))
        # The child ran in team-a, and its result (stored in team-a's part) reached the parent.
        kids = [t for t in await node.tasks() if dict(t.spec.env).get("SPEAR_PARENT_TASK")]
        assert [k.spec.namespace for k in kids] == ["team-a"]
        assert out["state"] == "COMPLETED" and out["output"] == "from the child"
        for other in ("default", "team-b"):
            assert out[other][0] == "EACCES" and "may not start a child in" in out[other][1]
