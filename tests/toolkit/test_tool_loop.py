# ruff: noqa: F811 - the fixtures imported from their modules are redefined as parameters
"""The host-run tool loop (runtimes/host/tool_loop.py) on a real LocalNode: the embedded
SmolLM2 and the OpenAI-compatible llama.cpp server, MCP tools run by the host and a
function answered by the agent, through spear.agent."""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING

import pytest
from mcp_fixtures import test_server  # noqa: F401 - fixtures
from models.model_fixtures import gguf, model_server  # noqa: F401 - fixtures

from spear import FunctionSpec, LocalNode
from spear.core.models import Runtime, TaskState

if TYPE_CHECKING:
    from pathlib import Path

    from models.model_fixtures import ModelServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # (slow on a busy 2-core machine)

AGENT = """
import json, sys
from spear import agent
a = agent.Agent()
ask = [{"role": "user", "content": "What is 17 plus 25? Use the tool."}]
force = lambda name: {"type": "function", "function": {"name": name}}
# MCP tools, run by the host.
loop = a.chat_loop(ask, mcp=["test/add"], then="none", max_steps=3, max_tokens=48,
                   temperature=0, tool_choice=force("test__add"))
events = list(loop.events())
out = {"mcp_events": events, "mcp_steps": loop.response["steps"]}
if sys.argv[1:] == ["mcp-only"]:  # (a slow endpoint: one loop is enough)
    a.set_result(json.dumps(out).encode())
    sys.exit(0)
# A function the agent answers itself.
schema = {"description": "Multiply two integers.", "parameters": {"type": "object",
          "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
          "required": ["a", "b"]}}
calls = []
def multiply(a, b):
    calls.append([a, b])
    return a * b
loop = a.chat_loop(ask, mcp=False, functions={"multiply": (schema, multiply)}, then="none",
                   max_steps=2, max_tokens=48, temperature=0, tool_choice=force("multiply"))
events = list(loop.events())
out["fn_events"] = events
out["fn_calls"] = calls
out["answer"] = loop.response["choices"][0]["message"]["content"]
a.set_result(json.dumps(out).encode())
"""


def _config(tmp_path: Path, test_server: list[str], models: str) -> tuple[Path, Path]:
    mcp = tmp_path / "mcp.toml"
    mcp.write_text(f"[servers.test]\ncommand = {json.dumps(test_server)}\n")
    routing = tmp_path / "models.toml"
    routing.write_text(textwrap.dedent(models))
    return mcp, routing


async def _run(
    tmp_path: Path, mcp: Path, routing: Path, *args: str
) -> tuple[dict[str, object], str]:
    script = tmp_path / "loop_agent.py"
    script.write_text(AGENT)
    async with LocalNode(
        tmp_path / "home", mcp_config=str(mcp), models_config=str(routing)
    ) as node:
        spec = FunctionSpec(str(script), runtime=Runtime.PROCESS, args=args, timeout_s=850)
        task = await node.run(spec)
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        value, _ = await node.objects.get(f"results/{task.id}")
        return json.loads(bytes(value)), (await node.logs_of(task.id, "agent")).decode()


def _check(out: dict[str, object], log: str) -> None:
    events = out["mcp_events"]
    assert isinstance(events, list)
    kinds = [e["type"] for e in events]
    call = next(e for e in events if e["type"] == "call")
    assert call["name"] == "test/add" and call["by"] == "host"
    result = next(e for e in events if e["type"] == "result")
    args = call["arguments"]
    if isinstance(args, dict) and isinstance(args.get("a"), int) and isinstance(args.get("b"), int):
        assert result["content"] == str(args["a"] + args["b"])  # the real server answered
    assert kinds.index("call") < kinds.index("result")
    assert "text" in kinds[kinds.index("result") :]  # the next step streamed its answer
    assert out["mcp_steps"] == 2
    assert "tool loop step 0: test__add(" in log and "tool loop step 1: answered" in log
    if "fn_events" not in out:
        return
    fn_events = out["fn_events"]
    assert isinstance(fn_events, list)
    fn_call = next(e for e in fn_events if e["type"] == "call")
    assert fn_call["by"] == "agent" and fn_call["name"] == "multiply"
    fn_calls = out["fn_calls"]
    assert isinstance(fn_calls, list) and len(fn_calls) == 1
    fn_result = next(e for e in fn_events if e["type"] == "result")
    assert fn_result["content"] == str(fn_calls[0][0] * fn_calls[0][1])
    assert out["answer"]


async def test_tool_loop_on_the_embedded_model(
    tmp_path: Path, gguf: Path, test_server: list[str]
) -> None:
    mcp, routing = _config(
        tmp_path,
        test_server,
        f"""
        default = "smollm2"
        [backends.local]
        kind = "llama"
        concurrency = 1
        [models.smollm2]
        backend = "local"
        path = "{gguf}"
        max_tokens = 64
        timeout_s = 600
        """,
    )
    _check(*await _run(tmp_path, mcp, routing))


async def test_tool_loop_on_an_openai_compatible_endpoint(
    tmp_path: Path,
    model_server: ModelServer,
    test_server: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOOP_TEST_KEY", model_server.api_key)
    mcp, routing = _config(
        tmp_path,
        test_server,
        f"""
        default = "remote"
        [backends.srv]
        kind = "openai"
        base_url = "{model_server.base_url}"
        api_key_env = "LOOP_TEST_KEY"
        [models.remote]
        backend = "srv"
        name = "smollm2"
        max_tokens = 64
        timeout_s = 600
        """,
    )
    _check(*await _run(tmp_path, mcp, routing, "mcp-only"))
