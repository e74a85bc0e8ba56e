"""Deleting finished tasks on a cluster member: `spear delete` (and the member's own
retention policy) removes the task's record at the SMS too, so no member lists it any
more; the SMS deletes only finished tasks that ran on the member asking."""

# ruff: noqa: F401, F811  (fixtures imported from helpers.py are used as arguments)

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from helpers import assert_eventually, make_cluster, sms_call, spear
from wat_tasks import hello as hello_wasm
from wat_tasks import ticker

from spear.errors import Conflict, NotFound, PermissionDenied

if TYPE_CHECKING:
    from pathlib import Path


def _listed(node: str) -> set[str]:
    proc = spear("tasks", "--node", node, "--json")
    assert proc.returncode == 0, proc.stderr
    return {t["id"] for t in json.loads(proc.stdout)}


def _finished_on(node: str, module: Path) -> tuple[str, str]:
    """A task submitted to `node`, run to its end: (its id, the member that ran it)."""
    sent = spear("submit", "--node", node, str(module))
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.split()[0]
    assert spear("result", "--node", node, task_id).returncode == 0
    shown = spear("status", "--node", node, task_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return task_id, json.loads(shown.stdout)["node"]


def test_delete_on_a_member_removes_the_task_everywhere(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=2)
    assert cluster.sms is not None
    sms = cluster.sms.address
    address = {m.name: m.address for m in cluster.members}
    hello = hello_wasm(tmp_path)
    task_id, ran_on = _finished_on(address["node-1"], hello)
    kept, _ = _finished_on(address["node-1"], hello)
    assert_eventually(lambda: task_id in _listed(address["node-2"]))
    other = next(name for name in address if name != ran_on)
    other_tls = next(m.data_dir / "tls" for m in cluster.members if m.name == other)

    # The SMS refuses another member's tasks, and a caller that is no member at all.
    with pytest.raises(PermissionDenied, match=f"ran on {ran_on}"):
        sms_call(sms, "delete_cluster_tasks", [task_id], tls_dir=other_tls)
    with pytest.raises(PermissionDenied):
        sms_call(sms, "delete_cluster_tasks", [task_id])  # (the launcher's certificate)

    gone = spear("delete", "--node", address[ran_on], task_id, "--json")
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout) == {"deleted": [task_id]}
    for name in address:
        listed = _listed(address[name])
        assert task_id not in listed and kept in listed, name
    with pytest.raises(NotFound):
        sms_call(sms, "task", task_id)
    assert sms_call(sms, "task", kept).id == kept

    # Through a member the task did not run on: that member asks the one it ran on.
    kept_on = sms_call(sms, "task", kept).node
    elsewhere = next(address[name] for name in address if name != kept_on)
    gone = spear("delete", "--node", elsewhere, kept[:12], "--json")
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout) == {"deleted": [kept]}
    with pytest.raises(NotFound):
        sms_call(sms, "task", kept)
    for name in address:
        assert kept not in _listed(address[name]), name
    assert spear("obj", "get", "--node", elsewhere, f"results/{kept}").returncode == 66


def test_the_sms_keeps_unfinished_tasks(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=1)
    assert cluster.sms is not None
    node = cluster.members[0]
    sent = spear("submit", "--node", node.address, str(ticker(tmp_path, 600, 50)))
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.split()[0]
    assert_eventually(lambda: sms_call(cluster.sms.address, "tasks", None, 10) != [])
    with pytest.raises(Conflict, match="cancel it before deleting it"):
        sms_call(
            cluster.sms.address, "delete_cluster_tasks", [task_id], tls_dir=node.data_dir / "tls"
        )
    assert spear("stop", "--node", node.address, task_id).returncode == 0


def test_a_members_retention_policy_deletes_at_the_sms_too(
    make_cluster: Any, tmp_path: Path
) -> None:
    policy = {"task_retention_records": 1, "task_log_prune_interval_s": 0.2}
    cluster = make_cluster(nodes=1, node_settings={"node-1": policy})
    assert cluster.sms is not None
    node = cluster.members[0].address
    hello = hello_wasm(tmp_path)
    first, _ = _finished_on(node, hello)
    second, _ = _finished_on(node, hello)

    def first_gone() -> bool:
        try:
            sms_call(cluster.sms.address, "task", first)
        except NotFound:
            return True
        return False

    assert_eventually(first_gone)
    assert _listed(node) == {second}
