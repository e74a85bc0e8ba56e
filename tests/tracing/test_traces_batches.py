"""A batch through a client (`Client.submit_many`, SubmitTasks) gives each task its own
trace: a `spear.submit` span per task on the client, its context sent with that task
(`SubmitTaskRequest.traceparent`), the node's spans of the task under it. A real node
serving gRPC on loopback, exporting over OTLP/HTTP to a real receiver; the client's
spans caught by the SDK's in-memory exporter."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trace_helpers import OtlpReceiver
from wat_tasks import hello as hello_wasm

import spear
from spear import FunctionSpec, TaskState
from spear.core.models import Task
from spear.node.client import Client
from spear.node.server import serve_spearlet
from spear.tracing.otel import OtelTracing
from spear.transport.auth import read_owner_token

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("wait", [True, False])
async def test_each_task_of_a_client_batch_is_its_own_trace(tmp_path: Path, wait: bool) -> None:
    receiver = OtlpReceiver()
    hello = hello_wasm(tmp_path)
    home = tmp_path / "home"
    exporter = InMemorySpanExporter()
    tracing = OtelTracing(exporter, node_name="client", batch=False)
    try:
        async with spear.LocalNode(home, trace_otlp_endpoint=receiver.url) as node:
            server = await serve_spearlet(node, "127.0.0.1:0")
            try:
                assert server.address is not None
                token = read_owner_token(home)
                async with Client(server.address, token=token, tracing=tracing) as client:
                    made = await client.submit_many([FunctionSpec(str(hello))] * 3, wait=wait)
                    tasks = [t for t in made if isinstance(t, Task)]
                    assert len(tasks) == 3, made
                    ended = [await client.wait(t.id) for t in tasks]
            finally:
                await server.close()
        node_spans = list(receiver.spans)  # (the node exported all as it stopped)
    finally:
        receiver.close()
        tracing.shutdown()
    assert {t.state for t in ended} == {TaskState.COMPLETED}
    submits = {
        s.attributes["spear.task.id"]: s  # type: ignore[index]
        for s in exporter.get_finished_spans()
        if s.name == "spear.submit"
    }
    assert set(submits) == {t.id for t in tasks}
    assert len({t.trace_id for t in ended}) == 3  # one trace per task
    for task in ended:
        submit = submits[task.id]
        assert f"{submit.context.trace_id:032x}" == task.trace_id
        assert submit.parent is None  # the caller had no span: each its own root
        (task_span,) = [
            s
            for s in node_spans
            if s["name"] == "spear.task" and s["attributes"].get("spear.task.id") == task.id
        ]
        assert task_span["trace_id"] == task.trace_id
        assert task_span["parent"] == f"{submit.context.span_id:016x}"
