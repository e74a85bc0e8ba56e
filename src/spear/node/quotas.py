"""Per-namespace quotas: how many tasks a namespace may have unfinished on a node at
once, how many bytes of objects it may keep there, and how many bytes of task logs.

The node's owner sets them with `spear quota set NS --tasks N --object-bytes SIZE`; they
live in `DATA/auth/quotas.json` (owner-only, beside the tokens) and a running node sees a
change within a second. A namespace with no entry has no limit. Going over a quota is
`ResourceExhausted` (RESOURCE_EXHAUSTED on the wire, exit 71), naming the quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from spear.core.namespaces import check_name
from spear.errors import InvalidArgument, NotFound, ResourceExhausted, StorageError
from spear.transport.auth import write_private

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from spear.core.cluster_quotas import ClusterTaskSlots
    from spear.core.logs import TaskLogs
    from spear.core.sms import MetadataServer

QUOTAS_FILE = "quotas.json"
_RELOAD_EVERY_S = 1.0
# File systems stamp an mtime from a clock that ticks coarsely (a jiffy on ext4 before
# Linux 6.13, 1 s on HFS+, 2 s on FAT): a rewrite in the tick of a read keeps the mtime the
# read saw. A file changed less than this long before a read is read again at the next call.
_SETTLED_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class Quota:
    """One namespace's limits; None is no limit."""

    namespace: str
    tasks: int | None = None
    object_bytes: int | None = None
    log_bytes: int | None = None

    def __post_init__(self) -> None:
        check_name(self.namespace)
        for name in ("tasks", "object_bytes", "log_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidArgument(f"quota {name} must be a whole number")
            if value is not None and value < 0:
                raise InvalidArgument(f"quota {name} must not be negative")

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "tasks": self.tasks,
            "object_bytes": self.object_bytes,
            "log_bytes": self.log_bytes,
        }


class QuotaFile:
    """The quotas of a node's data dir (`DATA/auth/quotas.json`)."""

    def __init__(self, auth_dir: Path) -> None:
        self.path = auth_dir / QUOTAS_FILE
        self._quotas: dict[str, Quota] = {}
        self._mtime: int | None = None

    def _load(self) -> None:
        now = time.time_ns()
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._quotas, self._mtime = {}, None
            return
        if stat.st_mtime_ns == self._mtime:
            return
        try:
            records = orjson.loads(self.path.read_bytes())
            if not isinstance(records, dict):
                raise TypeError("not a JSON object")
            self._quotas = {q["namespace"]: Quota(**q) for q in records.get("quotas", [])}
        except (OSError, orjson.JSONDecodeError, TypeError, KeyError, InvalidArgument) as exc:
            raise StorageError(f"the quota file {self.path} cannot be read: {exc}") from None
        self._mtime = stat.st_mtime_ns if now - stat.st_mtime_ns >= _SETTLED_NS else None

    def get(self, namespace: str) -> Quota | None:
        # A stat per call (~2 us; the file is read again only when it changed, or changed
        # less than 2 s before the last read): a quota set by `spear quota set` holds from
        # the next submit on, not a second later.
        self._load()
        return self._quotas.get(namespace)

    def all(self) -> list[Quota]:
        self._load()
        return sorted(self._quotas.values(), key=lambda q: q.namespace)

    def set(self, quota: Quota) -> None:
        self._load()
        self._quotas[quota.namespace] = quota
        self._save()

    def remove(self, namespace: str) -> Quota:
        self._load()
        gone = self._quotas.pop(namespace, None)
        if gone is None:
            raise NotFound(f"namespace {namespace!r} has no quota")
        self._save()
        return gone

    def _save(self) -> None:
        body = {"quotas": [q.to_json() for q in sorted(self._quotas.values(), key=_name)]}
        write_private(self.path, orjson.dumps(body, option=orjson.OPT_INDENT_2))
        self._mtime = None


def _name(quota: Quota) -> str:
    return quota.namespace


class TaskSlots:
    """The tasks each namespace has unfinished on this node, held against its quota.

    A slot is taken before a task is submitted and kept, by the task's id, until the task
    is seen finished (`is_done` is asked only when the namespace is at its limit, so a
    namespace under its quota pays nothing)."""

    def __init__(self, quotas: QuotaFile) -> None:
        self.quotas = quotas
        self._live: dict[str, set[str]] = {}
        self._pending: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.log_usage = LogUsage()
        # namespace -> until when it is known to have no cluster-wide quota (the SMS's)
        self.cluster_unlimited: dict[str, float] = {}

    @contextlib.asynccontextmanager
    async def slot(
        self, namespace: str, is_done: Callable[[str], Awaitable[bool]]
    ) -> AsyncIterator[Callable[[str], None]]:
        """Hold one task slot of `namespace` while the block runs; the block calls the
        yielded function with the task's id to keep the slot until that task ends."""
        quota = self.quotas.get(namespace)
        limit = None if quota is None else quota.tasks
        if limit is None:
            yield lambda _id: None
            return
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        live = self._live.setdefault(namespace, set())
        async with lock:
            if len(live) + self._pending.get(namespace, 0) >= limit:
                for task_id in list(live):
                    if await is_done(task_id):
                        live.discard(task_id)
            if len(live) + self._pending.get(namespace, 0) >= limit:
                raise ResourceExhausted(
                    f"namespace {namespace!r} is at its quota of {limit} unfinished tasks"
                )
            self._pending[namespace] = self._pending.get(namespace, 0) + 1
        try:
            yield live.add
        finally:
            self._pending[namespace] -= 1


class LogUsage:
    """The bytes of task logs each namespace keeps on this node, measured at most once a
    second per namespace (only for a namespace with a log quota: others pay nothing)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int]] = {}

    async def check(
        self, quota: Quota, task_ids: Callable[[], Awaitable[list[str]]], logs: TaskLogs
    ) -> None:
        """ResourceExhausted if `quota.namespace`'s tasks (`task_ids`) keep `quota.log_bytes`
        of logs or more in `logs`."""
        limit = quota.log_bytes
        if limit is None:
            return
        now = time.monotonic()
        seen = self._seen.get(quota.namespace)
        if seen is None or now - seen[0] >= _RELOAD_EVERY_S:
            ids = await task_ids()
            used = await anyio.to_thread.run_sync(_bytes_of, [logs.directory(i) for i in ids])
            seen = self._seen[quota.namespace] = (now, used)
        if seen[1] >= limit:
            raise ResourceExhausted(
                f"namespace {quota.namespace!r} is at its quota of {limit} log bytes"
                f" ({seen[1]} kept; delete finished tasks with `spear delete`)"
            )


def _bytes_of(directories: list[Path]) -> int:
    total = 0
    for directory in directories:
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def cluster_task_slots(sms: MetadataServer, data_dir: Path) -> ClusterTaskSlots:
    """The SMS's cluster-wide task quotas: the `tasks` of the quotas in its own data dir
    (`spear quota set NS --tasks N --data-dir SMS_DIR`), held against its task records."""
    from spear.core.cluster_quotas import ClusterTaskSlots
    from spear.transport.auth import AUTH_DIR

    quotas = QuotaFile(data_dir / AUTH_DIR)

    def limit_of(namespace: str) -> int | None:
        quota = quotas.get(namespace)
        return None if quota is None else quota.tasks

    async def finished(task_id: str) -> bool | None:
        try:
            return (await sms.task(task_id)).state.terminal
        except NotFound:
            return None

    return ClusterTaskSlots(limit_of, finished)
