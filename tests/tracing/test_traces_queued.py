"""A task that waits in its node's scheduler queue keeps its submit's trace when it
later runs on that node: one trace from `spear.place` to its `spear.task` and
`spear.run`. A member of a real cluster in this process (SMS, gRPC on loopback, LevelDB),
exporting over OTLP/HTTP to a real receiver."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import wasmtime
from trace_helpers import OtlpReceiver
from wat_tasks import hello as hello_wasm

import spear
from spear import FunctionSpec, TaskState, join_cluster
from spear.config import Settings
from spear.transport import tls

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

LOOP_WAT = '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'


def test_a_queued_task_run_where_it_waited_keeps_its_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    receiver = OtlpReceiver()
    loop = tmp_path / "loop.wasm"
    loop.write_bytes(wasmtime.wat2wasm(LOOP_WAT))
    hello = hello_wasm(tmp_path)

    async def main() -> tuple[str, str]:
        tls.create_ca(tmp_path / "ca")
        for name in ("sms", "a"):
            tls.issue(tmp_path / "ca", name, tmp_path / name / "tls")
        async with contextlib.AsyncExitStack() as stack:
            sms = await stack.enter_async_context(spear.serve_sms(tmp_path / "sms"))
            settings = Settings(
                data_dir=tmp_path / "a", cpu_millis=100, trace_otlp_endpoint=receiver.url
            )
            node = await stack.enter_async_context(
                join_cluster(settings, sms=sms.address, listen="127.0.0.1:0", name="a")
            )
            await node.scheduler.refresh_view()
            first = await node.submit(FunctionSpec(str(loop)))  # takes the only slot
            queued = await node.submit(FunctionSpec(str(hello)))
            assert queued.task.state is TaskState.PENDING and node.scheduler.queued == 1
            await node.cancel(first.id)  # room: the queued task runs here
            done = await node.wait(queued.id)
            assert done.state is TaskState.COMPLETED, done.reason
            return queued.id, done.trace_id
        raise AssertionError("unreachable")

    try:
        task_id, trace_id = anyio.run(main)
        spans = [s for s in receiver.spans if s["attributes"].get("spear.task.id") == task_id]
    finally:
        receiver.close()
    by_name = {s["name"]: s for s in spans}
    assert {"spear.place", "spear.task", "spear.run"} <= set(by_name), spans
    place = by_name["spear.place"]
    assert place["attributes"]["spear.task.state"] == "PENDING"  # it was queued
    assert {s["trace_id"] for s in spans} == {place["trace_id"]} == {trace_id}
    assert by_name["spear.task"]["parent"] == place["span_id"]
    assert by_name["spear.run"]["parent"] == by_name["spear.task"]["span_id"]
