# ruff: noqa: F811 - the fixtures imported from mcp_fixtures are redefined as parameters
"""MCP tools through the node: a WASM agent (C, sdk/c/spear.h) and a Python process agent
(spear.agent) on a real LocalNode whose config names the reference time server."""

from __future__ import annotations

import errno
import json
import textwrap
from typing import TYPE_CHECKING

import pytest
from conftest import ROOT, build_c
from mcp_fixtures import test_server, time_server  # noqa: F401 - fixtures

from spear import FunctionSpec, LocalNode
from spear.core.models import Runtime, TaskState
from spear.runtimes.wasm.hostcalls.abi import wasi_errno

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def mcp_agent() -> Path:
    return build_c(ROOT / "tests" / "wasm" / "mcp_agent.c")


@pytest.fixture
def mcp_config(
    tmp_path: Path,
    time_server: list[str],
    test_server: list[str],
) -> Path:
    path = tmp_path / "mcp.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            allow = ["time/*", "test/echo", "test/nap"]
            [servers.time]
            command = {json.dumps(time_server)}
            [servers.test]
            command = {json.dumps(test_server)}
            """
        )
    )
    return path


async def test_wasm_agent_lists_and_calls_tools(
    tmp_path: Path, mcp_config: Path, mcp_agent: Path
) -> None:
    async with LocalNode(tmp_path / "home", mcp_config=str(mcp_config)) as node:

        async def run(*args: str) -> tuple[TaskState, str]:
            task = await node.run(FunctionSpec(str(mcp_agent), args=args, timeout_s=60))
            return task.state, (await node.logs_of(task.id, "stdout")).decode()

        state, out = await run("list")
        assert state is TaskState.COMPLETED, out
        names = {t["name"] for t in json.loads(out)["tools"]}
        assert names == {"time/get_current_time", "time/convert_time", "test/echo", "test/nap"}

        call = {"name": "time/get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}
        state, out = await run("call", json.dumps(call))
        assert state is TaskState.COMPLETED, out
        assert json.loads(out)["structured"]["timezone"] == "Asia/Tokyo"

        errors = {
            "time/teleport": errno.ENOENT,
            "test/add": errno.EACCES,
        }
        for name, code in errors.items():
            state, out = await run("call", json.dumps({"name": name}))
            assert out.strip() == f"ERR {wasi_errno(code)}", name
        slow = {"name": "test/nap", "arguments": {"seconds": 30}, "timeout_s": 0.3}
        state, out = await run("call", json.dumps(slow))
        assert out.strip() == f"ERR {wasi_errno(errno.ETIMEDOUT)}"


SDK_AGENT = """
import errno, json
from spear import agent

a = agent.Agent()
out = {"names": sorted(t["name"] for t in a.list_tools())}
out["paris"] = a.call_tool("time/get_current_time", {"timezone": "Europe/Paris"})["structured"]
out["bad_zone"] = a.call_tool("time/get_current_time", {"timezone": "Mars/Base"})["is_error"]
for name in ("time/teleport", "test/add", "nowhere/x"):
    try:
        a.call_tool(name, {})
    except agent.HostcallError as exc:
        out[name] = [errno.errorcode[exc.errno], str(exc)]
try:
    a.call_tool("test/nap", {"seconds": 30}, timeout_s=0.3)
except agent.HostcallError as exc:
    out["slow"] = errno.errorcode[exc.errno]
a.set_result(json.dumps(out).encode())
"""


async def test_process_agent_sdk(tmp_path: Path, mcp_config: Path) -> None:
    script = tmp_path / "tools_agent.py"
    script.write_text(SDK_AGENT)
    async with LocalNode(tmp_path / "home", mcp_config=str(mcp_config)) as node:
        task = await node.run(FunctionSpec(str(script), runtime=Runtime.PROCESS, timeout_s=60))
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        value, _ = await node.objects.get(f"results/{task.id}")
        out = json.loads(bytes(value))
        assert "time/convert_time" in out["names"] and "test/add" not in out["names"]
        assert out["paris"]["timezone"] == "Europe/Paris"
        assert out["bad_zone"] is True
        assert out["time/teleport"][0] == "ENOENT"
        assert out["test/add"][0] == "EACCES" and "test/add" in out["test/add"][1]
        assert out["nowhere/x"][0] == "ENOENT"
        assert out["slow"] == "ETIMEDOUT"
        log = (await node.logs_of(task.id, "agent")).decode()
        assert "tool time/get_current_time answered" in log


async def test_a_node_without_mcp_config_answers_enosys(tmp_path: Path) -> None:
    script = tmp_path / "no_tools.py"
    script.write_text(
        "import errno\nfrom spear import agent\n"
        "try:\n    agent.Agent().list_tools()\nexcept agent.HostcallError as exc:\n"
        "    print(errno.errorcode[exc.errno])\n"
    )
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(script), runtime=Runtime.PROCESS, timeout_s=60))
        assert (await node.logs_of(task.id, "stdout")).decode().strip() == "ENOSYS"


LIST_AGENT = """
import json
from spear import agent
a = agent.Agent()
print(json.dumps(sorted(t["name"] for t in a.list_tools())))
"""


async def test_namespace_rules_and_task_labels_reach_agents(
    tmp_path: Path,
    time_server: list[str],
    test_server: list[str],
) -> None:
    config = tmp_path / "mcp.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            allow = ["time/*", "test/echo"]
            [servers.time]
            command = {json.dumps(time_server)}
            [servers.test]
            command = {json.dumps(test_server)}
            [[rules]]
            namespace = "team-a"
            allow = ["test/*"]
            """
        )
    )
    script = tmp_path / "list_agent.py"
    script.write_text(LIST_AGENT)
    async with LocalNode(tmp_path / "home", mcp_config=str(config)) as node:

        async def tools(**spec: object) -> list[str]:
            fn = FunctionSpec(str(script), runtime=Runtime.PROCESS, timeout_s=60, **spec)  # type: ignore[arg-type]
            task = await node.run(fn)
            assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
            return json.loads(await node.logs_of(task.id, "stdout"))  # type: ignore[no-any-return]

        assert await tools() == ["test/echo", "time/convert_time", "time/get_current_time"]
        team = await tools(namespace="team-a")
        assert "test/add" in team and not any(n.startswith("time/") for n in team)
        # A task's own label narrows what its namespace allows, never widens it.
        assert await tools(labels=(("mcp.allow", "time/convert_time"),)) == ["time/convert_time"]
        narrowed = await tools(namespace="team-a", labels=(("mcp.allow", "test/add,time/*"),))
        assert narrowed == ["test/add"]
