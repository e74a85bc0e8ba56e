"""Cluster-wide tokens: a token made on the SMS is accepted by every member, with its role
and namespace, and stops working everywhere once revoked at the SMS."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from conftest import build_wat
from test_embedding import HELLO_WAT, _certify

import spear
from spear import FunctionSpec, join_cluster
from spear.errors import PermissionDenied, Unauthenticated
from spear.node.client import Client
from spear.transport.auth import Role, TokenStore
from spear.transport.channels import Credentials
from spear.transport.tls import CA_CERT, TlsFiles

if TYPE_CHECKING:
    from pathlib import Path


def test_a_token_made_on_the_sms_works_on_every_member(tmp_path: Path) -> None:
    hello = str(build_wat(HELLO_WAT, tmp_path, "hello"))
    _certify(tmp_path, "sms", "a", "b")
    user_tls = tmp_path / "user-tls"  # a user trusts the cluster's CA, and has no certificate
    user_tls.mkdir()
    (user_tls / CA_CERT).write_bytes((tmp_path / "ca" / CA_CERT).read_bytes())

    async def main() -> None:
        async with (
            spear.serve_sms(tmp_path / "sms") as sms,
            join_cluster(tmp_path / "a", sms=sms.address, name="a") as a,
            join_cluster(tmp_path / "b", sms=sms.address, name="b") as b,
        ):
            at_sms = TokenStore(tmp_path / "sms")
            alice = at_sms.issue("alice", Role.SUBMITTER, "team-a")
            reader = at_sms.issue("rita", Role.READER)
            for member in (a, b):
                creds = Credentials(token=alice, tls=TlsFiles(user_tls))
                async with Client(member.address, credentials=creds) as client:
                    done = await client.call(FunctionSpec(hello))
                    assert done.output == b"hello from b\n"
                    assert done.task.spec.namespace == "team-a"  # the token's namespace
            creds = Credentials(token=reader, tls=TlsFiles(user_tls))
            async with Client(b.address, credentials=creds) as client:
                assert await client.tasks() == []  # the default namespace: nothing there
                with pytest.raises(PermissionDenied, match="needs submitter"):
                    await client.submit(FunctionSpec(hello))
            # Revoked at the SMS: refused on the members within about a second.
            at_sms.revoke("alice")
            creds = Credentials(token=alice, tls=TlsFiles(user_tls))
            async with Client(a.address, credentials=creds) as client:
                with anyio.fail_after(10):
                    while True:
                        try:
                            await client.tasks()
                        except Unauthenticated:
                            break
                        await anyio.sleep(0.1)

    anyio.run(main)
