"""Members forward to each other on their members' port (node/peer_aio.py), and on the
node port to a member that serves no members' port (`peer_transport = "node-port"`; its
old name "grpclib" in this test's settings file, still read as it): real processes."""
# ruff: noqa: F401, F811  (fixtures imported from helpers.py are used as arguments)

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
from conftest import assert_eventually, build_wat
from helpers import cluster_credentials, make_cluster

from spear.core.models import FunctionSpec, TaskState
from spear.node.client import Client

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from afar\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 16))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""
FORWARDED = "rpc /spear.v1.SpearletPeer/ForwardTasks OK"


def on(address: str, fn: Any) -> Any:
    async def main() -> Any:
        async with Client(address, credentials=cluster_credentials()) as client:
            return await fn(client)

    return anyio.run(main)


def test_members_forward_on_the_members_port_and_on_the_node_port_to_a_member_without_it(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = make_cluster(
        nodes=3,
        node_settings={
            "node-2": {"labels": {"zone": "b"}, "log_level": "DEBUG"},
            "node-3": {"labels": {"zone": "c"}, "log_level": "DEBUG", "peer_transport": "grpclib"},
        },
    )
    n1, n2, n3 = (cluster.member(f"node-{i}") for i in (1, 2, 3))
    aio = on(n2.address, lambda c: c.node_info()).peer_address
    assert aio and aio != n2.address
    assert on(n3.address, lambda c: c.node_info()).peer_address == ""
    hello = build_wat(HELLO_WAT, tmp_path, "hello")

    def call(zone: str) -> Any:
        return on(n1.address, lambda c: c.call(FunctionSpec(str(hello), labels=(("zone", zone),))))

    for zone, node in (("b", "node-2"), ("c", "node-3")):
        answer = call(zone)
        assert answer.task.state is TaskState.COMPLETED and answer.task.node == node
        assert answer.output == b"hello from afar\n"

    def forwarded(member: Any) -> list[str]:
        log = (member.data_dir / "logs" / "spear.log").read_text()
        return [line for line in log.splitlines() if FORWARDED in line]

    # Each receiver logs the call with the port that took it (the log is written as it
    # goes): node-2's members' port, node-3's node port.
    assert_eventually(lambda: len(forwarded(n2)) >= 1 and len(forwarded(n3)) >= 1)
    assert all(line.endswith(f"on {aio}") for line in forwarded(n2))
    assert all(line.endswith(f"on {n3.address}") for line in forwarded(n3))
    # A waited batch, spilled to node-2 over grpc.aio: every task's end and output at once.
    spec = FunctionSpec(str(hello), labels=(("zone", "b"),))
    ran = on(n1.address, lambda c: c.submit_many([spec] * 5, wait=True))
    assert [(t.state, t.node) for t in ran] == [(TaskState.COMPLETED, "node-2")] * 5
    # Two specs of one module in one batch: each task runs with its own (the receiver
    # makes each spec local once, not once per module).
    starved = FunctionSpec(str(hello), labels=(("zone", "b"),), fuel=1)
    ran = on(n1.address, lambda c: c.submit_many([spec, starved, spec, starved], wait=True))
    assert [t.state for t in ran] == [TaskState.COMPLETED, TaskState.FAILED] * 2
    assert {t.node for t in ran} == {"node-2"} and "fuel" in (ran[1].reason or "")
    # The receivers' modules removed by hand: each says it lacks the module, node-1 sends
    # it again and the batch (none of it taken) is forwarded again, on either port.
    import shutil

    for zone, node in (("b", n2), ("c", n3)):
        shutil.rmtree(node.data_dir / "artifacts")
        answer = call(zone)
        assert answer.task.state is TaskState.COMPLETED and answer.task.node == node.name
        assert len(list((node.data_dir / "artifacts").iterdir())) == 1
