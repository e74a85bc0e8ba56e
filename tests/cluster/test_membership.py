"""Node controller and SMS as processes: register, heartbeat, leave, die, survive restarts."""
# ruff: noqa: F401, F811  (fixtures imported from helpers.py are used as arguments)

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING, Any

import pytest
from helpers import (  # fixtures too: loop_wasm, make_cluster
    assert_eventually,
    loop_wasm,
    make_cluster,
    nodes_json,
    sms_call,
    sms_state,
    spear,
)

from spear.core.cluster import NodeHealth, NodeRecord
from spear.core.models import FunctionSpec, Task, TaskState, new_task_id
from spear.errors import InvalidArgument, NotFound, PermissionDenied

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

PATIENT = {"heartbeat_s": 0.2, "unhealthy_after_s": 3.0, "dead_after_s": 8.0}


def test_sms_port_zero_reports_its_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    # The cluster's credentials, made as a user would: a CA and the SMS's certificate in
    # its data dir, and one for this test (a member called "tester").
    sms_home = str(tmp_path / "sms")
    made = spear("cluster", "init", "--name", "sms", "--data-dir", sms_home)
    assert made.returncode == 0, made.stderr
    mine = spear("cluster", "cert", "tester", "--out", str(tmp_path / "t"), "--data-dir", sms_home)
    assert mine.returncode == 0, mine.stderr
    monkeypatch.setenv("SPEAR_TLS_DIR", str(tmp_path / "t"))
    with subprocess.Popen(
        [sys.executable, "-m", "spear", "serve", "--role", "sms", "--listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "sms")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            address = proc.stdout.readline().strip()
            host, _, port = address.rpartition(":")
            assert host == "127.0.0.1" and int(port) > 0
            assert sms_call(address, "nodes") == []
            with pytest.raises(NotFound, match="no such node: nobody"):  # the code crossed
                sms_call(address, "node", "nobody")
            with pytest.raises(InvalidArgument, match="name and an address"):
                sms_call(address, "register", NodeRecord(name="tester", address=""))
            with pytest.raises(PermissionDenied, match="may not speak for node 'node-9'"):
                sms_call(address, "register", NodeRecord(name="node-9", address="x:1"))
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0


def test_bad_kv_and_role_are_one_line_errors(tmp_path: Path) -> None:
    from conftest import one_error_line

    bad = spear("serve", "--role", "sms", "--kv", "redis://x", "--data-dir", str(tmp_path))
    assert bad.returncode == 64
    assert "--kv expects" in one_error_line(bad.stderr.encode())
    role = spear("serve", "--role", "scheduler", "--data-dir", str(tmp_path))
    assert role.returncode == 2  # the parser's usage error, naming the roles there are
    assert "'spearlet', 'sms'" in one_error_line(role.stderr.encode())
    label = spear("submit", "--label", "zone", "--data-dir", str(tmp_path), "m.wasm")
    assert label.returncode == 64
    assert "--label expects NAME=VALUE" in one_error_line(label.stderr.encode())
    cpu = spear("submit", "--cpu", "-5", "--data-dir", str(tmp_path), "m.wasm")
    assert cpu.returncode == 64 and "negative" in one_error_line(cpu.stderr.encode())
    no_sms = spear("nodes", "--data-dir", str(tmp_path / "empty"))
    assert no_sms.returncode == 64 and "--sms" in one_error_line(no_sms.stderr.encode())


def test_nodes_register_heartbeat_and_leave_cleanly(make_cluster: Any) -> None:
    cluster = make_cluster(
        nodes=2, node_settings={"node-2": {"labels": {"zone": "b"}, "cpu_millis": 500}}
    )
    sms = cluster.sms.address
    listed = nodes_json(sms)
    assert set(listed) == {"node-1", "node-2"}
    assert listed["node-2"]["labels"] == [["zone", "b"]]
    assert listed["node-2"]["capacity"][0] == 500
    assert listed["node-1"]["address"] == cluster.member("node-1").address
    # Task reports, one at a time and many in one call (ReportTasks), over real gRPC.
    made = [
        Task(id=new_task_id(), spec=FunctionSpec("m.wasm"), node="node-1").transition(state)
        for state in (TaskState.RUNNING, TaskState.CANCELLED, TaskState.RUNNING)
    ]
    # (As node-1, with its certificate: a member reports only on its own tasks.)
    node1_tls = cluster.member("node-1").data_dir / "tls"
    sms_call(sms, "report_task", made[0], tls_dir=node1_tls)
    sms_call(sms, "report_tasks", made[1:], tls_dir=node1_tls)
    assert [sms_call(sms, "task", t.id) for t in made] == made
    first_beat = listed["node-1"]["last_heartbeat"]
    assert_eventually(lambda: nodes_json(sms)["node-1"]["last_heartbeat"] > first_beat)
    cluster.stop_member(cluster.member("node-2"))  # SIGTERM: a clean stop deregisters
    assert nodes_json(sms)["node-2"]["health"] == NodeHealth.LEFT.value
    assert nodes_json(sms)["node-1"]["health"] == NodeHealth.HEALTHY.value


def _submit(node_address: str, module: Path) -> str:
    proc = spear("submit", "--node", node_address, str(module))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[0]


def test_sigkilled_spearlet_is_dead_and_its_tasks_node_lost(
    make_cluster: Any, loop_wasm: Path
) -> None:
    cluster = make_cluster(nodes=2, node_settings={"node-1": {"labels": {"zone": "a"}}})
    sms = cluster.sms.address
    victim = cluster.member("node-1")
    survivor = cluster.member("node-2").address
    task_id = _submit(victim.address, loop_wasm)
    # Another, sent to node-2, which forwards it to node-1 (the only zone=a node).
    forwarded = spear("submit", "--node", survivor, "--label", "zone=a", str(loop_wasm))
    assert forwarded.returncode == 0, forwarded.stderr
    forwarded_id = forwarded.stdout.split()[0]
    for tid in (task_id, forwarded_id):
        assert_eventually(lambda tid=tid: sms_state(sms, tid) is TaskState.RUNNING)
    assert sms_call(sms, "task", forwarded_id).node == "node-1"
    cluster.stop_member(victim, signal.SIGKILL)
    seen: set[str] = set()

    def dead() -> bool:
        seen.add(nodes_json(sms)["node-1"]["health"])
        return "dead" in seen

    assert_eventually(dead, timeout=15)
    assert seen <= {"healthy", "unhealthy", "dead"}
    for tid in (task_id, forwarded_id):
        lost = sms_call(sms, "task", tid)
        assert lost.state is TaskState.FAILED and lost.reason == "node lost"
    # The survivor answers for the lost node's tasks from the SMS's record.
    status = spear("status", "--node", survivor, task_id, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["reason"] == "node lost"
    result = spear("result", "--node", survivor, task_id)
    assert result.returncode == 137 and result.stdout == ""
    assert_eventually(lambda: nodes_json(sms)["node-2"]["health"] == "healthy")


@pytest.mark.parametrize("etcd", [False, True], ids=["leveldb", "etcd"])
def test_sms_restart_loses_no_node_or_task(make_cluster: Any, loop_wasm: Path, etcd: bool) -> None:
    # Lenient timings: under load a restart must not look like the nodes went silent.
    cluster = make_cluster(nodes=2, etcd=etcd, timings=PATIENT)
    sms = cluster.sms.address
    node1 = cluster.member("node-1")
    task_id = _submit(node1.address, loop_wasm)
    assert_eventually(lambda: sms_state(sms, task_id) is TaskState.RUNNING)
    before = nodes_json(sms)
    cluster.stop_member(cluster.sms)
    cluster.start_sms(listen=sms)  # same address, same store
    after = nodes_json(sms)
    assert set(after) == {"node-1", "node-2"}
    for name in after:  # the same registrations (not new ones) keep heartbeating
        assert after[name]["incarnation"] == before[name]["incarnation"]
        assert after[name]["registered_at"] == before[name]["registered_at"]
    assert_eventually(
        lambda: all(n["health"] == "healthy" for n in nodes_json(sms).values()), timeout=10
    )
    assert_eventually(lambda: sms_state(sms, task_id) is TaskState.RUNNING)
    stop = spear("stop", "--node", node1.address, task_id)
    assert stop.returncode == 0, stop.stderr
    assert_eventually(lambda: sms_state(sms, task_id) is TaskState.CANCELLED)


def test_spearlets_register_again_with_an_sms_that_forgot_them(
    make_cluster: Any, hello_wasm: Path
) -> None:
    cluster = make_cluster(nodes=2)
    sms = cluster.sms.address
    finished = _submit(cluster.member("node-1").address, hello_wasm)
    assert_eventually(lambda: sms_state(sms, finished) is TaskState.COMPLETED)
    before = nodes_json(sms)
    cluster.stop_member(cluster.sms)
    cluster.sms.data_dir = cluster.base / "sms-fresh"  # an empty store, same address
    cluster.start_sms(listen=sms)
    after = assert_eventually(lambda: (n := nodes_json(sms)) and len(n) == 2 and n, timeout=10)
    for name in ("node-1", "node-2"):
        assert after[name]["health"] == "healthy"
        assert after[name]["incarnation"] == before[name]["incarnation"]
        assert after[name]["registered_at"] > before[name]["registered_at"]
    # The finished task too: the node sent every task it keeps to an SMS that had none.
    assert_eventually(lambda: sms_state(sms, finished) is TaskState.COMPLETED, timeout=10)
