"""Two-stage scheduling across real SPEARlet processes: local first, spill-over, labels,
data affinity, the FIFO wait, tasks no node can ever run, and everything from any node."""
# ruff: noqa: F401, F811  (fixtures imported from helpers.py are used as arguments)

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from conftest import ROOT, build_c, build_wat
from helpers import (  # fixtures too: loop_wasm, make_cluster
    assert_eventually,
    cluster_credentials,
    loop_wasm,
    make_cluster,
    nodes_json,
    sms_call,
    sms_state,
    spear,
)
from wat_tasks import blob, blob_bytes

from spear.core.cluster import INPUTS_LABEL
from spear.core.models import FunctionSpec, Resources, TaskState
from spear.errors import InvalidModule, NotFound
from spear.node.client import Client

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
ONE = Resources(100, 64 * MiB)  # a task's default reservation

HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from afar\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 16))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


def on(address: str, fn: Any) -> Any:
    async def main() -> Any:
        async with Client(address, credentials=cluster_credentials()) as client:
            return await fn(client)

    return anyio.run(main)


def submit(address: str, spec: FunctionSpec) -> str:
    async def go(c: Client) -> str:
        return (await c.submit(spec)).id

    return on(address, go)  # type: ignore[no-any-return]


def sms_node_of(sms: str, task_id: str) -> str | None:
    """The node the SMS has the task on, None while no report of it arrived yet (a task run
    where it was sent is reported after it ends, in the node's next batch of reports)."""
    try:
        return sms_call(sms, "task", task_id).node  # type: ignore[no-any-return]
    except NotFound:
        return None


def test_local_first_then_spill_over_then_fifo_wait(make_cluster: Any, loop_wasm: Path) -> None:
    one_slot = {"cpu_millis": 100}
    cluster = make_cluster(nodes=2, node_settings={"node-1": one_slot, "node-2": one_slot})
    sms = cluster.sms.address
    n1, n2 = cluster.member("node-1").address, cluster.member("node-2").address
    spec = FunctionSpec(str(loop_wasm))
    first = submit(n1, spec)  # fits node-1: runs there
    assert_eventually(lambda: sms_state(sms, first) is TaskState.RUNNING)
    assert sms_node_of(sms, first) == "node-1"
    # node-1's heartbeat must show it full before the SMS steers around it; the second
    # task is sent by node-1 itself, which knows it is full.
    second = submit(n1, spec)
    assert_eventually(lambda: sms_state(sms, second) is TaskState.RUNNING)
    assert sms_node_of(sms, second) == "node-2"  # forwarded, same id
    third = submit(n1, spec)  # no room anywhere: waits, PENDING at node-1
    assert_eventually(lambda: sms_state(sms, third) is TaskState.PENDING)
    fourth = submit(n1, spec)
    # Stopping the first (from node-2, which proxies to node-1) frees node-1: the oldest
    # waiting task goes first.
    stop = spear("stop", "--node", n2, first)
    assert stop.returncode == 0, stop.stderr
    assert_eventually(lambda: sms_state(sms, third) is TaskState.RUNNING)
    assert sms_node_of(sms, third) == "node-1"
    assert_eventually(lambda: sms_state(sms, fourth) is TaskState.PENDING)
    # A waiting task can be stopped from any node too.
    stopped = spear("stop", "--node", n2, fourth)
    assert stopped.returncode == 0, stopped.stderr
    assert_eventually(lambda: sms_state(sms, fourth) is TaskState.CANCELLED)
    for task_id in (second, third):
        assert spear("stop", "--node", n1, task_id).returncode == 0


def test_a_task_no_node_can_ever_run_fails_at_once(make_cluster: Any, loop_wasm: Path) -> None:
    cluster = make_cluster(nodes=2)
    n1 = cluster.member("node-1").address
    huge = FunctionSpec(str(loop_wasm), resources=Resources(10**9, 64 * MiB))

    task_id = submit(n1, huge)
    task = on(n1, lambda c: c.task(task_id))
    assert task.state is TaskState.FAILED
    assert "no node in the cluster can run this task" in (task.reason or "")
    assert "no live node is that large" in (task.reason or "")
    labelled = FunctionSpec(str(loop_wasm), labels=(("gpu", "h100"),))
    labelled_id = submit(n1, labelled)
    failed = on(n1, lambda c: c.task(labelled_id))
    assert failed.state is TaskState.FAILED and "gpu=h100" in (failed.reason or "")


def test_label_affinity_sends_the_task_to_the_labelled_node(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=2, node_settings={"node-2": {"labels": {"zone": "b"}}})
    sms = cluster.sms.address
    n1, n2 = cluster.member("node-1").address, cluster.member("node-2").address
    hello = build_wat(HELLO_WAT, tmp_path, "hello")
    task_id = submit(n1, FunctionSpec(str(hello), labels=(("zone", "b"),)))
    # A task-side label (the MCP tools it may call) is no node selector: it runs (before:
    # "no live node has the labels mcp.allow=time/*").
    narrowed = spear("submit", "--wait", "--node", n1, "--label", "mcp.allow=time/*", str(hello))
    assert narrowed.returncode == 0, narrowed.stderr
    # Everything from the receiving node, which does not run it: wait, result, logs, status.
    result = on(n1, lambda c: c.result(task_id))
    assert result.task.state is TaskState.COMPLETED and result.task.node == "node-2"
    assert result.output == b"hello from afar\n"
    logs = spear("logs", "--node", n1, task_id, "--stream", "stdout")
    assert logs.returncode == 0 and logs.stdout == "hello from afar\n", logs.stderr
    status = spear("status", "--node", n1, task_id, "--json")
    assert status.returncode == 0 and '"node-2"' in status.stdout
    # A unique prefix of its id, asked of the node that does not hold it: the SMS resolves.
    status = spear("status", "--node", n1, task_id[:14], "--json")
    assert status.returncode == 0 and f'"id": "{task_id}"' in status.stdout, status.stderr
    logs = spear("logs", "--node", n1, task_id[:14], "--stream", "stdout")
    assert logs.stdout == "hello from afar\n", logs.stderr
    assert sms_node_of(sms, task_id) == "node-2"
    assert on(n2, lambda c: c.task(task_id)).state is TaskState.COMPLETED
    follow = spear("logs", "--node", n1, "-f", task_id, "--stream", "stdout")
    assert follow.returncode == 0 and follow.stdout == "hello from afar\n", follow.stderr

    async def watch(c: Client) -> list[TaskState]:
        return [t.state async for t in c.watch(task_id)]

    assert on(n1, watch)[-1] is TaskState.COMPLETED
    # RunTask (client.call), the task and its result in one call: forwarded to node-2 and
    # its output brought back; and run on node-1 itself when it fits there.
    afar = on(n1, lambda c: c.call(FunctionSpec(str(hello), labels=(("zone", "b"),))))
    assert afar.task.node == "node-2" and afar.output == b"hello from afar\n"
    # An output larger than one message: CallTask answers with the task, and the client
    # reads the output with GetResult through node-1; whole, from the one run on node-2.
    size = 2 * MiB + 7
    big_spec = FunctionSpec(str(blob(tmp_path, size)), labels=(("zone", "b"),))
    big = on(n1, lambda c: c.call(big_spec))
    assert big.task.node == "node-2" and big.output == blob_bytes(size)
    assert_eventually(
        lambda: [t.id for t in sms_call(sms, "tasks") if "blob" in t.spec.artifact] == [big.task.id]
    )
    here = on(n1, lambda c: c.call(FunctionSpec(str(hello))))
    assert here.task.node == "node-1" and here.output == b"hello from afar\n"
    assert here.task.state is TaskState.COMPLETED
    assert_eventually(lambda: sms_node_of(sms, here.task.id) == "node-1")  # reported too
    # A task with a caller stream runs on node-2 too, its stream relayed by node-1.
    transform = FunctionSpec(
        str(build_c(ROOT / "examples" / "stream_transform" / "transform.c")),
        labels=(("zone", "b"),),
        timeout_s=60,
    )

    async def exchange(c: Client) -> tuple[list[bytes], Any]:
        async with c.start_task(transform) as task:
            await task.send("over")
            await task.send("there")
            await task.close()
            received = [m async for m in task.messages()]
        return received, await task.wait()

    received, streamed = on(n1, exchange)
    assert received == [b"1: OVER", b"2: THERE"]
    assert streamed.state is TaskState.COMPLETED and streamed.node == "node-2"
    # A module the node it is forwarded to refuses: the submitter hears why, as for a
    # local task, and the task is FAILED in the cluster's registry.
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"not wasm at all")
    here = spear("submit", "--node", n1, str(bad))  # on node-1 itself: exit 65
    assert here.returncode == 65 and "not a WebAssembly module" in here.stderr
    with pytest.raises(InvalidModule):
        submit(n1, FunctionSpec(str(bad), labels=(("zone", "b"),)))
    failed = [t for t in sms_call(sms, "tasks") if t.spec.labels == (("zone", "b"),)]
    assert any(
        t.state is TaskState.FAILED and "not a WebAssembly module" in (t.reason or "")
        for t in failed
    )
    listed = spear("tasks", "--node", n1, "--json")  # the cluster's tasks, from any node
    assert listed.returncode == 0, listed.stderr
    assert task_id in [t["id"] for t in json.loads(listed.stdout)]


def test_data_affinity_and_cross_node_object_fetch(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=3, node_settings={"node-1": {"cpu_millis": 100}})
    n1, n3 = cluster.member("node-1").address, cluster.member("node-3").address
    put = on(n3, lambda c: c.put_object("inputs/doc", b"the data"))
    assert put.size == 8
    # Fetched through the SMS's object index from a node that does not hold it.
    data, info = on(n1, lambda c: c.get_object("inputs/doc"))
    assert data == b"the data" and info.version == put.version
    missing = spear("obj", "get", "--node", n1, "inputs/none")
    assert missing.returncode == 66
    # node-1 is full (a loop holds its only slot); of node-2 and node-3, the task goes to
    # node-3, which holds its input, although both have room.
    loop = build_wat('(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))',
                     tmp_path, "loop")  # fmt: skip
    blocker = submit(n1, FunctionSpec(str(loop)))
    hello = build_wat(HELLO_WAT, tmp_path, "hello")
    task_id = submit(n1, FunctionSpec(str(hello), labels=((INPUTS_LABEL, "inputs/doc"),)))
    result = on(n1, lambda c: c.result(task_id))
    assert result.task.node == "node-3" and result.task.state is TaskState.COMPLETED
    assert spear("stop", "--node", n1, blocker).returncode == 0
