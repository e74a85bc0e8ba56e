"""The metrics collectors over a real node (LocalNode, real wasm) and a real SMS (LevelDB),
read through prometheus_client's own parser."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import anyio
import pytest
from conftest import build_wat
from wat_tasks import exits, ticker
from web_helpers import samples

from spear import FunctionSpec, LocalNode, Resources, TaskState
from spear.core.cluster import AgentInfo, NodeRecord, PlacementQuery
from spear.core.sms import MetadataServer
from spear.core.stats import LATENCY_BUCKETS, Histogram
from spear.node.inprocess import InProcessNode
from spear.store.leveldb import LevelDBKV
from spear.web.metrics import Exposition, NodeCollector, SmsCollector

if TYPE_CHECKING:
    from pathlib import Path

LOGS_TWICE = """
(module
  (import "spear" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi")
  (func (export "_start")
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 2)))
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 2)))))
"""


def test_a_histogram_counts_into_cumulative_buckets() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        h.observe(value)
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert h.count == 4 and h.sum == pytest.approx(7.65)
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


async def test_node_metrics_count_ends_latencies_waiting_tasks_and_hostcalls(
    tmp_path: Path,
) -> None:
    logs_twice = str(build_wat(LOGS_TWICE, tmp_path, "logs_twice"))
    # Room for one task at a time: the others wait for admission.
    async with LocalNode(tmp_path / "home", cpu_millis=100) as node:
        collector = NodeCollector(InProcessNode(node))
        collector.attach()
        exposition = Exposition(collector)

        async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            body, content_type = await exposition.render(None)
            assert content_type.startswith("text/plain")
            return samples(body.decode())

        before = await scrape()
        log_calls = ("spear_hostcalls_total", (("name", "log"), ("runtime", "wasm")))
        assert await node.run(FunctionSpec(logs_twice)) is not None
        failed = await node.run(FunctionSpec(str(exits(tmp_path, 3))))
        assert failed.state is TaskState.FAILED
        done = await node.run_many([FunctionSpec(logs_twice)] * 3)  # the hook's `many`
        assert {t.state for t in done} == {TaskState.COMPLETED}
        got = await scrape()
        assert got[log_calls] - before.get(log_calls, 0) == 8
        wasm = (("runtime", "wasm"),)
        default = (("namespace", "default"), *wasm)
        assert got[("spear_tasks_finished_total", (*default, ("state", "COMPLETED")))] == 4
        assert got[("spear_tasks_finished_total", (*default, ("state", "FAILED")))] == 1
        assert got[("spear_task_end_to_end_seconds_count", wasm)] == 5
        assert got[("spear_task_run_seconds_bucket", (("le", "+Inf"), *wasm))] == 5
        assert 0 < got[("spear_task_run_seconds_sum", wasm)] < 5

        # Three slow tasks on a node with room for one: one runs, two wait (one of them
        # in namespace team-a).
        slow = FunctionSpec(str(ticker(tmp_path, 2, 300)), resources=Resources(100, 1 << 20))
        team = dataclasses.replace(slow, namespace="team-a")
        tasks = [await node.submit(s) for s in (slow, slow, team)]
        with anyio.fail_after(10):
            while node.controller.waiting_count < 2:
                await anyio.sleep(0.01)
        got = await scrape()
        live = (("runtime", "wasm"), ("state", "running"))
        assert got[("spear_tasks", (("namespace", "default"), *live))] == 1
        waiting = (("runtime", "wasm"), ("state", "pending"))
        assert got[("spear_tasks", (("namespace", "default"), *waiting))] == 1
        assert got[("spear_tasks", (("namespace", "team-a"), *waiting))] == 1
        assert got[("spear_admission_queue_depth", ())] == 2
        assert got[("spear_resources_used", (("resource", "cpu_millis"),))] == 100
        assert got[("spear_resources_free", (("resource", "cpu_millis"),))] == 0
        for task in tasks:
            await node.wait(task.id)
        got = await scrape()
        assert got[("spear_admission_queue_depth", ())] == 0
        # Queue time: the last of the three waited for the two before it (0.6 s or more).
        queue_over_half_second = (
            got[("spear_task_queue_seconds_count", wasm)]
            - got[("spear_task_queue_seconds_bucket", (("le", "0.5"), *wasm))]
        )
        assert queue_over_half_second >= 1
        # Each task's result, stored by the node's own finished hook (which may run after
        # `wait` returned): the count follows the store.
        # The store's count and ours come from two hooks run one after the other: a scrape
        # between them sees the 8th result stored and not yet counted.
        with anyio.fail_after(10):
            while True:
                settled = await scrape()
                if settled[("spear_objects", ())] == 8 and (
                    settled[("spear_task_end_to_end_seconds_count", wasm)] == 8
                ):
                    break
                await anyio.sleep(0.01)
        team_done = (("namespace", "team-a"), *wasm, ("state", "COMPLETED"))
        assert settled[("spear_tasks_finished_total", team_done)] == 1
        assert settled[("spear_tasks", (("namespace", "team-a"), *waiting))] == 0  # not gone
        collector.detach()  # no longer counts
        assert (await node.run(FunctionSpec(logs_twice))).state is TaskState.COMPLETED
        after = await scrape()
        assert after[("spear_task_end_to_end_seconds_count", wasm)] == 8


async def test_sms_metrics_count_nodes_heartbeats_and_placements(tmp_path: Path) -> None:
    async with LevelDBKV.open(str(tmp_path / "sms.ldb")) as kv:
        sms = MetadataServer(kv)
        record = NodeRecord(
            name="n1",
            address="127.0.0.1:1",
            capacity=Resources(1000, 1 << 30),
            free=Resources(1000, 1 << 30),
            agents=(AgentInfo("wasm", "50"),),
            incarnation="n1-1",
        )
        await sms.register(record)
        await sms.register(NodeRecord(name="n2", address="127.0.0.1:2", incarnation="n2-1"))
        await sms.deregister("n2", "n2-1")
        for _ in range(3):
            await sms.heartbeat("n1", "n1-1", Resources(400, 1 << 29), 2, 1)
        await sms.find_nodes(PlacementQuery(Resources(100, 1), "wasm"))
        exposition = Exposition(SmsCollector(sms))
        body, _ = await exposition.render(None)
        got = samples(body.decode())
        assert got[("spear_sms_nodes", (("health", "healthy"),))] == 1
        assert got[("spear_sms_nodes", (("health", "left"),))] == 1
        assert got[("spear_sms_heartbeats_total", ())] == 3
        assert got[("spear_sms_placement_seconds_count", (("query", ""),))] == 1
        assert got[("spear_sms_node_running_tasks", (("node", "n1"),))] == 2
        assert got[("spear_sms_node_free", (("node", "n1"), ("resource", "cpu_millis")))] == 400
        assert ("spear_sms_node_running_tasks", (("node", "n2"),)) not in got
        # OpenMetrics when the scraper asks for it.
        body, content_type = await exposition.render("application/openmetrics-text")
        assert content_type.startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
