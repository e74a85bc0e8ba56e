"""Cluster-wide tokens: a token made on the SMS (`spear token create --data-dir SMS_DIR`)
is accepted by every SPEARlet of its cluster.

A SPEARlet checks a caller's token against its own tokens first; one it does not know it
asks the SMS about (VerifyToken, over the member's mutual TLS), and keeps the answer for a
second, so a token revoked at the SMS stops working everywhere within about a second and
a flood of bad tokens costs the SMS one call per token per second at most.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from spear.transport.auth import Principal, Role

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from spear.transport._gen.pb import sms_pb2
    from spear.transport.auth import TokenStore

TTL_S = 1.0
_MAX_CACHED = 10_000


class ClusterTokens:
    """What the SMS says of tokens this node does not know, cached for `TTL_S`."""

    def __init__(self, ask: Callable[[str], Awaitable[sms_pb2.VerifyTokenResponse]]) -> None:
        self._ask = ask
        self._cache: dict[str, tuple[Principal | None, float]] = {}

    async def verify(self, token: str) -> Principal | None:
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            answer = await self._ask(token)
        except Exception:  # the SMS unreachable: the node's own tokens still work
            return None
        principal = principal_from_wire(answer)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[token] = (principal, now + TTL_S)
        return principal


def principal_from_wire(answer: sms_pb2.VerifyTokenResponse) -> Principal | None:
    if not answer.valid:
        return None
    role = Role.parse(answer.role)
    if role is Role.NODE:  # a token never stands for a member
        return None
    return Principal(answer.name, role, "cluster token", answer.namespace or None)


def verify_at_sms(tokens: TokenStore | None, token: str) -> sms_pb2.VerifyTokenResponse:
    """The SMS's answer for `token`, from its own token store."""
    from spear.transport._gen.pb import sms_pb2

    principal = tokens.verify(token) if tokens is not None else None
    if principal is None:
        return sms_pb2.VerifyTokenResponse(valid=False)
    return sms_pb2.VerifyTokenResponse(
        valid=True,
        name=principal.name,
        role=principal.role.name.lower(),
        namespace=principal.namespace or "",
    )


def with_cluster_tokens(security: Any, api: Any) -> Any:
    """`security` that also accepts the cluster's tokens when `api` is a cluster member
    (its SMS client can ask); unchanged otherwise."""
    import dataclasses

    cluster = getattr(api, "cluster", None)
    ask = getattr(cluster, "verify_token", None)
    if ask is None or security.authorizer is None:
        return security
    authorizer = dataclasses.replace(security.authorizer, cluster=ClusterTokens(ask))
    return dataclasses.replace(security, authorizer=authorizer)
