"""`ObjectInfo`: what is known of one stored object. One type for the store, the node API
(core.models re-exports it), the wire and the CLI. A module of its own so that
importing it (as core.models does) loads nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object in a node's object store (seed §6). `created_at` and `updated_at` are
    known on the node that holds it (0.0 when read over the wire)."""

    key: str
    version: int
    size: int
    refs: int = 0
    pinned: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    locations: tuple[str, ...] = ()  # in a cluster: the nodes holding this version

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON for an object (`spear obj ... --json`)."""
        return {
            "key": self.key,
            "version": self.version,
            "size": self.size,
            "refs": self.refs,
            "pinned": self.pinned,
            **({"locations": list(self.locations)} if self.locations else {}),
        }
