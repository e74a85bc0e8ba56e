"""A running node's token store sees a token issued by another process at once (a
`spear token create` followed by a call within the same second was refused), and a
revoked token stops working within the store's reload second."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.transport.auth import Role, TokenStore

if TYPE_CHECKING:
    from pathlib import Path


def test_a_token_issued_elsewhere_is_accepted_at_once(tmp_path: Path) -> None:
    node = TokenStore(tmp_path)
    first = TokenStore(tmp_path).issue("bob", Role.READER)
    assert node.verify(first) is not None  # the node has now read the file this second
    second = TokenStore(tmp_path).issue("alice", Role.SUBMITTER, "team-a")
    principal = node.verify(second)
    assert principal is not None and principal.namespace == "team-a"
    assert node.verify(second[:-2] + "xx") is None  # a wrong secret still fails
