"""A highly available SMS with real processes: three SMS on one etcd, SPEARlets given all
three addresses. SIGKILL the leader: a follower takes over and the SPEARlets go on
heartbeating and reporting; a follower, and a deposed leader, refuse writes."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from conftest import assert_eventually
from helpers import loop_wasm, sms_call, spear  # noqa: F401 - loop_wasm is a fixture

from spear.core.models import TaskState
from spear.core.sms_leader import leader_named_in
from spear.errors import NotLeader
from spear.node.ha_cluster import HaCluster
from spear.transport._gen.pb import sms_pb2
from spear.transport._status import client_errors
from spear.transport.aio_client import AioChannel
from spear.transport.services import Stub
from spear.transport.sms_client import SERVICE as SMS_SERVICE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from spear.node.local_cluster import Member

# Heartbeats every 0.2 s; lenient silences, so a takeover (about one lease TTL, 2 s)
# never looks like the nodes went silent to the new leader.
TIMINGS: dict[str, Any] = {
    "heartbeat_s": 0.2,
    "unhealthy_after_s": 3.0,
    "dead_after_s": 8.0,
    "sms_lease_ttl_s": 2,
}


@pytest.fixture
def ha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HaCluster]:
    cluster = HaCluster(tmp_path / "ha", nodes=2, timings=TIMINGS, ca=tmp_path / "ca")
    credentials = cluster.credentials()
    assert credentials.tls is not None
    monkeypatch.setenv("SPEAR_TLS_DIR", str(credentials.tls.directory))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def the_leader(cluster: HaCluster, other_than: Member | None = None) -> Member:
    def one() -> Member | None:
        found = [m for m in cluster.leaders() if m is not other_than]
        return found[0] if len(found) == 1 else None

    return assert_eventually(one, timeout=20)  # type: ignore[no-any-return]


def raw_write(cluster: HaCluster, address: str) -> None:
    """One write (a heartbeat of an unknown node) sent to `address` only: no following."""

    async def call() -> None:
        channel = AioChannel.to(address, cluster.credentials())
        try:
            with client_errors(f"SMS {address}"):
                await Stub(channel, SMS_SERVICE).heartbeat(
                    sms_pb2.HeartbeatRequest(name="launcher", incarnation="x"), timeout=5
                )
        finally:
            await channel.aclose()

    anyio.run(call)


def healthy_nodes(address: str) -> set[str]:
    return {n.name for n in sms_call(address, "nodes", live_only=True)}


def test_the_leader_sigkilled_a_follower_takes_over_and_nodes_follow(
    ha: HaCluster,
    loop_wasm: Path,  # noqa: F811
) -> None:
    everyone = ha.sms_addresses
    first = the_leader(ha)
    followers = [m for m in ha.all_sms if m is not first]
    # A follower refuses a write, naming the leader; it serves reads.
    with pytest.raises(NotLeader) as refused:
        raw_write(ha, followers[0].address)
    assert leader_named_in(refused.value) == first.address
    assert healthy_nodes(followers[0].address) == {"node-1", "node-2"}

    before = {n.name: n for n in sms_call(everyone, "nodes")}
    killed_at = time.time()
    os.kill(first.pid, signal.SIGKILL)
    assert first.proc is not None
    first.proc.wait(timeout=10)
    second = the_leader(ha, other_than=first)

    # The same registrations go on heartbeating with the new leader.
    def beating() -> bool:
        now = {n.name: n for n in sms_call(second.address, "nodes", live_only=True)}
        return set(now) == {"node-1", "node-2"} and all(
            now[k].last_heartbeat > killed_at + 0.5 and now[k].incarnation == before[k].incarnation
            for k in now
        )

    assert_eventually(beating, timeout=20)
    # The CLI given every address (one of them dead) asks the others.
    listed = spear("nodes", "--sms", everyone, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {n["name"] for n in json.loads(listed.stdout)} == {"node-1", "node-2"}
    # A task run now is reported to the new leader.
    node1 = ha.member("node-1").address
    proc = spear("submit", "--node", node1, str(loop_wasm))
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.split()[0]

    def state() -> TaskState | None:
        try:
            return sms_call(everyone, "task", task_id).state  # type: ignore[no-any-return]
        except Exception:
            return None

    assert_eventually(lambda: state() is TaskState.RUNNING, timeout=20)
    stop = spear("stop", "--node", node1, task_id)
    assert stop.returncode == 0, stop.stderr
    assert_eventually(lambda: state() is TaskState.CANCELLED, timeout=20)


def test_a_deposed_leader_refuses_writes(ha: HaCluster) -> None:
    first = the_leader(ha)
    os.kill(first.pid, signal.SIGSTOP)  # paused past its lease: etcd elects another
    try:
        second = the_leader(ha, other_than=first)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    # At once on waking, before it could hear of the new term, it refuses writes.
    with pytest.raises(NotLeader):
        raw_write(ha, first.address)
    raw_write(ha, second.address)  # the new leader takes it
    assert_eventually(lambda: healthy_nodes(second.address) == {"node-1", "node-2"}, timeout=20)
