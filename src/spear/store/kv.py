"""The KV seam: where every piece of metadata lives (seed §2.3).

Versions follow etcd's model: every write gets a new revision from one counter that only
grows, and an entry's `version` is the revision of its last write. Version 0 means "absent",
so `compare_and_swap(key, value, 0)` creates only if the key does not exist. Because the
counter never goes back, a key deleted and created again never repeats an old version.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from anyio.abc import AsyncResource

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes
    version: int


@dataclass(frozen=True, slots=True)
class Write:
    """One write of a `KV.commit`: `value` None deletes; `expected_version` None writes
    whatever the key holds."""

    key: str
    value: bytes | None
    expected_version: int | None = None


class EventKind(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: EventKind
    key: str
    value: bytes
    version: int


class Staged:
    """Writes `KV.commit_later` staged: readable at once, written with a later write."""

    async def written(self) -> None:
        """Until they are written (at once, if they still wait); raises what writing them
        raised."""

    def lost(self) -> bool:
        """Whether the write that took them failed: they are gone (False while they
        wait)."""
        return False


WRITTEN = Staged()  # what a store that writes each commit at once returns


class KV(AsyncResource):
    """A key-value store with versions, compare-and-swap, ordered scans and watches."""

    @abc.abstractmethod
    async def get(self, key: str) -> Entry | None: ...

    @abc.abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """The entries of `keys`, in order (None where absent), read together (LevelDB:
        one pass on its thread; etcd: one read-only transaction per 128 keys)."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> int:
        """Write unconditionally; returns the new version."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove a key; returns whether it existed."""

    @abc.abstractmethod
    async def compare_and_swap(self, key: str, value: bytes | None, expected_version: int) -> int:
        """Write (or delete, when `value` is None) only if the key is at `expected_version`.

        Returns the new version (0 after a delete), or -1 when the version did not match,
        in which case nothing changed.
        """

    @abc.abstractmethod
    async def commit(self, writes: Sequence[Write]) -> int:
        """All of `writes` as one atomic change, or none of them (a transaction, as etcd's).

        Every write carrying an `expected_version` must find its key at that version.
        Returns the revision the writes were made at (the new version of every key
        written), or -1 when a version did not match, in which case nothing changed.
        A key may appear only once.
        """

    async def commit_many(self, batches: Sequence[Sequence[Write]]) -> list[int]:
        """Several commits, each atomic on its own (as `commit`), in order; their results.

        A store that can write them together overrides this (LevelDB: one batch)."""
        return [await self.commit(writes) for writes in batches]

    async def commit_later(self, writes: Sequence[Write]) -> tuple[int, Staged]:
        """`commit`, except that it may return before the writes are durable: they are
        readable here at once and written with the next write, and the `Staged` returned
        says when (`written`) or whether that failed (`lost`). A store that writes each
        commit at once (etcd) just commits.

        For a record nobody was told of yet: a called task's start, written with its end
        when its guest runs in a moment (TaskController.run)."""
        return await self.commit(writes), WRITTEN

    @abc.abstractmethod
    async def scan(
        self, prefix: str, *, reverse: bool = False, limit: int | None = None
    ) -> list[Entry]:
        """Entries whose key starts with `prefix`, in key order (or reverse)."""

    @abc.abstractmethod
    def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        """Changes under `prefix` from now on, in the order they were made."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...
