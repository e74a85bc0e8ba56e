"""The host-run tool loop: a chat call whose tool calls the host carries out
(docs/toolkit.md, "The tool loop").

A request is a chat request with a `loop` object:

    {"messages": [...], "model"?, "max_tokens"?, "tool_choice"? (first step only),
     "loop": {"mcp": ["time/*"] | true | false,     # MCP tools offered (allow-lists apply)
              "functions": [OpenAI function tools], # answered by the agent
              "max_steps": 8, "then": "auto" | "none",  # after the first step
              "answer_timeout_s": 300}}

Each step streams the model's answer; if it asks for tools, the host runs the MCP ones
(`server/tool`, offered to the model as `server__tool`) and asks the agent to answer the
others, feeds the results back and takes the next step, until the model answers in text
or `max_steps` is reached (with `"then": "none"` the steps after the first offer no
tools, which a small model needs to write its answer). The call's handle reads as a
model call's: `model_chat_read` gives one JSON event per read, in order:
`{"type": "text", "text"}` (a piece of the answer, as generated),
`{"type": "call", "id", "name", "arguments", "by": "host" | "agent"}` (the agent answers a
call `by` it with `tool_loop_answer`), and `{"type": "result", "id", "content",
"is_error"}`; `model_chat_result` gives the last step's `chat.completion` with `steps`
(and `"stopped": "step_limit"` when the limit ended it). Each step is in the agent log.
"""

from __future__ import annotations

import errno
import json
import re
from typing import TYPE_CHECKING, Any

import anyio

from spear.errors import InvalidArgument, SpearError
from spear.runtimes.host.model_ops import ModelCall, _refused, _router
from spear.runtimes.host.ops import HostError, add_handle

if TYPE_CHECKING:
    from spear.core.worker import TaskContext

DEFAULT_MAX_STEPS = 8
MAX_STEPS = 64
DEFAULT_ANSWER_TIMEOUT_S = 300.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class ToolLoopCall(ModelCall):
    """A tool loop's handle: a model call's reads, and the agent's answers to its calls."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._answers: dict[str, str] = {}
        self._answered = anyio.Event()

    def event(self, **fields: Any) -> None:
        self.push(json.dumps(fields, separators=(",", ":")))

    def answer(self, call_id: str, content: str) -> None:
        """The agent's answer to a call it was asked (on the event loop)."""
        self._answers[call_id] = content
        self._answered.set()
        self._answered = anyio.Event()

    async def wait_answer(self, call_id: str, timeout_s: float) -> str:
        with anyio.move_on_after(timeout_s):
            while call_id not in self._answers:
                await self._answered.wait()
            return self._answers.pop(call_id)
        return f"error: the agent did not answer within {timeout_s:g} s"


def _options(request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    loop = request.pop("loop", None)
    if not isinstance(loop, dict):
        raise InvalidArgument("a tool loop request has a `loop` object")
    unknown = set(loop) - {"mcp", "functions", "max_steps", "then", "answer_timeout_s"}
    if unknown:
        raise InvalidArgument(f"loop: unknown key(s) {', '.join(sorted(unknown))}")
    steps = loop.get("max_steps", DEFAULT_MAX_STEPS)
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InvalidArgument(f"loop.max_steps is 1..{MAX_STEPS}")
    if loop.get("then", "auto") not in ("auto", "none"):
        raise InvalidArgument('loop.then is "auto" or "none"')
    functions = loop.get("functions", [])
    if not isinstance(functions, list) or not all(
        isinstance(f, dict) and isinstance(f.get("function", {}).get("name"), str)
        for f in functions
    ):
        raise InvalidArgument("loop.functions is a list of OpenAI function tools")
    return request, loop


async def _tools(
    ctx: TaskContext, loop: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str]]]:
    """The tools offered to the model, and each offered name's (kind, real name)."""
    import fnmatch

    offered: list[dict[str, Any]] = []
    names: dict[str, tuple[str, str]] = {}
    for fn in loop.get("functions", []):
        name = fn["function"]["name"]
        offered.append({"type": "function", "function": fn["function"]})
        names[name] = ("agent", name)
    patterns = loop.get("mcp", True)
    hub = ctx.services.tools
    if patterns and hub is not None:
        globs = ["*"] if patterns is True else [str(p) for p in patterns]
        listed = await hub.list_tools(ctx.task)
        for tool in listed["tools"]:
            if not any(fnmatch.fnmatchcase(tool["name"], g) for g in globs):
                continue
            name = _UNSAFE.sub("_", tool["name"].replace("/", "__"))[:64]
            names[name] = ("mcp", tool["name"])
            offered.append(
                {
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": tool["description"],
                        "parameters": tool["input_schema"] or {"type": "object"},
                    },
                }
            )
    return offered, names


async def _step(ctx: TaskContext, call: ToolLoopCall, body: dict[str, Any]) -> dict[str, Any]:
    """One model call, its text streamed as events; its chat.completion."""
    from spear.models.base import ChatAccumulator, ChatRequest

    router = _router(ctx)
    parsed = ChatRequest.from_json(body)
    acc = ChatAccumulator(router.route(parsed.model, ctx.task).name)
    chunks = router.stream_chat(parsed, ctx.task)
    try:
        async for chunk in chunks:
            acc.add(chunk)
            if chunk.content:
                call.event(type="text", text=chunk.content)
    finally:
        with anyio.CancelScope(shield=True):
            await chunks.aclose()  # type: ignore[attr-defined]
    response: dict[str, Any] = acc.response().to_json()
    return response


async def _run_call(
    ctx: TaskContext,
    call: ToolLoopCall,
    tool_call: dict[str, Any],
    names: dict[str, tuple[str, str]],
    answer_timeout_s: float,
) -> str:
    fn = tool_call.get("function") or {}
    name, raw = str(fn.get("name")), fn.get("arguments") or "{}"
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        arguments = None
    kind, real = names.get(name, ("", name))
    call.event(
        type="call",
        id=tool_call["id"],
        name=real,
        arguments=arguments,
        by="agent" if kind == "agent" else "host",
    )
    is_error = True
    if not isinstance(arguments, dict):
        content = f"error: the arguments are not a JSON object: {raw!r}"
    elif kind == "mcp":
        try:
            result = await ctx.services.tools.call(real, arguments, ctx.task)
            content, is_error = result["text"], bool(result["is_error"])
        except SpearError as exc:
            content = f"error: {exc}"
    elif kind == "agent":
        content = await call.wait_answer(tool_call["id"], answer_timeout_s)
        is_error = content.startswith("error:")
    else:
        content = f"error: no tool {name!r}"
    call.event(type="result", id=tool_call["id"], content=content, is_error=is_error)
    return content


async def _loop(
    ctx: TaskContext, call: ToolLoopCall, request: dict[str, Any], loop: dict[str, Any]
) -> dict[str, Any]:
    tools, names = await _tools(ctx, loop)
    messages = list(request.pop("messages"))
    first_choice = request.pop("tool_choice", None)
    request.pop("tools", None)
    steps = int(loop.get("max_steps", DEFAULT_MAX_STEPS))
    timeout = float(loop.get("answer_timeout_s", DEFAULT_ANSWER_TIMEOUT_S))
    response: dict[str, Any] = {}
    for step in range(steps):
        body = {**request, "messages": messages}
        if tools and (step == 0 or loop.get("then", "auto") == "auto"):
            body["tools"] = tools
            if step == 0 and first_choice is not None:
                body["tool_choice"] = first_choice
        response = await _step(ctx, call, body)
        message = response["choices"][0]["message"]
        calls = message.get("tool_calls") or []
        if not calls:
            ctx.agent_log("INFO", f"tool loop step {step}: answered in text")
            response["steps"] = step + 1
            return response
        messages.append(
            {"role": "assistant", "content": message.get("content") or "", "tool_calls": calls}
        )
        for tool_call in calls:
            content = await _run_call(ctx, call, tool_call, names, timeout)
            fn = tool_call.get("function") or {}
            ctx.agent_log(
                "INFO",
                f"tool loop step {step}: {fn.get('name')}({fn.get('arguments')}) ->"
                f" {content[:200]!r}",
            )
            messages.append({"role": "tool", "tool_call_id": tool_call["id"], "content": content})
    ctx.agent_log("WARNING", f"tool loop stopped at its step limit ({steps})")
    response["steps"] = steps
    response["stopped"] = "step_limit"
    return response


async def tool_loop_start(ctx: TaskContext, request: Any) -> int:
    """Start a host-run tool loop; its handle (read it as a streaming model call)."""
    router = _router(ctx)
    try:
        data = json.loads(request) if isinstance(request, bytes | bytearray | str) else request
        if not isinstance(data, dict):
            raise InvalidArgument("a tool loop request is a JSON object")
        body, loop = _options(dict(data))
        router.route(body.get("model"), ctx.task)  # unknown or forbidden models fail at once
    except ValueError:
        raise HostError(errno.EINVAL, "a tool loop request is a JSON object") from None
    except SpearError as exc:
        raise _refused(ctx, exc) from None
    registry = ctx.services.streams
    call = ToolLoopCall(registry.for_task(ctx.task.id) if registry is not None else None, True)

    async def run() -> None:
        await call.run(lambda: _loop(ctx, call, body, loop), lambda exc: _refused(ctx, exc))

    try:
        router.spawn(ctx.task.id, run)
    except SpearError as exc:
        raise _refused(ctx, exc) from None
    return add_handle(ctx, call)


async def tool_loop_answer(ctx: TaskContext, handle: int, answer: Any) -> None:
    """The agent's answer `{"id", "content"}` to a call the loop asked it (by: agent)."""
    entry = ctx.handles.get(handle)
    if not isinstance(entry, ToolLoopCall):
        raise HostError(errno.EBADF, f"handle {handle} is not a tool loop")
    try:
        data = json.loads(answer) if isinstance(answer, bytes | bytearray | str) else answer
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise HostError(errno.EINVAL, 'an answer is {"id": call id, "content": text}')
    entry.answer(data["id"], str(data.get("content", "")))
