"""What an operator sees of a wasm guest's hostcalls: each one counted by name (the node's
`spear_hostcalls_total`, docs/observability.md) and, for a traced task, one span per call
under the task's run span, lasting as long as the call, with its answer (an error's marks
the span failed)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from conftest import build_wat
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from trace_helpers import by_name, parent_id, traced_node

from spear import FunctionSpec, LocalNode, TaskState
from spear.core.stats import hostcall_counter
from spear.runtimes.wasm.hostcalls.abi import ABI_VERSION, wasi_errno

if TYPE_CHECKING:
    from pathlib import Path

SLEEP_NS = 50_000_000
# abi_version twice, a 50 ms sleep, and obj_get of a key that does not exist (-ENOENT).
CALLS = f"""(module
  (import "spear" "abi_version" (func $version (result i32)))
  (import "spear" "sleep" (func $sleep (param i64) (result i32)))
  (import "spear" "obj_get" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "missing")
  (func (export "_start")
    (drop (call $version)) (drop (call $version))
    (drop (call $sleep (i64.const {SLEEP_NS})))
    (i32.store (i32.const 100) (i32.const 16))
    (drop (call $get (i32.const 0) (i32.const 7) (i32.const 200) (i32.const 100)
                     (i32.const 300)))))"""
NAMES = ("abi_version", "sleep", "obj_get")


def counts() -> dict[str, int]:
    return {name: hostcall_counter("wasm", name)[0] for name in NAMES}


async def test_each_hostcall_is_counted_by_name(tmp_path: Path) -> None:
    module = build_wat(CALLS, tmp_path, "calls")
    async with LocalNode(tmp_path / "home") as node:
        before = counts()
        task = await node.run(FunctionSpec(str(module), timeout_s=60))
        assert task.state is TaskState.COMPLETED, task.reason
        after = counts()
    assert {name: after[name] - before[name] for name in NAMES} == {
        "abi_version": 2,
        "sleep": 1,
        "obj_get": 1,
    }


async def test_a_traced_tasks_hostcalls_are_spans_with_their_answers(tmp_path: Path) -> None:
    module = build_wat(CALLS, tmp_path, "calls")
    exporter = InMemorySpanExporter()
    async with traced_node(tmp_path / "home", exporter) as node:
        task = await node.run(FunctionSpec(str(module), timeout_s=60))
        assert task.state is TaskState.COMPLETED, task.reason
    spans = exporter.get_finished_spans()
    (run_span,) = by_name(spans, "spear.run")
    calls = sorted(by_name(spans, "spear.hostcall"), key=lambda s: s.start_time or 0)
    assert [s.name for s in calls] == [f"spear.hostcall {n}" for n in (*NAMES[:1], *NAMES)]
    assert [s.attributes and s.attributes["spear.hostcall"] for s in calls] == [
        "abi_version",
        "abi_version",
        "sleep",
        "obj_get",
    ]
    answers = [s.attributes and s.attributes["spear.hostcall.result"] for s in calls]
    assert answers == [ABI_VERSION, ABI_VERSION, 0, -wasi_errno(errno.ENOENT)]
    assert [s.status.status_code for s in calls] == [StatusCode.UNSET] * 3 + [StatusCode.ERROR]
    assert calls[3].status.description == f"errno {wasi_errno(errno.ENOENT)}"
    assert all(parent_id(s) == run_span.context.span_id for s in calls)
    # Each span starts when its call does: within the run, and the sleep's lasts the sleep.
    assert run_span.start_time is not None and run_span.end_time is not None
    for span in calls:
        assert span.start_time is not None and span.end_time is not None
        assert run_span.start_time <= span.start_time <= span.end_time <= run_span.end_time
    sleep = calls[2]
    assert sleep.end_time is not None and sleep.start_time is not None
    # (time.time_ns at both ends, a wall clock: 10% spared for its adjustments)
    assert sleep.end_time - sleep.start_time >= SLEEP_NS * 9 // 10
