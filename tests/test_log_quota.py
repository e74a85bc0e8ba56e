"""A namespace's quota of log bytes on a real served node: once its tasks' logs hold the
quota, it may start no task (one line, RESOURCE_EXHAUSTED) until it deletes some; other
namespaces go on."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import pytest
from wat_tasks import hello

import spear
from spear.core.models import FunctionSpec
from spear.errors import InvalidArgument, ResourceExhausted
from spear.node.client import Client
from spear.node.quotas import Quota, QuotaFile
from spear.node.server import serve_spearlet
from spear.transport.auth import AUTH_DIR, Role, TokenStore
from spear.transport.channels import Credentials

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@contextlib.asynccontextmanager
async def _served(home: Path) -> AsyncIterator[str]:
    async with spear.LocalNode(home) as node:
        server = await serve_spearlet(node, "127.0.0.1:0")
        try:
            assert server.address is not None
            yield server.address
        finally:
            await server.close()


async def _until_refused(client: Client, spec: FunctionSpec) -> str:
    """Run `spec` until the log quota refuses it (the node measures once a second)."""
    with anyio.fail_after(15):
        while True:
            try:
                await client.call(spec)
            except ResourceExhausted as exc:
                return str(exc)
            await anyio.sleep(0.1)


async def test_a_namespace_over_its_log_bytes_starts_no_task(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = FunctionSpec(str(hello(tmp_path)))  # 11 bytes of logs a run
    async with _served(home) as address:
        QuotaFile(home / AUTH_DIR).set(Quota("team-a", log_bytes=30))
        tokens = TokenStore(home)
        alice = Credentials(token=tokens.issue("alice", Role.SUBMITTER, "team-a"))
        bob = Credentials(token=tokens.issue("bob", Role.SUBMITTER, "team-b"))
        async with Client(address, credentials=alice) as a, Client(address, credentials=bob) as b:
            message = await _until_refused(a, spec)
            assert "quota of 30 log bytes" in message and "spear delete" in message
            assert len(await a.tasks()) >= 3  # 33 bytes or more before the refusal
            with pytest.raises(ResourceExhausted):
                await a.submit(spec)
            assert (await b.call(spec)).output == b"hello\n"  # team-b has no quota
            # Deleting team-a's finished tasks gives the room back.
            await a.delete_tasks(older_than_s=0)
            with anyio.fail_after(15):
                while True:
                    try:
                        assert (await a.call(spec)).output == b"hello\n"
                        break
                    except ResourceExhausted:
                        await anyio.sleep(0.1)


def test_a_log_quota_is_a_whole_number() -> None:
    with pytest.raises(InvalidArgument, match="log_bytes"):
        Quota("team-a", log_bytes=-1)


def test_quota_set_log_bytes_on_the_command_line(tmp_path: Path) -> None:
    from conftest import Cli

    cli = Cli(tmp_path / "home")
    assert cli("quota", "set", "team-a", "--log-bytes", "1M").returncode == 0
    assert cli.json("quota", "ls") == [
        {"namespace": "team-a", "tasks": None, "object_bytes": None, "log_bytes": 1024**2}
    ]
    assert b"LOG BYTES" in cli("quota", "ls").stdout
