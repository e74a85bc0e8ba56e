"""Model hostcalls end to end: WASM agents (C, through sdk/c/spear.h) and Python process
agents (spear.agent) on a real LocalNode with the local SmolLM2 model."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import textwrap
from typing import TYPE_CHECKING, Any

import pytest
from conftest import ROOT, build_c
from model_fixtures import gguf  # noqa: F401 - a fixture

from spear import FunctionSpec, LocalNode
from spear.core.models import Runtime, TaskState
from spear.models import ChatRequest
from spear.runtimes.wasm.hostcalls.abi import wasi_errno

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from spear.models import ModelRouter

    NodeAt = Callable[[], LocalNode]

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "Count from one to five."}]


@pytest.fixture(scope="module")
def model_agent() -> Path:
    return build_c(ROOT / "tests" / "wasm" / "model_agent.c")


@pytest.fixture(scope="module")
def ask_wasm() -> Path:
    return build_c(ROOT / "examples" / "ask" / "ask.c")


@pytest.fixture
def down_port() -> Iterator[int]:
    """A bound socket that does not listen: connecting to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def routing(
    tmp_path: Path,
    gguf: Path,  # noqa: F811 - the fixture
    down_port: int,
) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            default = "smollm2"
            allow = ["smollm2", "down"]

            [backends.local]
            kind = "llama"
            concurrency = 1

            [models.smollm2]
            backend = "local"
            path = "{gguf}"
            max_tokens = 64

            [models.down]
            base_url = "http://127.0.0.1:{down_port}/v1"
            api_key_env = "SPEAR_TEST_DOWN_KEY"

            [models.forbidden]
            backend = "local"
            path = "{gguf}"
            """
        )
    )
    return path


@pytest.fixture
def node_at(tmp_path: Path, routing: Path, monkeypatch: pytest.MonkeyPatch) -> NodeAt:
    """A LocalNode with the routing file (entered in the test's own task)."""
    monkeypatch.setenv("SPEAR_TEST_DOWN_KEY", "sk-down-secret-42")
    return lambda: LocalNode(tmp_path / "home", models_config=str(routing))


def _router(node: LocalNode) -> ModelRouter:
    router: ModelRouter = node.services.models
    return router


def _req(**fields: Any) -> str:
    return json.dumps({"messages": ASK, "temperature": 0, "max_tokens": 24, **fields})


async def _run_agent(node: LocalNode, agent: Path, *args: str) -> tuple[Any, bytes]:
    task = await node.run(FunctionSpec(str(agent), args=args, timeout_s=120))
    return task, await node.logs_of(task.id, "stdout")


async def test_wasm_stream_delivers_tokens_in_order(node_at: NodeAt, model_agent: Path) -> None:
    async with node_at() as node:
        task, out = await _run_agent(node, model_agent, "stream", _req())
        assert task.state is TaskState.COMPLETED, out
        text, _, result = out.partition(b"\x1d")
        pieces = [p.decode() for p in text.split(b"\x1e")[:-1]]
        # the same request straight through the router: the same pieces, in the same order
        chunks = _router(node).stream_chat(ChatRequest.from_json(_req()))
        async with contextlib.aclosing(chunks) as c:
            direct = [chunk.content async for chunk in c if chunk.content]
        assert len(pieces) > 3 and pieces == direct
        response = json.loads(result)
        assert response["object"] == "chat.completion" and response["model"] == "smollm2"
        assert response["choices"][0]["message"]["content"] == "".join(pieces)


async def test_wasm_chat_and_embeddings(node_at: NodeAt, model_agent: Path) -> None:
    async with node_at() as node:
        task, out = await _run_agent(node, model_agent, "chat", _req())
        assert task.state is TaskState.COMPLETED, out
        assert json.loads(out)["choices"][0]["message"]["content"].strip()
        task, out = await _run_agent(node, model_agent, "embed", '{"input": ["a", "b"]}')
        assert task.state is TaskState.COMPLETED, out
        data = json.loads(out)["data"]
        assert len(data) == 2 and len(data[0]["embedding"]) > 100


@pytest.mark.parametrize(
    ("mode", "request_json", "err", "words"),
    [
        ("chat", '{"messages": "hi"}', errno.EINVAL, ""),
        ("chat", _req(model="gpt-9"), errno.ENOENT, ""),
        ("chat", _req(model="forbidden"), errno.EACCES, ""),
        ("stream", _req(model="down"), errno.ECONNREFUSED, "is down"),
        ("chat", _req(max_tokens=-1), errno.EINVAL, ""),
    ],
)
async def test_wasm_errors_are_codes_with_messages(
    node_at: NodeAt, model_agent: Path, mode: str, request_json: str, err: int, words: str
) -> None:
    async with node_at() as node:
        task, out = await _run_agent(node, model_agent, mode, request_json)
        assert task.state is TaskState.FAILED and task.exit_code == 3, out
        code, _, message = out.decode().removeprefix("ERR ").partition(" ")
        assert int(code) == wasi_errno(err), out
        assert words in message
        assert "sk-down-secret" not in out.decode()
        agent_log = (await node.logs_of(task.id, "agent")).decode()
        assert "model call failed" in agent_log and "sk-down-secret" not in agent_log


async def test_ask_example_stores_the_answer(node_at: NodeAt, ask_wasm: Path) -> None:
    async with node_at() as node:
        spec = FunctionSpec(
            str(ask_wasm),
            args=("What is the capital of France?",),
            env=(("ANSWER_KEY", "answers/france"),),
            timeout_s=120,
        )
        task = await node.run(spec)
        out = await node.logs_of(task.id, "stdout")
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        value, version = await node.objects.get("answers/france")
        assert version >= 1 and bytes(value).strip()
        assert bytes(value).strip() == out.strip()


async def test_cancel_mid_stream_frees_the_slot(node_at: NodeAt, model_agent: Path) -> None:
    async with node_at() as node:
        long = json.dumps(
            {
                "messages": [{"role": "user", "content": "Count from 1 to 500, one per line."}],
                "max_tokens": 64,
                "temperature": 0,
            }
        )
        limiter = _router(node).limiter("local")
        task = await node.submit(FunctionSpec(str(model_agent), args=("stream", long)))
        deadline = asyncio.get_running_loop().time() + 60
        while b"\x1e" not in await node.logs_of(task.id, "stdout"):  # the first token is out
            assert asyncio.get_running_loop().time() < deadline, "no token within 60 s"
            await asyncio.sleep(0.02)
        assert limiter.in_use == 1
        final = await node.cancel(task.id)
        assert final.state is TaskState.CANCELLED
        while limiter.in_use:
            assert asyncio.get_running_loop().time() < deadline, "the slot stayed taken"
            await asyncio.sleep(0.02)
        # the backend serves the next call at once
        task, out = await _run_agent(node, model_agent, "chat", _req(max_tokens=4))
        assert task.state is TaskState.COMPLETED, out


async def test_many_agents_share_one_slot_fairly(node_at: NodeAt, model_agent: Path) -> None:
    async with node_at() as node:
        limiter = _router(node).limiter("local")
        seen = {"in_use": 0, "waiting": 0}
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                seen["in_use"] = max(seen["in_use"], limiter.in_use)
                seen["waiting"] = max(seen["waiting"], limiter.waiting)
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        tasks = await asyncio.gather(
            *(
                node.run(FunctionSpec(str(model_agent), args=("chat", _req(max_tokens=8))))
                for _ in range(4)
            )
        )
        stop.set()
        await watcher
        assert all(t.state is TaskState.COMPLETED for t in tasks)
        assert seen["in_use"] == 1  # never more inferences than the backend's limit
        assert seen["waiting"] >= 1  # the others queued
        assert limiter.in_use == 0 and limiter.waiting == 0


SDK_AGENT = """
import errno, json, sys
from spear import agent
out = {}
stream = agent.chat_stream([{"role": "user", "content": "Count from one to five."}],
                           max_tokens=24, temperature=0)
out["pieces"] = list(stream)
out["response"] = stream.response
out["embed"] = len(agent.embed(["x", "y"])[1])
for name, kwargs in [("unknown", {"model": "gpt-9"}), ("forbidden", {"model": "forbidden"}),
                     ("down", {"model": "down"}), ("bad", {"max_tokens": 0})]:
    try:
        agent.chat([{"role": "user", "content": "hi"}], **kwargs)
        out[name] = "no error"
    except agent.HostcallError as exc:
        out[name] = [errno.errorcode[exc.errno], str(exc)]
import asyncio
async def async_calls():
    async with agent.AsyncAgent() as a:
        stream = await a.chat_stream([{"role": "user", "content": "Count from one to five."}],
                                     max_tokens=24, temperature=0)
        pieces = [p async for p in stream]
        whole = await a.chat([{"role": "user", "content": "Count from one to five."}],
                             max_tokens=24, temperature=0)
        return pieces, whole, len((await a.embed("x"))[0])
pieces, whole, dims = asyncio.run(async_calls())
out["async"] = [pieces == out["pieces"], whole["choices"][0]["message"]["content"], dims]
agent.set_result(json.dumps(out).encode())
"""


async def test_process_agent_sdk(node_at: NodeAt, tmp_path: Path) -> None:
    async with node_at() as node:
        script = tmp_path / "sdk_agent.py"
        script.write_text(SDK_AGENT)
        task = await node.run(FunctionSpec(str(script), runtime=Runtime.PROCESS, timeout_s=120))
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        value, _ = await node.objects.get(f"results/{task.id}")
        out = json.loads(bytes(value))
        assert len(out["pieces"]) > 3
        assert out["response"]["choices"][0]["message"]["content"] == "".join(out["pieces"])
        assert out["embed"] > 100
        assert out["unknown"][0] == "ENOENT" and "gpt-9" in out["unknown"][1]
        assert out["forbidden"][0] == "EACCES"
        assert out["down"][0] == "ECONNREFUSED" and "sk-down-secret" not in out["down"][1]
        assert out["bad"][0] == "EINVAL"
        assert out["async"] == [True, "".join(out["pieces"]), out["embed"]]


async def test_tool_agent_example(node_at: NodeAt) -> None:
    async with node_at() as node:
        script = ROOT / "examples" / "tool_agent" / "tool_agent.py"
        spec = FunctionSpec(
            str(script), runtime=Runtime.PROCESS, args=("What is 17 times 23?",), timeout_s=120
        )
        task = await node.run(spec)
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        steps = (await node.logs_of(task.id, "agent")).decode()
        assert "multiply(" in steps and "answer" in steps  # a tool ran, then the model answered
        value, _ = await node.objects.get(f"results/{task.id}")
        assert bytes(value).strip()
