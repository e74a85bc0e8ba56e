"""A traced task's model calls are spans under its run (the embedded SmolLM2 model)."""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING

from conftest import ROOT, build_c
from model_fixtures import gguf  # noqa: F401 - a fixture
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trace_helpers import by_name, parent_id, traced_node

from spear import FunctionSpec
from spear.core.models import TaskState

if TYPE_CHECKING:
    from pathlib import Path


async def test_model_calls_are_spans_under_the_run(
    tmp_path: Path,
    gguf: Path,  # noqa: F811 - the fixture
) -> None:
    routing = tmp_path / "models.toml"
    routing.write_text(
        textwrap.dedent(
            f"""
            default = "smollm2"
            allow = ["smollm2"]
            [backends.local]
            kind = "llama"
            concurrency = 1
            [models.smollm2]
            backend = "local"
            path = "{gguf}"
            max_tokens = 8
            """
        )
    )
    agent = build_c(ROOT / "tests" / "wasm" / "model_agent.c")
    request = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    exporter = InMemorySpanExporter()
    async with traced_node(tmp_path / "home", exporter, models_config=str(routing)) as node:
        task = await node.run(FunctionSpec(str(agent), args=("chat", request), timeout_s=120))
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
    spans = exporter.get_finished_spans()
    (run_span,) = by_name(spans, "spear.run")
    (model_span,) = by_name(spans, "spear.model chat")
    assert parent_id(model_span) == run_span.context.span_id
    assert model_span.attributes is not None and model_span.attributes["spear.model"] == "smollm2"
    assert model_span.status.is_ok
