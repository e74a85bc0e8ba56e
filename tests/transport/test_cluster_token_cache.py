"""Tokens made at the SMS and checked by members (transport/cluster_tokens.py): what the
SMS answers for each token, how long a member keeps the answer (a revoked token stops
within TTL_S; a flood of bad tokens costs the SMS one call per token per TTL_S), that a
token never stands for a member, and that an SMS that cannot be reached refuses nothing
of the node's own."""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

import pytest

from spear.transport import cluster_tokens
from spear.transport._gen.pb import sms_pb2
from spear.transport.auth import Authorizer, Principal, Role, TokenStore
from spear.transport.cluster_tokens import (
    TTL_S,
    ClusterTokens,
    principal_from_wire,
    verify_at_sms,
    with_cluster_tokens,
)
from spear.transport.serving import Security

if TYPE_CHECKING:
    from pathlib import Path

ANN = Principal("ann", Role.READER, "cluster token", "default")  # (a reader bound to default)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(cluster_tokens, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


class _Sms:
    """The SMS's VerifyToken over its token store, counting the calls (or unreachable)."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens
        self.asked: list[str] = []
        self.reachable = True

    async def __call__(self, token: str) -> sms_pb2.VerifyTokenResponse:
        self.asked.append(token)
        if not self.reachable:
            raise ConnectionError("the SMS is away")
        return verify_at_sms(self.tokens, token)


def test_the_sms_answers_for_its_own_tokens_only(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path)
    bound = tokens.issue("ann", Role.READER, "team-a")
    admin = tokens.issue("ops", Role.ADMIN)
    assert verify_at_sms(tokens, bound) == sms_pb2.VerifyTokenResponse(
        valid=True, name="ann", role="reader", namespace="team-a"
    )
    assert verify_at_sms(tokens, admin) == sms_pb2.VerifyTokenResponse(
        valid=True, name="ops", role="admin", namespace=""
    )
    for unknown in (bound + "x", ""):
        assert verify_at_sms(tokens, unknown) == sms_pb2.VerifyTokenResponse(valid=False)
    assert verify_at_sms(None, bound) == sms_pb2.VerifyTokenResponse(valid=False)


def test_an_answer_is_a_principal_of_the_cluster_never_a_member() -> None:
    answer = sms_pb2.VerifyTokenResponse
    assert principal_from_wire(
        answer(valid=True, name="ann", role="reader", namespace="team-a")
    ) == Principal("ann", Role.READER, "cluster token", "team-a")
    assert principal_from_wire(answer(valid=True, name="ops", role="admin")) == Principal(
        "ops", Role.ADMIN, "cluster token", None
    )
    assert principal_from_wire(answer(valid=False, name="ann", role="reader")) is None
    assert principal_from_wire(answer(valid=True, name="node-2", role="node")) is None


async def test_an_answer_is_kept_for_the_ttl_then_asked_again(
    tmp_path: Path, clock: _Clock
) -> None:
    sms = _Sms(TokenStore(tmp_path))
    ann = sms.tokens.issue("ann", Role.READER)
    checks = ClusterTokens(sms)
    assert await checks.verify(ann) == ANN
    clock.now += TTL_S * 0.99
    assert await checks.verify(ann) == ANN
    assert sms.asked == [ann]  # (kept: not asked again within the TTL)
    # Revoked at the SMS: still accepted until the answer is a TTL old, then refused.
    sms.tokens.revoke("ann")
    assert await checks.verify(ann) == ANN
    clock.now += TTL_S * 0.01
    assert await checks.verify(ann) is None
    assert sms.asked == [ann, ann]
    # A bad token's refusal is kept as well: a flood of it asks once per TTL.
    for _ in range(5):
        assert await checks.verify("bad") is None
    clock.now += TTL_S
    assert await checks.verify("bad") is None
    assert sms.asked == [ann, ann, "bad", "bad"]


async def test_an_sms_away_accepts_nothing_and_remembers_nothing(
    tmp_path: Path, clock: _Clock
) -> None:
    sms = _Sms(TokenStore(tmp_path))
    ann = sms.tokens.issue("ann", Role.READER)
    checks = ClusterTokens(sms)
    sms.reachable = False
    assert await checks.verify(ann) is None
    sms.reachable = True  # (back at once: its answer is not a refusal kept for the TTL)
    assert await checks.verify(ann) == ANN
    assert sms.asked == [ann, ann]


async def test_the_answers_kept_are_bounded(
    tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_tokens, "_MAX_CACHED", 3)
    sms = _Sms(TokenStore(tmp_path))
    checks = ClusterTokens(sms)
    for token in ("a", "b", "c"):
        await checks.verify(token)
    assert len(checks._cache) == 3
    await checks.verify("d")  # (full: the kept answers dropped, this one kept)
    assert list(checks._cache) == ["d"]
    await checks.verify("a")
    assert sms.asked == ["a", "b", "c", "d", "a"]


async def test_only_a_cluster_members_security_asks_the_sms(tmp_path: Path) -> None:
    sms = _Sms(TokenStore(tmp_path / "sms"))
    ann = sms.tokens.issue("ann", Role.READER)
    own = Authorizer(TokenStore(tmp_path / "node"))
    security = Security(own)

    member = types.SimpleNamespace(cluster=types.SimpleNamespace(verify_token=sms))
    joined = with_cluster_tokens(security, member)
    assert joined is not security and joined.tls is security.tls
    assert joined.authorizer.tokens is own.tokens
    assert await joined.authorizer.cluster.verify(ann) == ANN
    assert own.cluster is None and security.authorizer is own  # (the node's own unchanged)

    alone: Any = types.SimpleNamespace()  # (a standalone node: no SMS to ask)
    assert with_cluster_tokens(security, alone) is security
    assert with_cluster_tokens(security, types.SimpleNamespace(cluster=None)) is security
    open_ = Security.open()  # (no authentication at all: nothing to add)
    assert with_cluster_tokens(open_, member) is open_
