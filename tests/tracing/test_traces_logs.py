"""Log lines name the trace they were written in: a traced client's batch to a traced
node (real gRPC on loopback), each task's "submitted" line on the node carrying its own
task's trace id in loguru's `extra`; lines written outside any trace carry none."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loguru import logger
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trace_helpers import OtlpReceiver
from wat_tasks import hello as hello_wasm

import spear
from spear import FunctionSpec
from spear._logging import logger as spear_logger
from spear.core.models import Task
from spear.node.client import Client
from spear.node.server import serve_spearlet
from spear.tracing.otel import OtelTracing
from spear.transport.auth import read_owner_token

if TYPE_CHECKING:
    from pathlib import Path


async def test_a_tasks_log_lines_carry_its_trace_id(tmp_path: Path) -> None:
    hello = hello_wasm(tmp_path)
    home = tmp_path / "home"
    tracing = OtelTracing(InMemorySpanExporter(), node_name="client", batch=False)
    receiver = OtlpReceiver()  # (where the node's spans go: it traces from its settings)
    records: list[dict[str, Any]] = []
    logger.enable("spear")
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG")  # type: ignore[attr-defined]
    try:
        async with spear.LocalNode(home, trace_otlp_endpoint=receiver.url) as node:
            server = await serve_spearlet(node, "127.0.0.1:0")
            try:
                assert server.address is not None
                token = read_owner_token(home)
                async with Client(server.address, token=token, tracing=tracing) as client:
                    made = await client.submit_many([FunctionSpec(str(hello))] * 2)
                    tasks = [await client.wait(t.id) for t in made if isinstance(t, Task)]
            finally:
                await server.close()
        spear_logger.info("a line outside any trace")
    finally:
        logger.remove(sink)
        logger.disable("spear")
        tracing.shutdown()
        receiver.close()
    assert len(tasks) == 2 and len({t.trace_id for t in tasks}) == 2
    for task in tasks:
        (line,) = [r for r in records if r["message"].startswith(f"task {task.id} submitted")]
        assert line["extra"].get("trace_id") == task.trace_id
    (outside,) = [r for r in records if r["message"] == "a line outside any trace"]
    assert "trace_id" not in outside["extra"]
