"""The ModelBackend seam: chat completions (whole or streamed, tool calls included) and
embeddings, in the shapes of the OpenAI API that agents already know.

Requests and responses are plain frozen dataclasses; `ChatRequest.from_json` validates what
an agent sends and `ChatResponse.to_json` is what it gets back (a `chat.completion`
object). A backend serves a `target`: the name its endpoint knows, or a GGUF file path.
"""

from __future__ import annotations

import abc
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anyio.abc import AsyncResource

from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

_ROLES = frozenset({"system", "user", "assistant", "tool"})
# Request fields passed through to the backend as they are, beside messages and tools.
_SAMPLING = ("temperature", "top_p", "stop", "seed", "response_format")
_KNOWN = frozenset(
    {"model", "messages", "tools", "tool_choice", "max_tokens", "stream", *_SAMPLING}
)


def _json(data: Any, what: str) -> Any:
    """An agent's request as given (a dict ...) or parsed from JSON text or bytes."""
    if isinstance(data, bytes | bytearray | memoryview):
        data = bytes(data).decode("utf-8", errors="replace")
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError as exc:
            raise InvalidArgument(f"bad {what} request: not JSON: {exc}") from None
    return data


def _fail(message: str) -> InvalidArgument:
    return InvalidArgument(f"bad chat request: {message}")


def _check_message(i: int, message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise _fail(f"messages[{i}] is not an object")
    role = message.get("role")
    if role not in _ROLES:
        raise _fail(f"messages[{i}].role must be one of {sorted(_ROLES)}, not {role!r}")
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise _fail(f"messages[{i}].content must be a string")
    if content is None and not (role == "assistant" and message.get("tool_calls")):
        raise _fail(f"messages[{i}] has no content")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _fail(f"messages[{i}] (a tool result) needs a tool_call_id")
    return message


def _check_tool(i: int, tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise _fail(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}')
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise _fail(f"tools[{i}].function needs a name")
    return tool


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion request (OpenAI's fields; `model` None means the default)."""

    messages: tuple[dict[str, Any], ...]
    model: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    max_tokens: int | None = None
    sampling: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> ChatRequest:
        """Validate an agent's request (a dict, or JSON text/bytes)."""
        data = _json(data, "chat")
        if not isinstance(data, dict):
            raise _fail("not a JSON object")
        unknown = sorted(set(data) - _KNOWN)
        if unknown:
            raise _fail(f"unknown field(s) {', '.join(unknown)}")
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _fail("messages must be a non-empty list")
        model = data.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise _fail("model must be a non-empty string")
        tools = data.get("tools") or []
        if not isinstance(tools, list):
            raise _fail("tools must be a list")
        max_tokens = data.get("max_tokens")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise _fail("max_tokens must be a positive integer")
        for name in ("temperature", "top_p"):
            value = data.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise _fail(f"{name} must be a number")
        return cls(
            messages=tuple(_check_message(i, m) for i, m in enumerate(messages)),
            model=model,
            tools=tuple(_check_tool(i, t) for i, t in enumerate(tools)),
            tool_choice=data.get("tool_choice"),
            max_tokens=max_tokens,
            sampling=tuple((k, data[k]) for k in _SAMPLING if data.get(k) is not None),
        )

    def body(self, target: str, max_tokens: int) -> dict[str, Any]:
        """The OpenAI request body for `target` (the endpoint's model name)."""
        out: dict[str, Any] = {
            "model": target,
            "messages": list(self.messages),
            "max_tokens": max_tokens,
            **dict(self.sampling),
        }
        if self.tools:
            out["tools"] = list(self.tools)
            if self.tool_choice is not None:
                out["tool_choice"] = self.tool_choice
        return out


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A finished chat completion."""

    model: str
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)

    def to_json(self) -> dict[str, Any]:
        """An OpenAI `chat.completion` object."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [t.to_json() for t in self.tool_calls]
        return {
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage.to_json(),
        }

    @classmethod
    def from_openai(cls, data: dict[str, Any], model: str) -> ChatResponse:
        """Read an OpenAI `chat.completion` object (what a backend answered)."""
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            calls = tuple(
                ToolCall(
                    str(c.get("id") or f"call_{i}"),
                    str(c["function"]["name"]),
                    _arguments(c["function"].get("arguments")),
                )
                for i, c in enumerate(message.get("tool_calls") or ())
            )
            usage = data.get("usage") or {}
            return cls(
                model=model,
                content=message.get("content"),
                tool_calls=calls,
                finish_reason=str(choice.get("finish_reason") or "stop"),
                usage=Usage(
                    int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                ),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"the model's answer is not a chat completion: {exc}") from None


def _arguments(raw: Any) -> str:
    return raw if isinstance(raw, str) else json.dumps(raw if raw is not None else {})


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: pieces with the same index belong together."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One piece of a streamed completion."""

    content: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None

    @classmethod
    def from_openai(cls, data: dict[str, Any]) -> ChatChunk:
        """Read an OpenAI `chat.completion.chunk` object."""
        choices = data.get("choices") or [{}]
        delta = choices[0].get("delta") or {}
        calls = tuple(
            ToolCallDelta(
                int(c.get("index", 0)),
                c.get("id"),
                (c.get("function") or {}).get("name"),
                _arguments((c.get("function") or {}).get("arguments") or ""),
            )
            for c in delta.get("tool_calls") or ()
        )
        usage = data.get("usage")
        return cls(
            content=delta.get("content") or "",
            tool_calls=calls,
            finish_reason=choices[0].get("finish_reason"),
            usage=(
                Usage(
                    int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                )
                if usage
                else None
            ),
        )


class ChatAccumulator:
    """Builds the final response of a stream from its chunks."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.parts: list[str] = []
        self.calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        self.finish_reason = "stop"
        self.usage: Usage | None = None
        self.pieces = 0

    def add(self, chunk: ChatChunk) -> None:
        if chunk.content:
            self.parts.append(chunk.content)
            self.pieces += 1
        for d in chunk.tool_calls:
            call = self.calls.setdefault(d.index, ["", "", ""])
            call[0] = d.id or call[0]
            call[1] = d.name or call[1]
            call[2] += d.arguments
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage

    def response(self) -> ChatResponse:
        calls = tuple(
            ToolCall(c[0] or f"call_{i}", c[1], c[2] or "{}") for i, c in sorted(self.calls.items())
        )
        return ChatResponse(
            model=self.model,
            content="".join(self.parts) if self.parts or not calls else None,
            tool_calls=calls,
            finish_reason=self.finish_reason,
            usage=self.usage or Usage(0, self.pieces),
        )


@dataclass(frozen=True, slots=True)
class EmbeddingResponse:
    model: str
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        """An OpenAI embeddings `list` object."""
        return {
            "object": "list",
            "model": self.model,
            "data": [
                {"object": "embedding", "index": i, "embedding": list(v)}
                for i, v in enumerate(self.vectors)
            ],
            "usage": {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens},
        }


def embedding_inputs(data: Any) -> tuple[str | None, tuple[str, ...]]:
    """(model, inputs) of an embeddings request `{"model"?, "input": str | [str]}`."""
    data = _json(data, "embeddings")
    if not isinstance(data, dict) or set(data) - {"model", "input"}:
        raise InvalidArgument('bad embeddings request: expected {"model"?, "input"}')
    raw = data.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
        raise InvalidArgument("bad embeddings request: input must be a string or strings")
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidArgument("bad embeddings request: model must be a non-empty string")
    return model, tuple(inputs)


class ModelBackend(AsyncResource):
    """Where inference happens: an HTTP endpoint, or llama.cpp in this process.

    Backends raise spear errors only: InvalidArgument (the backend refused the request),
    PermissionDenied (a credential was refused), Unavailable (down or broken),
    DeadlineExceeded (timed out).
    """

    name: str

    @abc.abstractmethod
    async def chat(self, target: str, request: ChatRequest, max_tokens: int) -> ChatResponse:
        """The whole completion at once."""

    @abc.abstractmethod
    def stream_chat(
        self, target: str, request: ChatRequest, max_tokens: int
    ) -> AsyncIterator[ChatChunk]:
        """The completion piece by piece, as produced (close the iterator to stop early)."""

    @abc.abstractmethod
    async def embed(self, target: str, inputs: Sequence[str]) -> EmbeddingResponse: ...

    async def aclose(self) -> None:
        """Release connections, threads and loaded models."""
