"""Vector collections on a cluster: a collection lives on the node that created it (its
home, recorded in the object space) and every member forwards requests for it there, so
agents and `spear vec --node` on any node see the same collections, namespace by
namespace (docs/toolkit.md, "On a cluster")."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import cluster_credentials, make_cluster, spear  # noqa: F401

from spear import FunctionSpec
from spear.core.models import Runtime, TaskState
from spear.node.client import Client

pytestmark = pytest.mark.slow

AGENT = """
import errno, json, sys
from spear import agent
a = agent.Agent()

def ask(op, collection=None, **fields):
    try:
        return a.vectors(op, collection, **fields)
    except agent.HostcallError as exc:
        return errno.errorcode[exc.errno]

steps = json.loads(sys.argv[1])
print(json.dumps([ask(*step[:2], **step[2]) for step in steps]))
"""

ZONE = {"node-1": (("zone", "one"),), "node-2": (("zone", "two"),)}


def _agent(
    address: str, script: Path, node: str, steps: list[Any], namespace: str = "default"
) -> Any:
    """Run the agent on `node` (placed there by its label) with `steps` ([op, collection,
    fields] each); the answers, in order."""
    spec = FunctionSpec(
        str(script),
        runtime=Runtime.PROCESS,
        args=(json.dumps(steps),),
        labels=ZONE[node],
        namespace=namespace,
        timeout_s=60,
    )

    async def main() -> Any:
        async with Client(address, credentials=cluster_credentials()) as client:
            return await client.call(spec)

    result = anyio.run(main)
    assert result.task.state is TaskState.COMPLETED, result.task.reason
    assert result.task.node == node
    return json.loads(result.output)


def _vectors_dir(cluster: Any, node: str) -> Path:
    return Path(cluster.member(node).data_dir) / "vectors"


def _vec(*args: str, namespace: str | None = None) -> Any:
    env = {"SPEAR_NAMESPACE": namespace} if namespace else None
    proc = spear("vec", *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_collections_are_seen_from_every_node(
    make_cluster: Any,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    script = tmp_path / "vec_agent.py"
    script.write_text(textwrap.dedent(AGENT))
    labels = {name: {"labels": dict(zone)} for name, zone in ZONE.items()}
    cluster = make_cluster(nodes=2, node_settings=labels)
    n1, n2 = cluster.member("node-1").address, cluster.member("node-2").address
    east = {"id": "x", "vector": [1, 0], "text": "east", "metadata": {"side": "e"}}
    north = {"id": "y", "vector": [0, 1], "text": "north", "metadata": {"side": "n"}}

    # An agent on node-1 makes and fills a collection; one on node-2 queries it.
    made = _agent(
        n1,
        script,
        "node-1",
        [["create", "notes", {"dim": 2}], ["upsert", "notes", {"records": [east, north]}]],
    )
    assert made == [{"name": "notes", "dim": 2, "metric": "cos", "count": 0}, 2]
    seen = _agent(
        n2,
        script,
        "node-2",
        [
            ["query", "notes", {"vector": [0.1, 0.9], "k": 1}],
            ["query", "notes", {"vector": [0.1, 0.9], "k": 1, "filter": {"side": "e"}}],
            ["list", None, {}],
            ["query", "notes", {"vector": [1, 2, 3]}],
            ["count", "nope", {}],
        ],
    )
    assert seen[0][0]["text"] == "north" and seen[1][0]["text"] == "east"
    assert seen[2] == [{"name": "notes", "dim": 2, "metric": "cos", "count": 2, "node": "node-1"}]
    assert seen[3:] == ["EINVAL", "ENOENT"]  # errors cross the hop as they are

    # Another namespace has its own collections, whichever node asks.
    other = _agent(
        n2,
        script,
        "node-2",
        [["count", "notes", {}], ["list", None, {}], ["create", "notes", {"dim": 3}]],
        namespace="team-a",
    )
    assert other[:2] == ["ENOENT", []]
    assert other[2]["dim"] == 3
    back = _agent(
        n1,
        script,
        "node-1",
        [["upsert", "notes", {"records": [{"id": "z", "vector": [1, 1, 1]}]}]],
        namespace="team-a",
    )
    assert back == [1]
    assert _vec("ls", "--node", n1, namespace="team-a") == [
        {"name": "notes", "dim": 3, "metric": "cos", "count": 1, "node": "node-2"}
    ]

    # `spear vec --node`: any node answers for any collection (node-2 forwards to node-1).
    assert _vec("count", "notes", "--node", n2) == {"count": 2}
    assert _vec("rm", "notes", "x", "--node", n2) == {"deleted": 1}
    hits = _vec("query", "notes", "--vector", "[1, 0]", "-k", "5", "--node", n1)
    assert [h["id"] for h in hits] == ["y"]
    _vec("drop", "notes", "--node", n2)
    gone = spear("vec", "count", "notes", "--node", n1)
    assert gone.returncode != 0 and gone.stderr.count("\n") == 1, gone.stderr
    assert "no vector collection 'notes'" in gone.stderr and "Traceback" not in gone.stderr
    # ... and made again, on node-2 this time: node-1 finds its new home.
    _vec("create", "notes", "--dim", "2", "--node", n2)
    assert _vec("ls", "--node", n1) == [
        {"name": "notes", "dim": 2, "metric": "cos", "count": 0, "node": "node-2"}
    ]
    assert _vec("count", "notes", "--node", n1, namespace="team-a") == {"count": 1}

    # Two nodes making one name at once: one becomes its home, the other forwards to it.
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "spear", "vec", "create", "race", "--dim", "4", "--node", n],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (n1, n2)
    ]
    for racer in racers:
        _, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
    seen_from = [{c["name"]: c["node"] for c in _vec("ls", "--node", n)} for n in (n1, n2)]
    home = seen_from[0]["race"]
    assert seen_from[1]["race"] == home
    made_on = [m for m in ("node-1", "node-2") if (_vectors_dir(cluster, m) / "race").exists()]
    assert made_on == [home]  # (the other node made no collection of its own)

    # A collection is as available as its home: with node-2 gone, one clean line.
    cluster.stop_member(cluster.member("node-2"))
    down = spear("vec", "count", "notes", "--node", n1)
    assert down.returncode != 0 and down.stderr.count("\n") == 1, down.stderr
    assert "Traceback" not in down.stderr
    listed = spear("vec", "ls", "--node", n1)
    assert listed.returncode == 0 and "notes" in listed.stdout, listed.stderr
    assert "unavailable" in listed.stdout
