"""What transport/auth.py's token store saves, and what a refused caller gets on the wire.

A node checks the token of every call it serves, so the store must not read its file, nor
hash a token, more often than the rules say: the file at most once a second (and again
only if it changed), each token once until the file changes. These count the reads of
the real file and the hashes, on a clock the test moves (mutation testing, issue 22).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import PosixPath
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.reflection.v1alpha.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1alpha.reflection_pb2 import ServerReflectionRequest
from grpclib.server import Server

from spear.transport import auth
from spear.transport.auth import Authorizer, Principal, Role, TokenStore, install

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Cli

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


class Clock:
    """`time` as auth.py sees it, with a monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


class CountedPath(PosixPath):
    """A real path that counts the looks at (stat) and the reads of the token file."""

    looks: list[str] = []
    reads: list[str] = []

    def stat(self, **kwargs: Any) -> os.stat_result:
        CountedPath.looks.append(self.name)
        return super().stat(**kwargs)

    def read_bytes(self) -> bytes:
        CountedPath.reads.append(self.name)
        return super().read_bytes()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(auth, "time", clock)
    return clock


@pytest.fixture
def counted(tmp_path: Path) -> tuple[list[str], list[str]]:
    CountedPath.looks, CountedPath.reads = [], []
    return CountedPath.looks, CountedPath.reads


def test_a_running_node_reads_its_token_file_once_a_second_and_only_if_it_changed(
    tmp_path: Path, clock: Clock, counted: tuple[list[str], list[str]]
) -> None:
    looks, reads = counted
    token = TokenStore(tmp_path).issue("ci", Role.READER)  # `spear token create`
    running = TokenStore(CountedPath(tmp_path))
    for _ in range(50):  # a burst of calls within a second
        assert running.verify(token) == Principal("ci", Role.READER, "token", "default")
    assert (looks.count("tokens.json"), reads.count("tokens.json")) == (1, 1)
    clock.now += 0.5
    assert running.verify(token) is not None
    assert (looks.count("tokens.json"), reads.count("tokens.json")) == (1, 1)
    clock.now += 0.5  # a second since it looked: it looks again, and the file is the same
    assert running.verify(token) is not None
    assert (looks.count("tokens.json"), reads.count("tokens.json")) == (2, 1)
    TokenStore(tmp_path).revoke("ci")  # `spear token rm ci`
    clock.now += 1.0  # "stops accepting a revoked one within a second" (docs/security.md)
    assert running.verify(token) is None
    assert reads.count("tokens.json") == 2


def test_a_token_checked_on_every_call_is_hashed_once_until_the_file_changes(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    digest = auth._digest

    def counting(secret: str) -> str:
        hashed.append(secret)
        return digest(secret)

    monkeypatch.setattr(auth, "_digest", counting)
    token = TokenStore(tmp_path).issue("ci", Role.SUBMITTER)
    running = TokenStore(tmp_path)
    hashed.clear()
    for _ in range(20):
        assert running.verify(token) is not None
    assert len(hashed) == 1
    other = TokenStore(tmp_path).issue("other", Role.READER)  # the file changes
    clock.now += 1.0
    assert running.verify(token) is not None and running.verify(other) is not None
    assert running.verify(token) is not None and running.verify(other) is not None
    assert len(hashed) == 4  # ci's again, and other's (issuing it hashed it once)


def test_a_token_revoked_through_a_store_is_refused_by_it_at_once(
    tmp_path: Path, clock: Clock
) -> None:
    store = TokenStore(tmp_path)
    token = store.issue("ci", Role.ADMIN)
    assert store.verify(token) is not None
    store.revoke("ci")
    assert store.verify(token) is None  # the clock has not moved
    again = store.issue("ci", Role.ADMIN)
    assert store.verify(again) is not None and store.verify(token) is None


def test_a_revoke_within_the_same_clock_tick_is_still_seen(tmp_path: Path, clock: Clock) -> None:
    # A file's modification time moves in clock ticks (milliseconds): a revoke written in
    # the tick of the file's last change must not look like the file already read.
    token = TokenStore(tmp_path).issue("ci", Role.READER)
    TokenStore(tmp_path).issue("other", Role.READER)
    path = tmp_path / "auth" / "tokens.json"
    before = path.stat()
    running = TokenStore(tmp_path)
    assert running.verify(token) is not None
    TokenStore(tmp_path).revoke("ci")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    clock.now += 1.0
    assert running.verify(token) is None


def test_an_operator_can_read_the_token_file(tmp_path: Path) -> None:
    # docs/security.md: a token is revoked by deleting its entry; the file is laid out for
    # a person, one field a line.
    TokenStore(tmp_path).issue("ci", Role.READER)
    text = (tmp_path / "auth" / "tokens.json").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert '"name": "ci",' in lines and '"role": "reader",' in lines
    assert orjson.loads(text)["tokens"][0]["name"] == "ci"


@pytest.fixture
def taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A token file holding id 0badc0de, and ids drawn: 0badc0de first, then random ones."""
    (tmp_path / "auth").mkdir()
    record = {"id": "0badc0de", "name": "old", "role": "reader", "sha256": "0" * 64}
    (tmp_path / "auth" / "tokens.json").write_bytes(
        orjson.dumps({"tokens": [{**record, "created_at": 1.0}]})
    )
    drawn: list[str] = []
    token_hex = auth.secrets.token_hex

    def draw(n: int) -> str:
        assert len(drawn) < 10, "ids drawn without end"
        drawn.append("0badc0de" if not drawn else token_hex(n))
        return drawn[-1]

    monkeypatch.setattr(auth.secrets, "token_hex", draw)
    return drawn


def test_a_new_token_never_takes_the_id_of_one_the_file_holds(
    tmp_path: Path, taken: list[str]
) -> None:
    token = TokenStore(tmp_path).issue("new", Role.READER)
    assert len(taken) == 2
    token_id = token.split("_")[1]
    assert token_id == taken[1] and re.fullmatch("[0-9a-f]{8}", token_id)
    store = TokenStore(tmp_path)
    assert [(t.id, t.name) for t in store.tokens()] == [("0badc0de", "old"), (token_id, "new")]
    assert store.verify(token) == Principal("new", Role.READER, "token", "default")


async def test_a_refused_call_ends_with_its_status(tmp_path: Path) -> None:
    # Whatever the client: no credential is UNAUTHENTICATED, a role too low is
    # PERMISSION_DENIED, and the call ends (a client deadline bounds the wait).
    reader = TokenStore(tmp_path).issue("ann", Role.READER)
    for policy, token, status in (
        (auth.POLICY, None, Status.UNAUTHENTICATED),
        ({REFLECTION: Role.ADMIN}, reader, Status.PERMISSION_DENIED),
    ):
        services = ServerReflection.extend([Health()])
        server = Server(services)
        install(server, Authorizer(TokenStore(tmp_path), policy=policy))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await server.start(sock=sock)
        metadata = {"authorization": f"Bearer {token}"} if token else None
        try:
            async with Channel("127.0.0.1", port) as channel:
                stub = ServerReflectionStub(channel)
                with pytest.raises(GRPCError) as info:
                    await stub.ServerReflectionInfo(
                        [ServerReflectionRequest(list_services="")],
                        timeout=30,
                        metadata=metadata,
                    )
                assert info.value.status is status, info.value
        finally:
            server.close()
            await server.wait_closed()


def test_the_token_commands_a_user_types(cli: Cli, data_dir: Path) -> None:
    # `spear token create|ls|rm` in a process of their own (what loads auth.py from
    # scratch: its policy table is built when it is imported).
    made = cli("token", "create", "ci", "--role", "reader")
    assert made.returncode == 0, made.stderr.decode()
    token = made.stdout.decode().strip()
    assert TokenStore(data_dir).verify(token) == Principal("ci", Role.READER, "token", "default")
    listed = cli("token", "ls")
    assert listed.returncode == 0, listed.stderr.decode()
    assert listed.stdout.decode().split()[-1] == "ci"
    gone = cli("token", "rm", "ci")
    assert gone.stdout.decode() == f"revoked {token.split('_')[1]} (ci)\n"
    assert TokenStore(data_dir).verify(token) is None
