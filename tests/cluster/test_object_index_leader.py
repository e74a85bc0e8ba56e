"""The object index's writes go to the leading SMS only (transport/object_index_service.py):
two SMS on one real etcd, serving gRPC; a follower refuses every object-index write naming
the leader and still answers lookups and listings; a member's SMS client sent to the
follower follows the refusal to the leader."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from test_embedding import _certify

import spear
from spear.core.sms_leader import leader_named_in
from spear.errors import NotLeader
from spear.transport._gen.pb import sms_pb2
from spear.transport.channels import Credentials
from spear.transport.sms_client import SmsClient
from spear.transport.sms_server import MetadataService
from spear.transport.tls import TlsFiles

if TYPE_CHECKING:
    from pathlib import Path


async def _eventually(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.05)


def test_only_the_leading_sms_writes_the_object_index(tmp_path: Path, etcd_endpoint: str) -> None:
    _certify(tmp_path, "sms-1", "sms-2", "node-1")
    kv = f"etcd://{etcd_endpoint}"

    async def main() -> None:
        async with (
            spear.serve_sms(tmp_path / "sms-1", kv=kv) as one,
            spear.serve_sms(tmp_path / "sms-2", kv=kv) as two,
        ):
            both = (one, two)
            await _eventually(lambda: sum(s.metadata.leadership.leading for s in both) == 1)
            leader, follower = both if one.metadata.leadership.leading else both[::-1]
            await _eventually(lambda: follower.metadata.leadership.leader == leader.address)
            at_follower = MetadataService(follower.metadata)
            writes = [
                at_follower.commit_object(
                    sms_pb2.CommitObjectRequest(key="k", node="node-1", address="a", size=1)
                ),
                at_follower.commit_objects(
                    sms_pb2.CommitObjectsRequest(
                        commits=[sms_pb2.CommitObjectRequest(key="k", node="node-1", size=1)]
                    )
                ),
                at_follower.hold_object(
                    sms_pb2.HoldObjectRequest(key="k", node="node-1", address="a", version=1)
                ),
                at_follower.change_object(sms_pb2.ChangeObjectRequest(key="k", change="pin")),
                at_follower.announce_objects(sms_pb2.AnnounceObjectsRequest(node="node-1")),
                at_follower.collect_objects(sms_pb2.CollectObjectsRequest(grace_s=0)),
            ]
            for write in writes:
                with pytest.raises(NotLeader) as refused:
                    await write
                assert leader_named_in(refused.value) == leader.address
            # A member's client sent to the follower is led to the leader, and the
            # follower serves reads of what the leader wrote.
            member = Credentials(tls=TlsFiles(tmp_path / "node-1" / "tls"))
            client = SmsClient(follower.address, timeout_s=10, credentials=member)
            try:
                record = await client.commit_object("k", "node-1", "a", 2, 0, b"hi")
            finally:
                await client.aclose()
            found = await at_follower.lookup_object(sms_pb2.LookupObjectRequest(key="k"))
            assert (found.version, found.value) == (record.version, b"hi")
            listed = await at_follower.list_object_records(sms_pb2.ListObjectRecordsRequest())
            assert [r.key for r in listed.objects] == ["k"]

    anyio.run(main)
