"""The object store (seed §6): named, versioned, ref-counted, pinnable values.

Metadata lives in the node's KV under `obj/<key>`; values of more than `inline_max` bytes
live in files under `DATA/objects/<2 hex>/<32 hex>`, smaller ones inline in the metadata.

Versions. An object's version is the KV revision of the put that wrote its value, so it
only grows, and a key deleted and created again never repeats an old version. Reference
and pin changes rewrite the metadata but keep the version (it is then stored explicitly).
`put(..., expected_version=N)` succeeds only if the object is at version N (0: only if
absent); every metadata change is a compare-and-swap, so of many concurrent writers
holding the same version exactly one wins and the others get `Conflict`.

Values are immutable files. A put writes a new file, commits the metadata, then unlinks
the old file; a `get` maps the file (mmap), so a reader keeps a consistent snapshot even if
the object is overwritten, deleted or collected while it reads, and a 100 MiB value is
never copied by the store. A put that fails (conflict, limit, crash) leaves at most an
orphan file, which `collect` removes; metadata only ever names a complete file.

Lifecycle (when objects are collected):
- `remove_ref` that brings the count to 0 on an unpinned object deletes it at once;
- an object with no references and no pin that has been idle (no put, ref or pin change)
  for `gc_grace_s` is deleted by `collect`, which a node runs every `gc_interval_s`
  (`spear obj gc` runs it by hand). A new object starts with no references, so a plain
  `put` lives `gc_grace_s` unless referenced or pinned;
- references held by a task (through hostcalls) are released when the task ends, so
  while a task runs, what it references is never collected under it; releasing them
  does not collect at once (the object idles `gc_grace_s` from then, like a new one);
- `delete` refuses a pinned or referenced object unless forced.

In a cluster (docs/objects.md) an `authority` (the SMS's object index) decides versions,
references and pins for every node; this store then keeps copies of values, each under
the version the authority gave it: a put commits there first (a compare-and-swap across
the cluster) and keeps the bytes here; a get asks for the current version and serves the
local copy when it is that one, otherwise fetches it from a holder and keeps it.

Limits: a value over `max_bytes` or one that would take the store over `capacity_bytes`
is `ResourceExhausted` before anything is written. The capacity is exact within one
process; processes sharing a data dir each check against the usage they see.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import mmap
import os
import shutil
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import anyio
import anyio.to_thread
import orjson

from spear._logging import logger
from spear.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SpearError,
    StorageError,
    Unavailable,
)
from spear.store.kv import Write
from spear.store.object_info import ObjectInfo
from spear.store.small_files import read_file
from spear.store.spare_files import SpareFiles, write_over

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from pathlib import Path

    from anyio.abc import TaskGroup

    from spear.store.kv import KV, Entry
    from spear.store.object_authority import ObjectAuthority

META = "obj/"
MAX_KEY_BYTES = 1024
INLINE_MAX = 4096
_RESULTS_AT_ONCE = 256  # results committed together (store_results in a cluster)
ORPHAN_GRACE_S = 600.0  # a value file no metadata names, older than this, is removed
# Dropped copies kept to tell the authority while it cannot be told (past it, their
# tombstones name this node until TOMBSTONE_KEEP_S: no harm but a KV entry each).
DROPPED_TOLD_MAX = 100_000
# A value being received (staging_path) untouched this long was cut short: each MiB
# received touches it, and a transfer with no progress for 30 s is given up.
STAGING_GRACE_S = 300.0
_RACE_RETRIES = 16
_Value = TypeVar("_Value")
if TYPE_CHECKING:
    # Reads this node's copy of a key: (the value, mapped or opened; its size; version).
    _Read = Callable[[str], Awaitable[tuple[_Value, int, int]]]


def result_key(task_id: str) -> str:
    """Where a task's result lives in the object store."""
    return f"results/{task_id}"


def check_key(key: str) -> str:
    """A key is non-empty UTF-8 text of at most 1 KiB without NUL bytes."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument("an object key must be a non-empty string")
    if "\0" in key:
        raise InvalidArgument("an object key must not contain NUL")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8 (argv)
        raise InvalidArgument("an object key must be valid UTF-8 text") from None
    if size > MAX_KEY_BYTES:
        raise InvalidArgument(f"an object key must be at most {MAX_KEY_BYTES} bytes")
    return key


def _check_expected(expected_version: int | None) -> None:
    if expected_version is not None and expected_version < 0:
        raise InvalidArgument("an expected version must be 0 (absent) or a version")


def _encode(header: dict[str, Any], inline: bytes) -> bytes:
    return orjson.dumps(header) + b"\0" + inline


def _new_header(size: int, name: str | None, now: float) -> dict[str, Any]:
    """The metadata of a new object: no references, not pinned, value inline or in `name`."""
    return {"refs": 0, "pinned": False, "created": now, "size": size, "file": name, "updated": now}


def _decode(entry: Entry) -> tuple[dict[str, Any], bytes, int]:
    """(header, inline value, object version) of a metadata entry."""
    head, _, inline = entry.value.partition(b"\0")
    try:
        header: dict[str, Any] = orjson.loads(head)
    except ValueError:
        raise StorageError(f"corrupt object metadata for {entry.key!r}") from None
    return header, inline, int(header.get("version") or entry.version)


def _info(key: str, header: dict[str, Any], version: int) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=int(header["size"]),
        version=version,
        refs=int(header.get("refs", 0)),
        pinned=bool(header.get("pinned", False)),
        created_at=float(header.get("created", 0.0)),
        updated_at=float(header.get("updated", 0.0)),
    )


def _as_read(info: ObjectInfo, version: int, size: int) -> ObjectInfo:
    """`info` of the version actually read (a later one landed here meanwhile)."""
    if (info.version, info.size) == (version, size):
        return info
    return dataclasses.replace(info, version=version, size=size)


class ObjectStore:
    """Objects of one node: metadata in its KV, values in files under `root`."""

    def __init__(
        self,
        kv: KV,
        root: Path,
        *,
        max_bytes: int = 1024**3,
        capacity_bytes: int = 16 * 1024**3,
        gc_grace_s: float = 86400.0,
        gc_interval_s: float = 60.0,
        sync: bool = False,
        inline_max: int = INLINE_MAX,
        authority: ObjectAuthority | None = None,
        spare_bytes: int | None = None,
    ) -> None:
        self._kv = kv
        self.authority = authority  # set when the node joins a cluster
        # Puts committed with the authority whose copy is not kept here yet, by key.
        self._landing: dict[str, builtins.list[anyio.Event]] = {}
        self.root = root
        self.max_bytes = max_bytes
        self.capacity_bytes = capacity_bytes
        self.gc_grace_s = gc_grace_s
        self.gc_interval_s = gc_interval_s
        self._sync = sync
        self._inline_max = inline_max
        self._used: int | None = None
        self._reserved = 0
        self._usage_lock = anyio.Lock()
        self._held: dict[str, Counter[str]] = {}  # task id -> key -> references it holds
        # The copies a cluster member's collection dropped, not yet told to the authority
        # (with its next collection: struck off their tombstones; core/object_index.py).
        self._dropped: builtins.list[tuple[str, int]] = []
        self._stop = anyio.Event()
        # Files of replaced values, written over by the next ones (store/spare_files.py).
        self.spares = SpareFiles(root, max_bytes=max_bytes if spare_bytes is None else spare_bytes)

    # -- values -----------------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: bytes | bytearray | memoryview,
        expected_version: int | None = None,
    ) -> int:
        """Write `value` under `key`; returns the new version.

        `expected_version`: None writes unconditionally, 0 only creates, N only replaces
        version N; a mismatch raises `Conflict` and changes nothing.
        """
        view = value if isinstance(value, bytes) else memoryview(value).cast("B")
        return await self._put(key, len(view), expected_version, view, None)

    async def put_file(
        self, key: str, source: Path, expected_version: int | None = None, *, move: bool = False
    ) -> int:
        """Write the contents of the file `source` under `key` (copied without reading it
        in; with `move`, a file from `staging_path` is taken over instead of copied)."""
        try:
            # (a local file: its stat is not worth a worker thread's round trip, which
            # costs more than a 1 MiB put's copy)
            size = os.stat(source).st_size
        except FileNotFoundError:
            raise NotFound(f"no such file: {source}") from None
        return await self._put(key, size, expected_version, None, source, move=move)

    def staging_path(self) -> Path:
        """A new file name on the store's file system, for a value being received (from
        the event loop or a transfer thread alike: a name and a short mkdir)."""
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)  # (on the store's file system: short)
        return staging / os.urandom(16).hex()

    async def clear_staging(self, older_than_s: float = 0.0) -> int:
        """Remove values left half-received (a transfer cut short by a crash or restart),
        untouched for `older_than_s`; how many. The receiver removes its own on failure."""
        return await anyio.to_thread.run_sync(self._clear_staging, older_than_s, time.time())

    def _clear_staging(self, older_than_s: float, now: float) -> int:
        self.spares.clear_unknown()  # (an earlier run's)
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for path in (self.root / "staging").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime >= older_than_s:
                        path.unlink()
                        removed += 1
        if removed:
            logger.info("removed {} half-received object value(s)", removed)
        return removed

    async def _put(
        self,
        key: str,
        size: int,
        expected_version: int | None,
        data: bytes | memoryview | None,
        source: Path | None,
        *,
        move: bool = False,
    ) -> int:
        check_key(key)
        _check_expected(expected_version)
        if size > self.max_bytes:
            raise ResourceExhausted(
                f"object {key!r} is {size} bytes; the maximum is {self.max_bytes} "
                "(setting object_max_bytes)"
            )
        await self._reserve(key, size)
        name: str | None = None
        try:
            inline = b""
            if size > self._inline_max:
                name = os.urandom(16).hex()
                if move and not self._sync:  # a rename on the store's file system
                    self._stage(name, data, source, move)
                else:
                    await anyio.to_thread.run_sync(self._stage, name, data, source, move)
            elif data is not None:
                inline = bytes(data)
            elif source is not None:
                try:
                    inline = await read_file(source, size)  # (a few KiB: on the loop)
                except FileNotFoundError:
                    raise NotFound(f"no such file: {source}") from None
                if len(inline) != size:
                    raise StorageError(f"{source} changed size while being stored")
            if self.authority is None:
                version, old = await self._commit(key, size, name, inline, expected_version)
            else:
                landing = anyio.Event()
                self._landing.setdefault(key, []).append(landing)
                try:
                    small = inline if size <= self._inline_max else None
                    version = await self.authority.commit(key, size, expected_version, small)
                    kept, old = await self._keep(key, size, name, inline, version)
                finally:
                    self._landed(key, landing)
                if not kept:
                    self._reserved -= size
                    if name is not None:
                        self._unlink(name)
                    return version
        except BaseException:
            self._reserved -= size
            if name is not None:
                self._unlink(name)
            raise
        self._reserved -= size
        self._used = (self._used or 0) + size - (int(old["size"]) if old else 0)
        if old and old.get("file"):
            self._retire(old["file"])
        return version

    def _stage(
        self, name: str, data: bytes | memoryview | None, source: Path | None, move: bool
    ) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            self.spares.place(path, len(data))
            write_over(path, data)
        elif source is not None:
            try:
                if move:
                    os.rename(source, path)
                else:
                    shutil.copyfile(source, path)
            except FileNotFoundError:
                raise NotFound(f"no such file: {source}") from None
        if self._sync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    async def _commit(
        self,
        key: str,
        size: int,
        name: str | None,
        inline: bytes,
        expected_version: int | None,
    ) -> tuple[int, dict[str, Any] | None]:
        if expected_version == 0:  # create only: try it without reading first
            fresh = _new_header(size, name, time.time())
            rev = await self._kv.compare_and_swap(META + key, _encode(fresh, inline), 0)
            if rev > 0:
                return rev, None
        while True:
            entry = await self._kv.get(META + key)
            now = time.time()
            old: dict[str, Any] | None = None
            if entry is None:
                if expected_version:
                    raise Conflict(
                        f"object {key!r} does not exist (expected version {expected_version})"
                    )
                header = _new_header(size, name, now)
            else:
                old, _, current = _decode(entry)
                if expected_version is not None and expected_version != current:
                    raise Conflict(
                        f"object {key!r} is at version {current}, not {expected_version}"
                    )
                header = {k: v for k, v in old.items() if k != "version"}
                header.update(size=size, file=name, updated=now)
            rev = await self._kv.compare_and_swap(
                META + key, _encode(header, inline), entry.version if entry else 0
            )
            if rev > 0:
                return rev, old
            # Another writer changed the metadata: check the expected version again.

    async def get(self, key: str) -> tuple[memoryview, int]:
        """(value, version). A large value is a read-only map of its file, not a copy."""
        check_key(key)
        if self.authority is not None:
            value, info = await self._get_current(key, self.authority, self._map_local)
            return value, info.version
        return await self.get_local(key)

    async def get_with_info(self, key: str) -> tuple[memoryview, ObjectInfo]:
        """`get`, and what `info` says of that version, found by the same reads."""
        check_key(key)
        if self.authority is not None:
            return await self._get_current(key, self.authority, self._map_local)
        for _ in range(_RACE_RETRIES):
            _, header, inline, version = await self._load(key)
            info = _info(key, header, version)
            if not header.get("file"):
                return memoryview(inline), info
            with contextlib.suppress(FileNotFoundError):
                return self._map(header["file"], int(header["size"])), info
        raise StorageError(f"object {key!r} kept changing while being read")

    async def open_with_info(self, key: str) -> tuple[BinaryIO | bytes | memoryview, ObjectInfo]:
        """`get_with_info`, the value as an open file of this node's copy (or a small
        value's bytes): what the object socket hands over. The caller closes the file."""
        check_key(key)
        if self.authority is not None:
            return await self._get_current(key, self.authority, self.open_local)
        opened, header, version = await self._open(key)
        return opened, _info(key, header, version)

    async def get_local(self, key: str) -> tuple[memoryview, int]:
        """This node's copy of `key`, whatever the cluster's current version."""
        for _ in range(_RACE_RETRIES):
            _, header, inline, version = await self._load(key)
            if not header.get("file"):
                return memoryview(inline), version
            try:
                return self._map(header["file"], int(header["size"])), version
            except FileNotFoundError:
                continue  # replaced or collected since we read the metadata: look again
        raise StorageError(f"object {key!r} kept changing while being read")

    async def open_local(self, key: str) -> tuple[BinaryIO | bytes, int, int]:
        """(an open file of the value or the inline bytes, size, version) of this node's
        copy: what the object transfer service sends (the file with `sendfile`)."""
        check_key(key)
        opened, header, version = await self._open(key)
        if isinstance(opened, bytes):
            return opened, len(opened), version
        return opened, int(header["size"]), version

    async def _open(self, key: str) -> tuple[BinaryIO | bytes, dict[str, Any], int]:
        """(an open file of this node's copy, or its inline bytes; its header; version)."""
        for _ in range(_RACE_RETRIES):
            _, header, inline, version = await self._load(key)
            if not header.get("file"):
                return inline, header, version
            try:
                # (opening is short; the caller closes it)
                f = open(self._path(header["file"]), "rb")  # noqa: ASYNC230
            except FileNotFoundError:
                continue  # replaced or collected since its header was read: look again
            return f, header, version
        raise StorageError(f"object {key!r} kept changing while being read")

    def _landed(self, key: str, landing: anyio.Event) -> None:
        waiting = self._landing.get(key, [])
        waiting.remove(landing)
        if not waiting:
            self._landing.pop(key, None)
        landing.set()

    async def landed(self, key: str) -> None:
        """Wait until this node's puts of `key` committed so far are kept here too."""
        for landing in list(self._landing.get(key, ())):
            await landing.wait()

    async def _map_local(self, key: str) -> tuple[memoryview, int, int]:
        value, version = await self.get_local(key)
        return value, len(value), version

    async def _get_current(
        self, key: str, authority: ObjectAuthority, read: _Read[_Value]
    ) -> tuple[_Value | memoryview, ObjectInfo]:
        """The current version of `key`, read from this node's copy by `read` (mapped,
        or opened: (value, size, version)), fetched here first if this node has none."""
        for _ in range(_RACE_RETRIES):
            info = await authority.current(key)
            small = authority.small_value(key, info.version)
            if small is not None:  # kept in the index: no copy here, no hop to a holder
                return memoryview(small), info
            with contextlib.suppress(NotFound):
                value, size, version = await read(key)
                if version >= info.version:
                    return value, _as_read(info, version, size)
                if isinstance(value, io.IOBase):
                    value.close()  # an older copy, opened
            if key in self._landing:  # written here a moment ago: its copy is landing
                await self.landed(key)
                continue
            try:
                await self._fetch(key, info, authority)
            except Unavailable:
                # Overwritten while we fetched (its holders moved on): read the new one.
                if (await authority.current(key)).version == info.version:
                    raise
                continue
            value, size, version = await read(key)
            return value, _as_read(info, version, size)
        raise StorageError(f"object {key!r} kept changing while being read")

    async def _fetch(self, key: str, info: ObjectInfo, authority: ObjectAuthority) -> None:
        """Copy version `info.version` of `key` from a holder and keep it here."""
        await self._reserve(key, info.size)
        name: str | None = os.urandom(16).hex()
        assert name is not None
        try:
            path = self._path(name)
            await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
            self.spares.place(path, info.size)
            await authority.fetch(key, info, path)
            inline = b""
            if info.size <= self._inline_max:
                inline = await read_file(path, info.size)
                self._unlink(name)
                name = None
            kept, old = await self._keep(key, info.size, name, inline, info.version)
        except BaseException:
            self._reserved -= info.size
            if name is not None:
                self._unlink(name)
            raise
        self._reserved -= info.size
        if not kept:
            if name is not None:
                self._unlink(name)
            return
        self._used = (self._used or 0) + info.size - (int(old["size"]) if old else 0)
        if old and old.get("file"):
            self._retire(old["file"])
        with contextlib.suppress(SpearError):  # (a cache nobody hears of is still a cache)
            await authority.hold(key, info.version)

    async def _keep(
        self, key: str, size: int, name: str | None, inline: bytes, version: int
    ) -> tuple[bool, dict[str, Any] | None]:
        """Keep a copy of `version` of `key` (the authority's version); (kept, the copy it
        replaced). Not kept when this node already has that version or a later one."""
        while True:
            entry = await self._kv.get(META + key)
            old: dict[str, Any] | None = None
            if entry is not None:
                old, _, current = _decode(entry)
                if current >= version:
                    return False, None
            header = _new_header(size, name, time.time())
            header["version"] = version
            raw = _encode(header, inline)
            if await self._kv.compare_and_swap(META + key, raw, entry.version if entry else 0) > 0:
                return True, old

    async def drop_local(self, key: str) -> None:
        """Forget this node's copy of `key` (stale, or the object is gone)."""
        while True:
            entry = await self._kv.get(META + key)
            if entry is None:
                return
            header, _, _ = _decode(entry)
            if await self._kv.compare_and_swap(META + key, None, entry.version) == 0:
                self._forget(header)
                return

    async def relabel(self, key: str, old: int, new: int) -> None:
        """This node's copy of `key` at version `old` is version `new` from now on (the
        authority adopted it under a version of its own)."""
        while True:
            entry = await self._kv.get(META + key)
            if entry is None:
                return
            header, inline, version = _decode(entry)
            if version != old:
                return
            header["version"] = new
            raw = _encode(header, inline)
            if await self._kv.compare_and_swap(META + key, raw, entry.version) > 0:
                return

    async def held(self) -> builtins.list[tuple[str, int, int]]:
        """(key, version, size) of every copy this node holds."""
        out = []
        for entry in await self._kv.scan(META):
            header, _, version = _decode(entry)
            out.append((entry.key[len(META) :], version, int(header["size"])))
        return out

    def _map(self, name: str, size: int) -> memoryview:
        with open(self._path(name), "rb") as f:
            if os.fstat(f.fileno()).st_size != size:
                raise StorageError(f"the value file of {name} is damaged (wrong size)")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(mapped)

    async def _load(self, key: str) -> tuple[Entry, dict[str, Any], bytes, int]:
        """The metadata entry of `key`, its header, inline value and version."""
        entry = await self._kv.get(META + key)
        if entry is None:
            raise NotFound(f"no such object: {key}")
        return (entry, *_decode(entry))

    async def info(self, key: str) -> ObjectInfo:
        check_key(key)
        if self.authority is not None:
            return await self.authority.current(key)
        _, header, _, version = await self._load(key)
        return _info(key, header, version)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order."""
        if self.authority is not None:
            return await self.authority.list(prefix)
        out = []
        for entry in await self._kv.scan(META + prefix):
            header, _, version = _decode(entry)
            out.append(_info(entry.key[len(META) :], header, version))
        return out

    async def delete(
        self, key: str, expected_version: int | None = None, *, force: bool = False
    ) -> None:
        """Remove an object; a pinned or referenced one only with `force`."""
        check_key(key)
        _check_expected(expected_version)
        if self.authority is not None:
            change = "force-delete" if force else "delete"
            await self.authority.change(key, change, expected_version=expected_version)
            await self.drop_local(key)
            return
        while True:
            entry, header, _, version = await self._load(key)
            if expected_version is not None and expected_version != version:
                raise Conflict(f"object {key!r} is at version {version}, not {expected_version}")
            if not force and (header.get("pinned") or header.get("refs", 0) > 0):
                held = "pinned" if header.get("pinned") else f"referenced {header['refs']} time(s)"
                raise Conflict(f"object {key!r} is {held}; unpin it, or delete with force")
            if await self._kv.compare_and_swap(META + key, None, entry.version) == 0:
                self._forget(header)
                return

    def _forget(self, header: dict[str, Any]) -> None:
        if self._used is not None:
            self._used -= int(header["size"])
        if header.get("file"):
            self._unlink(header["file"])  # (deleted: its room given back, not kept)

    # -- references and pins ----------------------------------------------------------

    async def _change(
        self,
        key: str,
        change: Callable[[dict[str, Any]], None],
        *,
        collect_if_free: bool = False,
        cluster_change: str | None = None,
    ) -> ObjectInfo:
        check_key(key)
        if cluster_change is not None and self.authority is not None:
            info, deleted = await self.authority.change(key, cluster_change)
            if deleted:
                await self.drop_local(key)
            return info
        while True:
            entry, header, inline, version = await self._load(key)
            change(header)
            header["version"] = version
            header["updated"] = time.time()
            free = header["refs"] == 0 and not header.get("pinned")
            if collect_if_free and free:
                if await self._kv.compare_and_swap(META + key, None, entry.version) == 0:
                    logger.debug("object {} collected: its last reference went away", key)
                    self._forget(header)
                    return _info(key, header, version)
                continue
            new = _encode(header, inline)
            if await self._kv.compare_and_swap(META + key, new, entry.version) > 0:
                return _info(key, header, version)

    async def add_ref(self, key: str, *, holder: str | None = None) -> int:
        """Count one more reference; returns the new count. `holder` (a task id) lets the
        reference be released when that holder ends (`release_holder`)."""

        def inc(header: dict[str, Any]) -> None:
            header["refs"] = int(header.get("refs", 0)) + 1

        info = await self._change(key, inc, cluster_change="ref")
        if holder is not None:
            self._held.setdefault(holder, Counter())[key] += 1
        return info.refs

    async def remove_ref(self, key: str, *, holder: str | None = None) -> int:
        """Drop one reference; returns the new count. At 0 an unpinned object is deleted."""

        def dec(header: dict[str, Any]) -> None:
            if int(header.get("refs", 0)) <= 0:
                raise InvalidArgument(f"object {key!r} has no references to remove")
            header["refs"] = int(header["refs"]) - 1

        info = await self._change(key, dec, collect_if_free=True, cluster_change="unref")
        held = self._held.get(holder) if holder is not None else None
        if held is not None and held[key] > 0:
            held[key] -= 1
        return info.refs

    async def pin(self, key: str) -> None:
        """Keep the object until unpinned, whatever its references."""
        await self._change(key, lambda h: h.__setitem__("pinned", True), cluster_change="pin")

    async def unpin(self, key: str) -> None:
        """Make the object collectable again (its idle time starts now)."""
        await self._change(key, lambda h: h.__setitem__("pinned", False), cluster_change="unpin")

    async def release_holders(self, holders: Sequence[str]) -> None:
        """`release_holder` for each of `holders` (most hold nothing)."""
        for holder in holders:
            if holder in self._held:
                await self.release_holder(holder)

    async def release_holder(self, holder: str) -> None:
        """Drop every reference `holder` still holds (a task that ended)."""
        held = self._held.pop(holder, None)
        for key, count in (held or Counter()).items():
            if count <= 0:
                continue

            def dec(header: dict[str, Any], count: int = count) -> None:
                header["refs"] = max(0, int(header.get("refs", 0)) - count)

            # Not collected at once: the object then idles like a new one (gc_grace_s).
            with contextlib.suppress(NotFound):
                if self.authority is not None:
                    await self.authority.change(key, "release", count)
                else:
                    await self._change(key, dec)

    # -- capacity ---------------------------------------------------------------------

    async def usage(self) -> int:
        """Bytes of values currently stored (as this process sees them)."""
        if self._used is None:
            async with self._usage_lock:
                if self._used is None:
                    total = 0
                    for entry in await self._kv.scan(META):
                        total += int(_decode(entry)[0]["size"])
                    self._used = total
        return self._used

    async def _reserve(self, key: str, size: int) -> None:
        used = await self.usage()
        if used + self._reserved + size > self.capacity_bytes:
            raise ResourceExhausted(
                f"object store full: {key!r} needs {size} bytes, {used + self._reserved} of "
                f"{self.capacity_bytes} are in use (setting object_store_capacity_bytes)"
            )
        self._reserved += size

    # -- collection -------------------------------------------------------------------

    async def collect(self, grace_s: float | None = None) -> builtins.list[str]:
        """Delete objects with no references and no pin idle for `grace_s` (default
        `gc_grace_s`), and value files no metadata names. Returns the keys deleted."""
        grace = self.gc_grace_s if grace_s is None else grace_s
        if self.authority is not None:
            return await self._collect_cluster(grace, self.authority)
        now = time.time()
        deleted: builtins.list[str] = []
        live: set[str] = set()
        for entry in await self._kv.scan(META):
            header, _, _ = _decode(entry)
            key = entry.key[len(META) :]
            idle = now - float(header.get("updated", 0.0))
            if header.get("refs", 0) > 0 or header.get("pinned") or idle < grace:
                if header.get("file"):
                    live.add(header["file"])
                continue
            if await self._kv.compare_and_swap(entry.key, None, entry.version) == 0:
                self._forget(header)
                deleted.append(key)
            elif header.get("file"):
                live.add(header["file"])  # changed under us: it stays
        await anyio.to_thread.run_sync(self._remove_orphans, live, now)
        if deleted:
            logger.info("collected {} unreferenced object(s)", len(deleted))
        return deleted

    async def _collect_cluster(
        self, grace_s: float, authority: ObjectAuthority
    ) -> builtins.list[str]:
        """The cluster's collection, then this node's copies that are no longer current
        (collected, deleted or overwritten elsewhere) and orphan files."""
        told = self._dropped[:]
        deleted = await authority.collect(grace_s, told)
        del self._dropped[: len(told)]
        current = {info.key: info.version for info in await authority.list("")}
        live: set[str] = set()
        for entry in await self._kv.scan(META):
            header, _, version = _decode(entry)
            key = entry.key[len(META) :]
            if current.get(key) == version:
                if header.get("file"):
                    live.add(header["file"])
            elif await self._kv.compare_and_swap(entry.key, None, entry.version) == 0:
                self._forget(header)
                if len(self._dropped) < DROPPED_TOLD_MAX:
                    self._dropped.append((key, version))
            elif header.get("file"):
                live.add(header["file"])
        await anyio.to_thread.run_sync(self._remove_orphans, live, time.time())
        if deleted:
            logger.info("collected {} unreferenced object(s) in the cluster", len(deleted))
        return deleted

    def _remove_orphans(self, live: set[str], now: float) -> None:
        if not self.root.is_dir():
            return
        self._clear_staging(STAGING_GRACE_S, now)
        for sub in self.root.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for path in sub.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.name not in live and now - path.stat().st_mtime > ORPHAN_GRACE_S:
                        path.unlink()

    @contextlib.asynccontextmanager
    async def sweeping(self, task_group: TaskGroup) -> AsyncIterator[None]:
        """Collect every `gc_interval_s` (in `task_group`) until the context is left."""
        if self.gc_interval_s > 0:
            task_group.start_soon(self._sweep_forever)
        try:
            yield
        finally:
            self._stop.set()

    async def _sweep_forever(self) -> None:
        while True:
            with anyio.move_on_after(self.gc_interval_s):
                await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                await self.collect()
            except Exception:  # a failed sweep must not stop the node; the next one retries
                logger.exception("object collection failed")

    async def store_results(
        self, items: Sequence[tuple[str, Path | None]], *, key: Callable[[str], str] = result_key
    ) -> None:
        """`store_result` for many finished tasks: the empty results in one write. `key`:
        where a task's result is kept (a namespace's tasks keep theirs in it)."""
        empty = [task_id for task_id, stdout in items if stdout is None]
        if self.authority is not None:
            empty = []  # each result is a commit with the cluster's authority
        if empty and await self.usage() + self._reserved > self.capacity_bytes:
            empty = []  # full: each one below says so
        batched = set(empty)
        rest = [(task_id, stdout) for task_id, stdout in items if task_id not in batched]
        if self.authority is not None and len(rest) > 1:
            await self._store_results_in_cluster(rest, key)
        else:
            for task_id, stdout in rest:
                await self.store_result(task_id, stdout, key=key)
        if empty:
            raw = _encode(_new_header(0, None, time.time()), b"")
            writes = [Write(META + key(t), raw, 0) for t in empty]
            # All in one write; if a task set its result itself (which is kept, as
            # store_result keeps it), each is written on its own: that one fails alone.
            if len(writes) == 1 or await self._kv.commit(writes) < 0:
                await self._kv.commit_many([[w] for w in writes])

    async def _store_results_in_cluster(
        self, items: Sequence[tuple[str, Path | None]], key: Callable[[str], str]
    ) -> None:
        """`store_result` for each of `items`, in a cluster: the small ones (the index
        keeps their bytes) committed together and kept here in one write, the larger ones
        each as a put of its own, all at once. Every one is tried; the first failure is
        raised once all have ended."""
        small: list[tuple[str, Path | None, int]] = []
        large: list[tuple[str, Path | None]] = []
        for task_id, stdout in items:
            try:
                size = 0 if stdout is None else os.stat(stdout).st_size
            except FileNotFoundError:
                size = self._inline_max + 1  # (store_result says so)
            if size <= self._inline_max:
                small.append((task_id, stdout, size))
            else:
                large.append((task_id, stdout))
        failures = await self._store_small_results(small, key) if small else []
        if large:
            failures += await self._store_results_together(large, key)
        if failures:
            raise failures[0]

    async def _store_small_results(
        self, items: Sequence[tuple[str, Path | None, int]], key: Callable[[str], str]
    ) -> builtins.list[SpearError]:
        """Small results (each at most `inline_max`: no value file) committed with the
        authority in one `commit_many` and kept here in one KV write, with no task of
        their own each: spawning a task and writing the KV for each result cost a cluster
        member about a seventh of its CPU under batches of short tasks. The failures."""
        authority = self.authority
        assert authority is not None
        failures: list[SpearError] = []
        values: list[tuple[str, bytes]] = []
        read: list[tuple[str, Path | None]] = []
        for task_id, stdout, size in items:
            try:
                value = b"" if stdout is None else await read_file(stdout, size)
            except FileNotFoundError:
                failures.append(NotFound(f"no such file: {stdout}"))
                continue
            if len(value) != size:
                failures.append(StorageError(f"{stdout} changed size while being stored"))
                continue
            values.append((key(task_id), value))
            read.append((task_id, stdout))
        total = sum(len(value) for _, value in values)
        try:
            await self._reserve("results/", total)
        except ResourceExhausted:  # full: each one says so on its own
            for task_id, stdout in read:
                await self.store_result(task_id, stdout, key=key)
            return failures
        landings = [(k, anyio.Event()) for k, _ in values]
        for k, landing in landings:
            self._landing.setdefault(k, []).append(landing)
        try:
            outcomes = await authority.commit_many([(k, len(v), 0, v) for k, v in values])
            committed: list[tuple[str, bytes, int]] = []
            for (k, value), outcome in zip(values, outcomes, strict=True):
                if isinstance(outcome, Conflict):
                    continue  # set explicitly by the task
                if isinstance(outcome, SpearError):
                    failures.append(outcome)
                elif isinstance(outcome, Exception):
                    raise outcome
                else:
                    committed.append((k, value, outcome))
            await self._keep_small(committed)
        finally:
            self._reserved -= total
            for k, landing in landings:
                self._landed(k, landing)
        return failures

    async def _keep_small(self, committed: Sequence[tuple[str, bytes, int]]) -> None:
        """Keep copies of new small values (key, value, the authority's version): in one
        create-only write, or, if this node has any of those keys already, each by `_keep`."""
        now = time.time()
        writes = []
        for key, value, version in committed:
            header = _new_header(len(value), None, now)
            header["version"] = version
            writes.append(Write(META + key, _encode(header, value), 0))
        if writes and (len(writes) == 1 or await self._kv.commit(writes) < 0):
            for key, value, version in committed:
                kept, old = await self._keep(key, len(value), None, value, version)
                if kept:
                    self._used = (self._used or 0) + len(value) - (int(old["size"]) if old else 0)
            return
        self._used = (self._used or 0) + sum(len(value) for _, value, _ in committed)

    async def _store_results_together(
        self, items: Sequence[tuple[str, Path | None]], key: Callable[[str], str]
    ) -> builtins.list[SpearError]:
        """`store_result` for each of `items` at once: each is a commit with the cluster's
        authority, and commits made together go to it in one or two calls
        (node/object_commits.py), where one after another they went one call each (a
        batch of 300 tasks made ~67 calls to the SMS). Every one is tried; the failures."""
        failures: list[SpearError] = []

        async def one(task_id: str, stdout: Path | None) -> None:
            try:
                await self.store_result(task_id, stdout, key=key)
            except SpearError as exc:
                failures.append(exc)

        for start in range(0, len(items), _RESULTS_AT_ONCE):
            async with anyio.create_task_group() as tg:
                for task_id, stdout in items[start : start + _RESULTS_AT_ONCE]:
                    tg.start_soon(one, task_id, stdout)
        return failures

    async def store_result(
        self, task_id: str, stdout: Path | None, *, key: Callable[[str], str] = result_key
    ) -> None:
        """The task's result is its stdout unless it set one explicitly (hostcall), kept
        at `key(task_id)`."""
        try:
            if stdout is not None:
                await self.put_file(key(task_id), stdout, expected_version=0)
            else:
                await self.put(key(task_id), b"", expected_version=0)
        except Conflict:
            pass  # set explicitly by the task
        except ResourceExhausted as exc:
            logger.warning("task {}: result not stored: {}", task_id, exc)

    # -- files ------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def _retire(self, name: str) -> None:
        """The file `name`, which no version names any more: a spare, or gone."""
        self.spares.retire(self._path(name))
