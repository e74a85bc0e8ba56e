"""One task, one trace, on a node in this process: spans caught by the SDK's in-memory
exporter, the task record naming the trace; with tracing off, nothing of OpenTelemetry
is loaded and no record names a trace."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from conftest import ROOT, build_c
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trace_helpers import by_name, parent_id, traced_node
from wat_tasks import exits as exits_wasm
from wat_tasks import hello as hello_wasm

from spear import FunctionSpec
from spear.config import Settings
from spear.core.models import Runtime, TaskState
from spear.tracing.otel import context_of
from spear.tracing.setup import otlp_traces_url

if TYPE_CHECKING:
    from pathlib import Path


async def test_a_task_its_run_and_its_hostcalls_are_one_trace(tmp_path: Path) -> None:
    counter = build_c(ROOT / "examples" / "counter" / "counter.c")  # object get and put
    exporter = InMemorySpanExporter()
    async with traced_node(tmp_path / "home", exporter) as node:
        task = await node.run(FunctionSpec(str(counter), timeout_s=60))
        assert task.state is TaskState.COMPLETED, task.reason
        stored = await node.task(task.id)  # the record, read back, names the trace
    spans = exporter.get_finished_spans()
    (task_span,) = by_name(spans, "spear.task")
    (run_span,) = by_name(spans, "spear.run")
    hostcalls = by_name(spans, "spear.hostcall")
    trace_id = f"{task_span.context.trace_id:032x}"
    assert task.trace_id == stored.trace_id == trace_id
    assert {s.context.trace_id for s in spans} == {task_span.context.trace_id}
    assert task_span.parent is None  # a task made in process starts its trace
    assert parent_id(run_span) == task_span.context.span_id
    names = {s.attributes["spear.hostcall"] for s in hostcalls if s.attributes}
    assert {"obj_get", "obj_put"} <= names, names
    assert all(parent_id(s) == run_span.context.span_id for s in hostcalls)
    assert task_span.attributes is not None
    assert task_span.attributes["spear.task.id"] == task.id
    assert task_span.attributes["spear.task.state"] == "COMPLETED"
    assert task_span.attributes["spear.task.exit_code"] == 0
    assert run_span.start_time is not None and task_span.start_time is not None
    assert task_span.start_time <= run_span.start_time
    assert run_span.end_time == task_span.end_time


async def test_a_failed_task_marks_its_spans_failed(tmp_path: Path) -> None:
    exits = exits_wasm(tmp_path, 3)
    exporter = InMemorySpanExporter()
    async with traced_node(tmp_path / "home", exporter) as node:
        task = await node.run(FunctionSpec(str(exits)))
    assert task.exit_code == 3
    (task_span,) = by_name(exporter.get_finished_spans(), "spear.task")
    assert not task_span.status.is_ok
    assert task_span.status.description == "exit status 3"
    assert task_span.attributes is not None and task_span.attributes["spear.task.exit_code"] == 3


async def test_run_many_gives_each_task_its_own_trace(tmp_path: Path) -> None:
    hello = hello_wasm(tmp_path)
    exporter = InMemorySpanExporter()
    async with traced_node(tmp_path / "home", exporter) as node:
        tasks = await node.run_many([FunctionSpec(str(hello))] * 5)
    assert {t.state for t in tasks} == {TaskState.COMPLETED}
    spans = exporter.get_finished_spans()
    task_spans = {s.attributes["spear.task.id"]: s for s in by_name(spans, "spear.task")}
    assert len({t.trace_id for t in tasks}) == 5
    for t in tasks:
        assert f"{task_spans[t.id].context.trace_id:032x}" == t.trace_id  # type: ignore[index]


async def test_a_task_made_under_a_callers_span_joins_its_trace(tmp_path: Path) -> None:
    hello = hello_wasm(tmp_path)
    exporter = InMemorySpanExporter()
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    from spear.tracing.base import current_traceparent

    async with traced_node(tmp_path / "home", exporter) as node:
        token = current_traceparent.set(caller)
        try:
            task = await node.run(FunctionSpec(str(hello)))
        finally:
            current_traceparent.reset(token)
    assert task.trace_id == "0af7651916cd43dd8448eb211c80319c"
    (task_span,) = by_name(exporter.get_finished_spans(), "spear.task")
    assert parent_id(task_span) == 0xB7AD6B7169203331


@pytest.mark.parametrize(
    "bad",
    ["", "00-zz-b7ad6b7169203331-01", "00-" + "0" * 32 + "-b7ad6b7169203331-01", "garbage"],
)
def test_a_malformed_or_empty_traceparent_starts_a_new_trace(bad: str) -> None:
    assert context_of(bad) is None


def test_the_otlp_url_gets_its_traces_path_once() -> None:
    assert otlp_traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_the_endpoint_comes_from_the_setting_else_opentelemetrys_variable(
    tmp_path: Path,
) -> None:
    env = {"SPEAR_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    assert Settings.load(env=env).trace_otlp_endpoint is None
    otel = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert Settings.load(env=otel).trace_otlp_endpoint == "http://collector:4318"
    both = {**otel, "SPEAR_TRACE_OTLP_ENDPOINT": "http://mine:4318"}
    assert Settings.load(env=both).trace_otlp_endpoint == "http://mine:4318"
    (tmp_path / "config.toml").write_text('trace_otlp_endpoint = "http://file:4318"\n')
    assert Settings.load(env=otel).trace_otlp_endpoint == "http://file:4318"


_OFF = r"""
import asyncio, sys
from spear import FunctionSpec, LocalNode

async def main():
    async with LocalNode(sys.argv[1]) as node:
        task = await node.run(FunctionSpec(sys.argv[2]))
    print(task.state.value, repr(task.traceparent), node.services.tracing)
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

asyncio.run(main())
"""

_GLOBAL = r"""
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from spear.tracing.otel import OtelTracing

tracing = OtelTracing(InMemorySpanExporter(), node_name="n", batch=False)
tracing.span("x", {}).__enter__()
print(type(trace.get_tracer_provider()).__name__)
"""


def test_with_tracing_off_no_opentelemetry_module_is_loaded(tmp_path: Path) -> None:
    hello = hello_wasm(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", _OFF, str(tmp_path / "home"), str(hello)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["COMPLETED '' None", "[]"]


def test_a_nodes_tracer_provider_is_its_own_never_the_global_one() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", _GLOBAL], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ProxyTracerProvider"  # the API's default: nothing set


async def test_a_process_agents_hostcalls_are_spans_too(tmp_path: Path) -> None:
    agent = tmp_path / "putter.py"
    agent.write_text("from spear import agent\nagent.put('k', b'v')\nagent.get('k')\n")
    exporter = InMemorySpanExporter()
    async with traced_node(tmp_path / "home", exporter) as node:
        task = await node.run(FunctionSpec(str(agent), runtime=Runtime.PROCESS, timeout_s=60))
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
    spans = exporter.get_finished_spans()
    (run_span,) = by_name(spans, "spear.run")
    ops = [s.attributes["spear.hostcall"] for s in by_name(spans, "spear.hostcall") if s.attributes]
    assert "obj_put" in ops and "obj_get" in ops, ops
    assert all(parent_id(s) == run_span.context.span_id for s in by_name(spans, "spear.hostcall"))
