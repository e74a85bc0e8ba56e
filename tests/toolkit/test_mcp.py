# ruff: noqa: F811 - the fixtures imported from mcp_fixtures are redefined as parameters
"""MCP connections of a node (spear/toolkit/mcp_hub.py): real servers in real processes,
the reference `mcp-server-time` among them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from mcp_fixtures import http_server, test_server, time_server  # noqa: F401 - fixtures

from spear.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from spear.toolkit.mcp_config import McpConfig
from spear.toolkit.mcp_hub import McpHub

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

from contextlib import asynccontextmanager


@asynccontextmanager
async def serving(config: dict[str, Any], tmp_path: Path) -> AsyncIterator[McpHub]:
    """A hub served in a task group of its own (a node gives it the node's)."""

    class _Controller:
        def add_finished_hook(self, hook: Any) -> None:
            pass

    class _Node:
        controller = _Controller()

    hub = McpHub(McpConfig.from_mapping(config), tmp_path / "mcp-logs")
    async with anyio.create_task_group() as tg, hub.serve_node(_Node(), tg):  # type: ignore[arg-type]
        yield hub
        tg.cancel_scope.cancel()


def _task(
    labels: dict[str, str], artifact: str = "/agents/a.py", namespace: str = "default"
) -> Any:
    from spear.core.models import FunctionSpec, Task

    spec = FunctionSpec(artifact, labels=tuple(labels.items()), namespace=namespace)
    return Task(id="t1", spec=spec)


async def test_the_reference_time_server_lists_and_answers(
    time_server: list[str],
    tmp_path: Path,
) -> None:
    async with serving({"servers": {"time": {"command": time_server}}}, tmp_path) as hub:
        listed = await hub.list_tools(None)
        names = {t["name"] for t in listed["tools"]}
        assert {"time/get_current_time", "time/convert_time"} <= names
        assert listed["unavailable"] == {}
        schema = next(t for t in listed["tools"] if t["name"] == "time/get_current_time")
        assert "timezone" in schema["input_schema"]["properties"]

        result = await hub.call("time/get_current_time", {"timezone": "Europe/Paris"}, None)
        assert not result["is_error"]
        assert result["structured"]["timezone"] == "Europe/Paris"
        assert json.loads(result["text"])["timezone"] == "Europe/Paris"

        failed = await hub.call("time/get_current_time", {"timezone": "Nowhere/Atall"}, None)
        assert failed["is_error"] and "Nowhere/Atall" in failed["text"]


async def test_unknown_tools_and_servers_are_clean_errors(
    time_server: list[str],
    tmp_path: Path,
) -> None:
    async with serving({"servers": {"time": {"command": time_server}}}, tmp_path) as hub:
        with pytest.raises(NotFound, match="no tool 'teleport'"):
            await hub.call("time/teleport", {}, None)
        with pytest.raises(NotFound, match="no MCP server 'space'"):
            await hub.call("space/x", {}, None)
        with pytest.raises(InvalidArgument, match="server/tool"):
            await hub.call("get_current_time", {}, None)


async def test_allow_lists_by_rule_and_by_the_tasks_own_label(
    time_server: list[str],
    test_server: list[str],
    tmp_path: Path,
) -> None:
    config = {
        "servers": {"time": {"command": time_server}, "test": {"command": test_server}},
        "allow": ["time/*", "test/echo"],
        "rules": [{"label": "team=ops", "allow": ["test/*"]}],
    }
    async with serving(config, tmp_path) as hub:
        plain = {t["name"] for t in (await hub.list_tools(_task({})))["tools"]}
        assert plain == {"time/get_current_time", "time/convert_time", "test/echo"}
        ops = {t["name"] for t in (await hub.list_tools(_task({"team": "ops"})))["tools"]}
        assert "test/add" in ops and "time/get_current_time" not in ops
        with pytest.raises(PermissionDenied, match="test/add"):
            await hub.call("test/add", {"a": 1, "b": 2}, _task({}))
        # A task narrows what it may call with its own label, never widens it.
        narrow = _task({"mcp.allow": "time/convert_time,test/add"})
        assert {t["name"] for t in (await hub.list_tools(narrow))["tools"]} == {"time/convert_time"}
        with pytest.raises(PermissionDenied):
            await hub.call("test/add", {"a": 1, "b": 2}, narrow)
        assert (await hub.call("test/add", {"a": 1, "b": 2}, _task({"team": "ops"})))["text"] == "3"


async def test_allow_lists_by_namespace(
    time_server: list[str],
    test_server: list[str],
    tmp_path: Path,
) -> None:
    config = {
        "servers": {"time": {"command": time_server}, "test": {"command": test_server}},
        "allow": ["time/*"],
        "rules": [
            {"namespace": "team-a", "label": "role=calc", "allow": ["test/add"]},
            {"namespace": "team-a", "allow": ["test/echo"]},
            {"namespace": "team-b", "allow": []},
        ],
    }
    async with serving(config, tmp_path) as hub:

        async def names(task: Any) -> set[str]:
            return {t["name"] for t in (await hub.list_tools(task))["tools"]}

        assert await names(_task({})) == {"time/get_current_time", "time/convert_time"}
        assert await names(_task({}, namespace="team-a")) == {"test/echo"}
        assert await names(_task({"role": "calc"}, namespace="team-a")) == {"test/add"}
        assert await names(_task({"role": "calc"})) == {  # the rule is team-a's only
            "time/get_current_time",
            "time/convert_time",
        }
        assert await names(_task({}, namespace="team-b")) == set()
        with pytest.raises(PermissionDenied, match="time/get_current_time"):
            await hub.call("time/get_current_time", {}, _task({}, namespace="team-b"))
        echoed = await hub.call("test/echo", {"text": "hi"}, _task({}, namespace="team-a"))
        assert echoed["text"] == "hi"
        # The task's own label narrows its namespace's list, never widens it.
        narrow = _task({"mcp.allow": "time/*"}, namespace="team-a")
        assert await names(narrow) == set()


async def test_a_slow_tool_times_out_and_the_server_stays_usable(
    test_server: list[str],
    tmp_path: Path,
) -> None:
    async with serving({"servers": {"test": {"command": test_server}}}, tmp_path) as hub:
        with pytest.raises(DeadlineExceeded, match="0.3 s"):
            await hub.call("test/nap", {"seconds": 30}, None, timeout_s=0.3)
        assert (await hub.call("test/echo", {"text": "still here"}, None))["text"] == "still here"


async def test_a_failing_tool_is_a_result_and_bad_arguments_an_error(
    test_server: list[str],
    tmp_path: Path,
) -> None:
    async with serving({"servers": {"test": {"command": test_server}}}, tmp_path) as hub:
        result = await hub.call("test/fail", {"why": "on purpose"}, None)
        assert result["is_error"] and "fail" in result["text"]
        bad = await hub.call("test/add", {"a": "one"}, None)
        assert bad["is_error"]  # the SDK's server reports validation failures as results


async def test_a_server_that_dies_is_restarted(test_server: list[str], tmp_path: Path) -> None:
    async with serving({"servers": {"test": {"command": test_server}}}, tmp_path) as hub:
        assert (await hub.call("test/echo", {"text": "a"}, None))["text"] == "a"
        with pytest.raises(Unavailable, match="restarted"):
            await hub.call("test/crash", {}, None)
        # The next call finds a new process.
        assert (await hub.call("test/echo", {"text": "b"}, None))["text"] == "b"
        assert hub.servers["test"].starts == 2


async def test_a_server_that_cannot_start_is_reported_not_waited_for(tmp_path: Path) -> None:
    config = {
        "servers": {
            "gone": {"command": ["/nonexistent/mcp-server"], "max_restarts": 1},
            "mute": {"command": ["sleep", "60"], "connect_timeout_s": 0.5, "max_restarts": 0},
        }
    }
    async with serving(config, tmp_path) as hub:
        with anyio.fail_after(20):
            listed = await hub.list_tools(None)
        assert listed["tools"] == []
        assert set(listed["unavailable"]) == {"gone", "mute"}
        assert "connect timeout" in listed["unavailable"]["mute"]
        with pytest.raises(Unavailable, match="'gone' is down"):
            await hub.call("gone/x", {}, None)
        assert {s["state"] for s in hub.status()} == {"down"}


async def test_streamable_http_servers(http_server: str, tmp_path: Path) -> None:
    async with serving({"servers": {"web": {"url": http_server}}}, tmp_path) as hub:
        names = {t["name"] for t in (await hub.list_tools(None))["tools"]}
        assert "web/add" in names
        assert (await hub.call("web/add", {"a": 20, "b": 22}, None))["structured"] == {"result": 42}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"servers": {"x": {}}}, "needs a command or a url"),
        ({"servers": {"x": {"command": ["a"], "url": "http://h/"}}}, "needs a command or a url"),
        ({"servers": {"x": {"url": "ftp://h/"}}}, "http"),
        ({"servers": {"x": {"command": ["a"], "colour": 1}}}, "colour"),
        ({"servres": {}}, "servres"),
        ({"rules": [{"label": "nokv", "allow": []}]}, "KEY=VALUE"),
        ({"call_timeout_s": 0}, "positive"),
        ({"rules": [{"namespace": "Team A", "allow": []}]}, "invalid namespace"),
        ({"rules": [{"zone": "x", "allow": []}]}, "namespace"),
    ],
)
def test_bad_config_is_one_clear_error(config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        McpConfig.from_mapping(config)
