"""`spear.Client` gets and puts objects through its node's object transfer service (a
cluster member's), with the node's rules: the caller's namespace, roles, quotas, version
checks; the SMS's tokens work there as over gRPC (docs/objects.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from test_embedding import _certify

import spear
from spear import join_cluster
from spear.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from spear.node.client import Client
from spear.node.object_route import STREAM_MIN_BYTES, ObjectRoute, _Paths
from spear.node.quotas import Quota, QuotaFile
from spear.transport.auth import AUTH_DIR, Role, TokenStore
from spear.transport.channels import Credentials
from spear.transport.tls import CA_CERT, TlsFiles

if TYPE_CHECKING:
    from pathlib import Path

MiB = 1024 * 1024


def test_client_objects_go_through_the_transfer_service_in_the_callers_namespace(
    tmp_path: Path,
) -> None:
    _certify(tmp_path, "sms", "a", "b")
    user_tls = tmp_path / "user-tls"  # a user trusts the cluster's CA, and has no certificate
    user_tls.mkdir()
    (user_tls / CA_CERT).write_bytes((tmp_path / "ca" / CA_CERT).read_bytes())
    big = bytes(range(256)) * (MiB // 256)
    assert len(big) >= STREAM_MIN_BYTES

    async def main() -> None:
        async with (
            spear.serve_sms(tmp_path / "sms") as sms,
            join_cluster(tmp_path / "a", sms=sms.address, name="a") as a,
            join_cluster(tmp_path / "b", sms=sms.address, name="b") as b,
        ):
            at_sms = TokenStore(tmp_path / "sms")  # the SMS's tokens: accepted by members
            alice = Credentials(
                token=at_sms.issue("alice", Role.SUBMITTER, "team-a"), tls=TlsFiles(user_tls)
            )
            bob = Credentials(token=at_sms.issue("bob", Role.SUBMITTER), tls=TlsFiles(user_tls))
            async with Client(a.address, credentials=alice) as on_a:
                put = await on_a.put_object("notes", big)
                assert (put.key, put.size) == ("notes", len(big))
                assert (await on_a.add_object_ref("notes")).refs == 1
                with pytest.raises(Conflict):
                    await on_a.put_object("notes", big, expected_version=put.version + 1)
                with pytest.raises(PermissionDenied):
                    await on_a.put_object("results/forged", big)  # the node's keys
            async with Client(b.address, credentials=alice) as on_b:
                # A member serves the object socket too, for clients on its host (the
                # calls above went through a's).
                assert (await on_b.node_info()).object_socket.endswith("objects.sock")
                # (what the Client does from another host: the transfer service)
                route = ObjectRoute(alice, socket=False)
                try:
                    streamed = await route.get(on_b, "notes")
                finally:
                    await route.aclose()
                assert streamed is not None and streamed[0] == big
                # A service that cannot be reached: the route says "use gRPC" (None) and
                # asks the node afresh next time; a conditional put is not sent again.
                dead = ObjectRoute(alice)
                nowhere = _Paths(None, "127.0.0.1:1")  # (nothing listens there)
                dead._paths[on_b.address] = nowhere
                try:
                    assert await dead.get(on_b, "notes") is None
                    assert on_b.address not in dead._paths
                    dead._paths[on_b.address] = nowhere
                    with pytest.raises(Unavailable):
                        await dead.put(on_b, "notes", big, expected_version=put.version)
                finally:
                    await dead.aclose()
                data, info = await on_b.get_object("notes")  # from a, across nodes
                assert data == big and (info.version, info.refs) == (put.version, 1)
            async with Client(b.address, credentials=bob) as as_bob:
                with pytest.raises(NotFound):  # another namespace's
                    await as_bob.get_object("notes")
                with pytest.raises(InvalidArgument):
                    await as_bob.get_object("@ns/team-a/notes")
            # A namespace's object-bytes quota holds for puts through the service too.
            QuotaFile(tmp_path / "a" / AUTH_DIR).set(Quota("team-a", object_bytes=len(big) + 1))
            async with Client(a.address, credentials=alice) as on_a:
                with pytest.raises(ResourceExhausted, match="quota"):
                    await on_a.put_object("more", big)
                await on_a.put_object("notes", big)  # replacing its own value fits

    anyio.run(main)
