"""spear on a 3-member etcd cluster (issue 16): one member lost changes nothing; with
quorum lost a running task still finishes, its report waits on its node and reaches the
SMS once etcd is back; etcd's data survives its restart."""
# ruff: noqa: F401, F811  (fixtures imported from helpers.py are used as arguments)

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest
from helpers import (
    assert_eventually,
    make_cluster,
    nodes_json,
    sms_call,
    sms_state,
    spear,
    submit,
)
from wat_tasks import ticker

from spear.core.models import TaskState

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

PATIENT = {"heartbeat_s": 0.3, "unhealthy_after_s": 5.0, "dead_after_s": 30.0}


def _hosts() -> tuple[str, ...]:
    """Three loopback addresses of a random 127.x.y.0 block: etcd's fixed ports there
    collide with nobody else's (tests running side by side each take a block)."""
    x, y = random.randrange(1, 255), random.randrange(1, 255)
    return tuple(f"127.{x}.{y}.{i}" for i in (1, 2, 3))


def test_one_member_lost_changes_nothing_quorum_lost_pauses(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=1, etcd=True, etcd_members=3, etcd_hosts=_hosts(), timings=PATIENT)
    sms = cluster.sms.address
    node = cluster.member("node-1").address
    etcd = cluster.etcd_process
    assert len(etcd.pids) == 3 and etcd.url.count(",") == 2
    quick = tmp_path / "quick"
    quick.mkdir()
    first = submit(node, ticker(quick, 1, 1))
    assert_eventually(lambda: sms_state(sms, first) is TaskState.COMPLETED, timeout=20)

    etcd.processes[0].kill()  # one of three: the others keep a quorum
    second = submit(node, ticker(quick, 1, 1))
    assert_eventually(lambda: sms_state(sms, second) is TaskState.COMPLETED, timeout=30)
    assert nodes_json(sms)["node-1"]["health"] == "healthy"

    # A task that runs ~5 s; quorum goes while it runs, it ends meanwhile. Its node says
    # when it runs: the SMS may hear RUNNING and COMPLETED in one report, when a report
    # waits on etcd's new leader longer than the task runs (seen once on a loaded CI).
    slow_dir = tmp_path / "slow"
    slow_dir.mkdir()
    slow = submit(node, ticker(slow_dir, 20, 250))
    assert_eventually(
        lambda: '"RUNNING"' in spear("status", "--node", node, slow, "--json").stdout,
        timeout=20,
    )
    etcd.processes[1].kill()
    # Its node runs it to its end with the SMS's store unwritable...
    assert_eventually(
        lambda: '"COMPLETED"' in spear("status", "--node", node, slow, "--json").stdout,
        timeout=30,
    )
    # ...and its report reaches the SMS once quorum is back (both members restarted on
    # their addresses, with their data).
    etcd.start_member(0)
    etcd.start_member(1)
    assert_eventually(lambda: sms_state(sms, slow) is TaskState.COMPLETED, timeout=40)
    assert sms_call(sms, "task", first).state is TaskState.COMPLETED  # kept through it all
