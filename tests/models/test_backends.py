"""Both backends with a real model: the OpenAI-compatible one against llama-cpp-python's
own server on loopback, the local one in process (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

import pytest
from model_fixtures import gguf, model_server  # noqa: F401 - fixtures

from spear.errors import InvalidArgument, PermissionDenied
from spear.models import ChatRequest, ModelRouter, RoutingConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from model_fixtures import ModelServer

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Name three colors."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _request(**fields: Any) -> ChatRequest:
    return ChatRequest.from_json({"messages": QUESTION, "temperature": 0, **fields})


@pytest.fixture(params=["openai", "local"])
async def router(
    request: pytest.FixtureRequest,
    gguf: Path,  # noqa: F811 - the fixture
) -> AsyncIterator[tuple[str, ModelRouter]]:
    """A router whose model `chat` (and `embed`) is served by the backend under test."""
    if request.param == "openai":
        server: ModelServer = request.getfixturevalue("model_server")
        config = {
            "backends": {
                "srv": {
                    "kind": "openai",
                    "base_url": server.base_url,
                    "api_key_env": "SRV_KEY",
                    "concurrency": 2,
                }
            },
            "models": {
                "chat": {"backend": "srv", "name": "smollm2", "max_tokens": 48},
                "embed": {"backend": "srv", "name": "smollm2-embed"},
            },
        }
        env = {"SRV_KEY": server.api_key}
    else:
        config = {
            "backends": {"local": {"kind": "llama", "concurrency": 1}},
            "models": {
                "chat": {"backend": "local", "path": str(gguf), "max_tokens": 48},
                "embed": {"backend": "local", "path": str(gguf)},
            },
        }
        env = {}
    r = ModelRouter(RoutingConfig.from_mapping({"default": "chat", **config}), env)
    try:
        yield request.param, r
    finally:
        await r.aclose()


async def _pieces(router: ModelRouter, request: ChatRequest) -> list[str]:
    async with contextlib.aclosing(router.stream_chat(request)) as chunks:
        return [c.content async for c in chunks if c.content]


async def test_chat_answers(router: tuple[str, ModelRouter]) -> None:
    _, r = router
    response = await r.chat(_request(max_tokens=24))
    assert response.model == "chat"
    assert response.content and response.content.strip()
    assert response.finish_reason in ("stop", "length")
    assert 0 < response.usage.completion_tokens <= 24


async def test_stream_delivers_the_same_text_in_order(router: tuple[str, ModelRouter]) -> None:
    _, r = router
    whole = await r.chat(_request(max_tokens=24))
    pieces = await _pieces(r, _request(max_tokens=24))
    assert len(pieces) > 3  # token by token, not all at once
    assert "".join(pieces) == whole.content
    assert r.limiter(r.config.models["chat"].backend).in_use == 0


async def test_tool_call(router: tuple[str, ModelRouter]) -> None:
    _, r = router
    request = ChatRequest.from_json(
        {
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "temperature": 0,
        }
    )
    response = await r.chat(request)
    assert len(response.tool_calls) == 1
    call = response.tool_calls[0]
    assert call.name == "get_weather"
    assert isinstance(json.loads(call.arguments), dict)
    assert response.to_json()["choices"][0]["message"]["tool_calls"][0]["type"] == "function"


async def test_embeddings(router: tuple[str, ModelRouter]) -> None:
    _, r = router
    batch = await r.embed(["a cat", "a dog", "a cat"], "embed")
    assert len(batch.vectors) == 3
    assert len(batch.vectors[0]) == len(batch.vectors[1]) > 100
    # one input at a time (llama.cpp's server mixes up the rows of an unpooled batch)
    cat = (await r.embed(["a cat"], "embed")).vectors[0]
    again = (await r.embed("a cat".split("|"), "embed")).vectors[0]
    dog = (await r.embed(["a dog"], "embed")).vectors[0]
    assert cat == pytest.approx(again, rel=1e-4, abs=1e-5)
    assert cat != pytest.approx(dog, rel=1e-3)


async def test_backend_refusal_is_invalid_argument(router: tuple[str, ModelRouter]) -> None:
    _, r = router
    # a prompt far over the model's context: both backends refuse it, with a reason
    huge = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(InvalidArgument, match="."):
        await r.chat(ChatRequest.from_json({"messages": huge}))
    assert r.limiter(r.config.models["chat"].backend).in_use == 0


async def test_wrong_api_key_is_permission_denied(
    model_server: ModelServer,  # noqa: F811 - the fixture
) -> None:
    config = RoutingConfig.from_mapping(
        {"models": {"m": {"base_url": model_server.base_url, "api_key_env": "K"}}}
    )
    r = ModelRouter(config, {"K": "sk-wrong-key"})
    try:
        with pytest.raises(PermissionDenied, match="refused the credential") as info:
            await r.chat(ChatRequest.from_json({"model": "m", "messages": QUESTION}))
        assert "sk-wrong-key" not in str(info.value)
    finally:
        await r.aclose()
