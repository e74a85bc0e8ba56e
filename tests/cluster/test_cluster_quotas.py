"""Cluster-wide task quotas: a quota set on the SMS's data dir bounds a namespace's
unfinished tasks across every member, whichever member each task was submitted to."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from conftest import build_wat
from test_embedding import HELLO_WAT, _certify
from wat_tasks import ticker

import spear
from spear import FunctionSpec, join_cluster
from spear.core.cluster_quotas import ClusterTaskSlots
from spear.errors import ResourceExhausted
from spear.node.client import Client
from spear.node.quotas import Quota, QuotaFile
from spear.transport.auth import AUTH_DIR, Role, TokenStore
from spear.transport.channels import Credentials
from spear.transport.tls import CA_CERT, TlsFiles

if TYPE_CHECKING:
    from pathlib import Path


def test_a_namespace_quota_holds_across_the_members(tmp_path: Path) -> None:
    hello = FunctionSpec(str(build_wat(HELLO_WAT, tmp_path, "hello")))
    slow = FunctionSpec(str(ticker(tmp_path, 600, 50)))
    _certify(tmp_path, "sms", "a", "b")
    user_tls = tmp_path / "user-tls"
    user_tls.mkdir()
    (user_tls / CA_CERT).write_bytes((tmp_path / "ca" / CA_CERT).read_bytes())

    async def main() -> None:
        async with (
            spear.serve_sms(tmp_path / "sms") as sms,
            join_cluster(tmp_path / "a", sms=sms.address, name="a") as a,
            join_cluster(tmp_path / "b", sms=sms.address, name="b") as b,
        ):
            QuotaFile(tmp_path / "sms" / AUTH_DIR).set(Quota("team-a", tasks=1))
            at_sms = TokenStore(tmp_path / "sms")
            alice = Credentials(
                token=at_sms.issue("alice", Role.SUBMITTER, "team-a"), tls=TlsFiles(user_tls)
            )
            bob = Credentials(
                token=at_sms.issue("bob", Role.SUBMITTER, "team-b"), tls=TlsFiles(user_tls)
            )
            async with (
                Client(a.address, credentials=alice) as on_a,
                Client(b.address, credentials=alice) as on_b,
                Client(b.address, credentials=bob) as bob_on_b,
            ):
                first = await on_a.submit(slow)
                # The one slot is taken, at whichever member she asks next.
                with pytest.raises(ResourceExhausted, match="cluster-wide quota of 1"):
                    await on_b.submit(slow)
                with pytest.raises(ResourceExhausted, match="cluster-wide quota of 1"):
                    await on_b.call(hello)
                assert (await bob_on_b.call(hello)).output == b"hello from b\n"  # no quota
                await on_a.cancel(first.id)
                await on_a.wait(first.id)
                # Once the SMS has the end of the first, the slot is free on every member.
                with anyio.fail_after(20):
                    while True:
                        try:
                            done = await on_b.call(hello)
                            break
                        except ResourceExhausted:
                            await anyio.sleep(0.1)
                assert done.output == b"hello from b\n"
                # A call gives its slot back when it ends: the next goes through at once.
                assert (await on_a.call(hello)).output == b"hello from b\n"

    anyio.run(main)


async def test_slots_are_freed_by_records_by_release_and_by_grace() -> None:
    records: dict[str, bool | None] = {}

    async def finished(task_id: str) -> bool | None:
        return records.get(task_id)

    slots = ClusterTaskSlots(lambda ns: 2 if ns == "team-a" else None, finished, grace_s=0.0)
    assert not await slots.take("team-b", "x")  # no quota: nothing held
    assert await slots.take("team-a", "t1") and await slots.take("team-a", "t2")
    records["t1"], records["t2"] = False, False
    with pytest.raises(ResourceExhausted):
        await slots.take("team-a", "t3")
    records["t1"] = True  # its record ended
    assert await slots.take("team-a", "t3")
    records["t3"] = False
    slots.release("team-a", "t2")
    assert await slots.take("team-a", "r1", until_released=True)  # held, no record
    assert slots.held("team-a") == 2
    with pytest.raises(ResourceExhausted):
        await slots.take("team-a", "t4")  # r1 is not dropped for want of a record
    assert await slots.take("team-a", "t3")  # the same task again: its own slot


async def test_without_an_sms_the_cluster_quota_is_not_kept_and_the_task_runs(
    tmp_path: Path,
) -> None:
    """A member whose SMS does not answer admits the task without a cluster slot (the
    cluster's own placement needs the SMS anyway; here the node runs it itself)."""
    import socket

    from spear.node.inprocess import InProcessNode
    from spear.node.namespaced import NamespacedNode
    from spear.node.quotas import TaskSlots
    from spear.transport.sms_client import SmsClient

    hello = FunctionSpec(str(build_wat(HELLO_WAT, tmp_path, "hello")))
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    async with spear.LocalNode(tmp_path / "home") as node:
        api = InProcessNode(node)
        sms = SmsClient(closed, timeout_s=2)
        api.cluster = sms  # type: ignore[attr-defined]  (as a ClusterNode's)
        try:
            slots = TaskSlots(QuotaFile(tmp_path / "home" / AUTH_DIR))
            scoped = NamespacedNode(api, "team-a", slots)
            done = await scoped.call(hello)
            assert done.output == b"hello from b\n" and done.task.spec.namespace == "team-a"
            assert slots.cluster_unlimited["team-a"] > 0  # not asked again for a second
            assert (await scoped.submit(hello)).task.spec.namespace == "team-a"
        finally:
            await sms.aclose()
