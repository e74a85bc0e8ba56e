"""`spear vec` against a node daemon (spear.v1.SpearletVectors): found in the data dir or
named with --node, with the daemon's token rules and namespaces."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from conftest import Cli, one_error_line
from test_cli_client import daemon  # noqa: F401 - the fixture

from spear.errors import InvalidArgument
from spear.node.vector_peers import vectors_stub
from spear.transport._gen.pb import vectors_pb2 as vpb
from spear.transport._status import client_errors
from spear.transport.aio_client import AioChannel
from spear.transport.channels import Credentials


async def _read_rpc(address: str, token: str, request: dict[str, Any]) -> Any:
    """`request` sent as ReadVectors, whatever its op, with `token`."""
    channel = AioChannel.to(address, Credentials(token=token))
    try:
        stub = vectors_stub(channel)
        with client_errors(address):
            return await stub.read_vectors(vpb.VectorRequest(request=json.dumps(request).encode()))
    finally:
        await channel.aclose()


if TYPE_CHECKING:
    from pathlib import Path

    from test_cli_client import Daemon


def test_spear_vec_through_the_daemon(
    daemon: Daemon,  # noqa: F811 - the fixture
    cli: Cli,
    tmp_path: Path,
) -> None:
    # The daemon holds the data dir's collections: the CLI goes through it, not around it.
    assert cli.json("vec", "create", "notes", "--dim", "2") == {
        "name": "notes",
        "dim": 2,
        "metric": "cos",
        "count": 0,
    }
    records = tmp_path / "r.jsonl"
    records.write_text(
        '{"id": "x", "vector": [1, 0], "text": "east"}\n'
        '{"id": "y", "vector": [0, 1], "text": "north"}\n'
    )
    assert cli.json("vec", "upsert", "notes", str(records)) == {"upserted": 2}
    hits = cli.json("vec", "query", "notes", "--vector", "[0.2, 0.8]", "-k", "1")
    assert [h["text"] for h in hits] == ["north"]
    bad = cli("vec", "query", "notes", "--vector", "[1, 2, 3]")
    assert bad.returncode != 0 and "dimension mismatch" in one_error_line(bad.stderr)
    missing = cli("vec", "count", "nope")
    assert missing.returncode != 0 and "no vector collection 'nope'" in one_error_line(
        missing.stderr
    )

    # Someone else, with a token: a reader queries but may not write; a namespace token
    # sees its namespace's collections only.
    stranger = Cli(tmp_path / "elsewhere")
    refused = stranger("vec", "ls", "--node", daemon.address)
    assert refused.returncode == 77
    reader = cli("token", "create", "bob", "--role", "reader").stdout.decode().strip()
    as_bob = {"SPEAR_TOKEN": reader}
    listed = stranger("vec", "ls", "--node", daemon.address, "--json", **as_bob)
    assert [c["name"] for c in json.loads(listed.stdout)] == ["notes"], listed.stderr
    denied = stranger("vec", "rm", "notes", "x", "--node", daemon.address, **as_bob)
    assert denied.returncode == 77 and "needs submitter" in one_error_line(denied.stderr)
    # ... nor by asking a write through the reading RPC.
    with pytest.raises(InvalidArgument, match="is asked with WriteVectors"):
        anyio.run(_read_rpc, daemon.address, reader, {"op": "drop", "collection": "notes"})
    assert cli.json("vec", "count", "notes") == {"count": 2}
    alice = cli.json("token", "create", "alice", "--namespace", "team-a")["token"]
    as_alice = {"SPEAR_TOKEN": alice}
    theirs = stranger("vec", "count", "notes", "--node", daemon.address, **as_alice)
    assert theirs.returncode != 0 and "no vector collection" in one_error_line(theirs.stderr)
    made = stranger("vec", "create", "notes", "--dim", "3", "--node", daemon.address, **as_alice)
    assert made.returncode == 0, made.stderr
    assert cli.json("vec", "count", "notes") == {"count": 2}  # the owner's: default's
    named = cli("vec", "ls", "--json", SPEAR_NAMESPACE="team-a")
    assert [(c["name"], c["dim"]) for c in json.loads(named.stdout)] == [("notes", 3)]

    # Killed, the daemon leaves its address behind: the CLI finds nobody there and opens
    # the data dir itself (the same collections; the unsaved indexes rebuilt from records).
    daemon.stop(signal.SIGKILL)
    assert (cli.data_dir / "spearlet.addr").exists()
    assert cli.json("vec", "count", "notes") == {"count": 2}
    theirs_on_disk = cli("vec", "count", "notes", "--json", SPEAR_NAMESPACE="team-a")
    assert json.loads(theirs_on_disk.stdout) == {"count": 0}, theirs_on_disk.stderr
