"""The ObjectAuthority seam: who decides an object's version when nodes share one object
space (docs/objects.md). In local mode there is none and the node's store decides alone;
in a cluster the SMS's object index does, reached through the node's implementation
(spear/node/object_space.py). The store keeps the bytes either way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import builtins
    from collections.abc import Sequence
    from pathlib import Path

    from spear.store.object_info import ObjectInfo


class ObjectAuthority(Protocol):
    """The cluster's record of each object: version, size, references, pin, holders
    (`ObjectInfo.locations`). Every method raises spear's errors (NotFound, Conflict,
    Unavailable)."""

    async def commit(
        self, key: str, size: int, expected_version: int | None, value: bytes | None = None
    ) -> int:
        """This node wrote a new value of `key`: its version, or `Conflict`. `value`: the
        bytes themselves when small (the authority may keep them, see `small_value`)."""
        ...

    async def commit_many(
        self, commits: Sequence[tuple[str, int, int | None, bytes | None]]
    ) -> builtins.list[int | Exception]:
        """`commit` of each (key, size, expected version, small value) at once: they may
        go to the authority together. Each one's version, or the error that refused it."""
        ...

    async def current(self, key: str) -> ObjectInfo:
        """The current version of `key` and where it is held; `NotFound` if absent."""
        ...

    def small_value(self, key: str, version: int) -> bytes | None:
        """The value of `version` of `key` if the authority keeps it itself (a small one,
        as the last `current` of `key` said), else None: then it is fetched from a holder."""
        ...

    async def fetch(self, key: str, info: ObjectInfo, dest: Path) -> None:
        """Write version `info.version` of `key` from a holder into `dest`, a new name in
        the store (a file there is a spare the store placed to be written over from its
        start, then cut to the value's size); on any failure `dest` does not exist."""
        ...

    async def hold(self, key: str, version: int) -> None:
        """This node now holds a copy of `version` of `key`."""
        ...

    async def change(
        self, key: str, change: str, count: int = 1, expected_version: int | None = None
    ) -> tuple[ObjectInfo, bool]:
        """A lifecycle change (ref, unref, release, pin, unpin, delete, force-delete);
        (the object's info, whether it was deleted)."""
        ...

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]: ...

    async def collect(
        self, grace_s: float, dropped: Sequence[tuple[str, int]] = ()
    ) -> builtins.list[str]:
        """Delete the cluster's unreferenced, unpinned objects idle for `grace_s`; `dropped`:
        the (key, version) copies this node dropped since its last collection."""
        ...

    async def announce(
        self, held: Sequence[tuple[str, int, int]]
    ) -> tuple[builtins.list[str], builtins.list[tuple[str, int]]]:
        """This node holds these (key, version, size)s; (the keys whose copies are stale,
        the (key, new version)s of copies the authority adopted)."""
        ...
