"""Subtasks in a cluster: an agent's children go through its node's ClusterNode, so the
scheduler places them (spilled to another node when the parent's node is full), and the
parent reads their ends wherever they ran."""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from conftest import assert_eventually
from helpers import cluster_credentials, make_cluster, sms_call, sms_state  # noqa: F401
from wat_tasks import ticker

from spear import FunctionSpec
from spear.core.models import Runtime, TaskState
from spear.node.client import Client

pytestmark = pytest.mark.slow

if TYPE_CHECKING:
    from pathlib import Path


def _on(address: str, fn: Any) -> Any:
    async def main() -> Any:
        async with Client(address, credentials=cluster_credentials()) as client:
            return await fn(client)

    return anyio.run(main)


async def _submit(client: Any, spec: FunctionSpec) -> str:
    return str((await client.submit(spec)).id)


PARENT = """
import json, sys
from spear import agent
a = agent.Agent()
kids = [a.spawn(sys.argv[1]) for _ in range(2)]
a.wait(kids)
a.set_result(json.dumps([[k.id, k.result()["state"], k.result()["reason"]] for k in kids]).encode())
"""


def test_children_are_placed_by_the_scheduler(
    make_cluster: Any,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    child = ticker(tmp_path, 10, 100)  # ~1 s
    parent = tmp_path / "parent.py"
    parent.write_text(textwrap.dedent(PARENT))
    # node-1 fits the parent and one child; the second child must go elsewhere.
    room = {"cpu_millis": 200}
    cluster = make_cluster(nodes=2, node_settings={"node-1": room, "node-2": room})
    sms, n1 = cluster.sms.address, cluster.member("node-1").address
    spec = FunctionSpec(str(parent), runtime=Runtime.PROCESS, args=(str(child),), timeout_s=60)
    task_id = _on(n1, lambda c: _submit(c, spec))
    assert_eventually(lambda: sms_state(sms, task_id) is TaskState.COMPLETED, timeout=60)

    async def result(c: Any) -> bytes:
        return bytes((await c.result(task_id)).output)

    ends = json.loads(_on(n1, result))
    assert [state for _, state, _ in ends] == ["COMPLETED", "COMPLETED"], ends
    assert {sms_call(sms, "task", kid).node for kid, _, _ in ends} == {"node-1", "node-2"}
