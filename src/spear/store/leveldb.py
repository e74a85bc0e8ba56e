"""The KV seam on an embedded LevelDB (plyvel).

LevelDB admits one process per directory. Two ways of owning it:

- held (a daemon, an embedded node): opened once, kept open, every operation inline.
  Operations take microseconds, so they run on the event loop rather than paying a
  thread hop each.
- shared (short CLI processes such as `spear run`): opened when an operation needs it and
  closed once idle for a few ms (or open for 0.1 s), retrying while another process holds
  the lock. Two `spear run` processes on one data dir then interleave their few writes
  instead of failing.

A process opens a directory through exactly one owner (`_OPEN` below): plyvel's failed
second open of a directory inside one process silently drops the lock the first holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import plyvel

from spear._logging import logger
from spear._loopstate import ready_count
from spear.errors import ResourceExhausted, StorageBusy, StorageError
from spear.store import diskspace
from spear.store.kv import KV, WRITTEN, Entry, EventKind, Staged, WatchEvent, Write

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

T = TypeVar("T")

_REV_KEY = b"\x00meta/revision"
_DATA = b"d/"  # user keys live under this prefix so metadata never shows in scans
_VERSION = struct.Struct(">Q")  # a stored value starts with its version, 8 bytes big-endian

_ABSENT = object()
_RECENT_MAX = 100_000  # entries of LevelDBKV._recent (a few tens of MB of task records)

# A shared handle stays open this long after an operation, and is closed after an
# operation once open this long (measured: a `spear run` made six opens of ~1-3 ms each).
_LINGER_S = 0.025
_MAX_HOLD_S = 0.1
# ... and then not reopened for this long, while a waiting process retries at least this
# often: a busy user of the database lets another in (a failed open costs ~0.1 ms).
_YIELD_S = 0.01
_RETRY_MAX_S = 0.004

_OPEN: set[str] = set()  # the paths open in this process
_OPEN_LOCK = threading.Lock()


def _encode(version: int, value: bytes) -> bytes:
    return _VERSION.pack(version) + value


def _entry(key: str, raw: bytes | None) -> Entry | None:
    """The entry of `key` from its stored bytes (None: absent)."""
    if raw is None:
        return None
    version, value = _decode(raw)
    return Entry(key, value, version)


def _decode(raw: bytes) -> tuple[int, bytes]:
    return _version_of(raw), raw[_VERSION.size :]


def _version_of(raw: bytes) -> int:
    version: int = _VERSION.unpack_from(raw)[0]
    return version


def _open(path: str, create: bool, *, reserved: bool = True) -> Any:
    try:
        return plyvel.DB(path, create_if_missing=create)
    except plyvel.IOError as exc:
        if "lock" in str(exc):
            raise StorageBusy(f"the database at {path} is in use by another process") from exc
        if reserved and diskspace.is_no_space(exc):
            # Opening writes (a new log, the manifest): the data dir's reserve gives it
            # the room to, so that reading goes on while the owner frees space.
            reserve = diskspace.Reserve(Path(path).parent)
            if reserve.release():
                logger.warning("the disk of {} is full: its reserve was given back", path)
                return _open(path, create, reserved=False)
        full = diskspace.no_space(exc, f"the database at {path}")
        raise full or StorageError(f"cannot open the database at {path}: {exc}") from exc
    except plyvel.Error as exc:
        raise StorageError(f"cannot open the database at {path}: {exc}") from exc


def _database_error(exc: Exception) -> StorageError | ResourceExhausted:
    return diskspace.no_space(exc, "the database") or StorageError(f"database error: {exc}")


class LevelDBKV(KV):
    """LevelDB behind the KV seam. Use `LevelDBKV.open(path, hold=...)`."""

    def __init__(self, path: str, *, hold: bool, busy_timeout_s: float, sync: bool) -> None:
        self._path = path
        self._hold = hold
        self._busy_timeout_s = busy_timeout_s
        self._sync = sync
        self._db: Any = None  # held: always; shared: while it lingers after an operation
        self._opened_at: float  # (shared) when `_db` was opened
        self._reopen_at = 0.0  # (shared) not reopened before then: another's turn
        self._last_used: float  # (shared) when `_db` was last used
        self._closer: threading.Timer | None = None
        self._rev: int | None = None  # the last revision written, known while held
        self._lock = threading.RLock()
        self._closed = False
        self._overlay: dict[bytes, bytes | None] = {}  # staged, not yet written (in order)
        # What a held database stores for keys read or written lately: nobody else writes
        # it, so reads of them need no LevelDB call (which, releasing the GIL, would hand
        # the interpreter to a worker thread and wait to get it back).
        self._recent: dict[bytes, bytes | None] = {}
        self._staged_events: list[WatchEvent] = []
        self._batch: _Batch | None = None  # how the write of what is staged went
        self._watchers: list[tuple[str, asyncio.Queue[WatchEvent], asyncio.AbstractEventLoop]] = []

    @classmethod
    def open(
        cls, path: str, *, hold: bool = True, busy_timeout_s: float = 10.0, sync: bool = False
    ) -> LevelDBKV:
        """Open (or create) the database at `path`.

        `hold=False` opens per operation (see the module doc). `sync=True` fsyncs every
        write; without it a write survives the process being killed but not the machine
        losing power.
        """
        path = os.path.abspath(path)
        with _OPEN_LOCK:
            if path in _OPEN:
                raise StorageError(f"the database at {path} is already open in this process")
            kv = cls(path, hold=hold, busy_timeout_s=busy_timeout_s, sync=sync)
            if hold:
                kv._db = _open(path, create=True)
            else:
                try:
                    os.makedirs(path, exist_ok=True)
                except OSError as exc:
                    raise StorageError(f"cannot open the database at {path}: {exc}") from None
                kv._with_db(lambda db: None)  # fail early if the path is unusable
            _OPEN.add(path)
            return kv

    # -- owning the handle ----------------------------------------------------------

    @contextlib.contextmanager
    def _db_handle(self) -> Iterator[Any]:
        if self._closed:
            raise StorageError("the database is closed")
        if self._hold:
            yield self._db
            return
        # Shared: the handle lingers `_LINGER_S` after an operation (a `spear run` makes
        # half a dozen in a few ms: one open instead of six, and one memtable flush), and
        # is closed after an operation once it has been open `_MAX_HOLD_S`, so another
        # process waits at most about that long for its turn. (Callers hold self._lock.)
        if self._db is None:
            wait = self._reopen_at - time.monotonic()
            if wait > 0:  # just let go after a long hold: give a waiting process its turn
                time.sleep(wait)
            self._db = self._open_shared()
            self._opened_at = time.monotonic()
        try:
            yield self._db
        finally:
            self._last_used = time.monotonic()
            if self._last_used - self._opened_at >= _MAX_HOLD_S:
                self._close_handle()
                self._reopen_at = self._last_used + _YIELD_S
            elif self._closer is None:
                self._close_idle_in(_LINGER_S)

    def _open_shared(self) -> Any:
        deadline = time.monotonic() + self._busy_timeout_s
        delay = 0.001
        while True:
            try:
                return _open(self._path, create=True)
            except StorageBusy:
                if time.monotonic() >= deadline:
                    raise StorageBusy(
                        f"the data dir database {self._path} stayed locked for "
                        f"{self._busy_timeout_s:g}s (is a spear daemon serving it? use --node)"
                    ) from None
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, _RETRY_MAX_S)

    def _close_idle_in(self, delay_s: float) -> None:
        # A daemon thread: a process ending with the handle lingering is not held up.
        self._closer = threading.Timer(delay_s, self._close_idle)
        self._closer.daemon = True
        self._closer.start()

    def _close_idle(self) -> None:  # (only shared handles linger)
        with self._lock:
            self._closer = None
            if self._db is None:
                return
            idle = time.monotonic() - self._last_used
            if idle >= _LINGER_S:
                self._close_handle()
            else:  # used since: look again when it will have been idle long enough
                self._close_idle_in(_LINGER_S - idle)

    def _close_handle(self) -> None:
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def _with_db(self, fn: Callable[[Any], T]) -> T:
        if self._hold:  # the common case, without a generator context manager per operation
            with self._lock:
                if self._closed:
                    raise StorageError("the database is closed")
                try:
                    return fn(self._db)
                except plyvel.Error as exc:
                    raise _database_error(exc) from exc
        with self._lock, self._db_handle() as db:
            try:
                return fn(db)
            except plyvel.Error as exc:
                raise _database_error(exc) from exc

    async def _run(self, fn: Callable[[Any], T]) -> T:
        if self._hold:
            return self._with_db(fn)
        return await anyio.to_thread.run_sync(self._with_db, fn)

    # -- writing: one revision per change, group-committed while held ----------------
    #
    # A held database stages every change in `_overlay` (read back by later operations at
    # once) and writes all changes staged in one turn of the event loop as one LevelDB
    # write batch, at the start of the next turn; each writer awaits that batch. Ten
    # thousand tasks submitted together then cost a few batches, not sixty thousand
    # writes, and with `sync=True` one fsync serves them all. Nothing is acknowledged
    # before its batch is written. The revision is staged as a change of `_REV_KEY`.

    def _next_revision(self, db: Any) -> int:
        if self._rev is not None:
            return self._rev + 1
        raw = db.get(_REV_KEY)
        return (_version_of(raw) if raw else 0) + 1

    def _raw(self, db: Any, key: bytes) -> bytes | None:
        """The stored bytes of `key`, staged changes included."""
        staged = self._overlay.get(key, _ABSENT)
        if staged is not _ABSENT:
            return staged  # type: ignore[return-value]
        if not self._hold:
            raw: bytes | None = db.get(key)
            return raw
        staged = self._recent.get(key, _ABSENT)
        if staged is not _ABSENT:
            return staged  # type: ignore[return-value]
        raw = db.get(key)
        self._keep_recent({key: raw})
        return raw

    def _keep_recent(self, entries: dict[bytes, bytes | None]) -> None:
        if len(self._recent) + len(entries) > _RECENT_MAX:
            self._recent.clear()
        self._recent.update(entries)

    def _version(self, db: Any, key: bytes) -> int:
        raw = self._raw(db, key)
        return 0 if raw is None else _version_of(raw)

    def _change(self, db: Any, writes: list[tuple[bytes, bytes | None]], rev: int) -> None:
        """Make `writes` (raw key, value or None to delete) at revision `rev`."""
        # Watch events only while somebody watches: a watch sees changes from its start.
        events = (
            [
                WatchEvent(EventKind.DELETE, key[len(_DATA) :].decode(), b"", rev)
                if value is None
                else WatchEvent(EventKind.PUT, key[len(_DATA) :].decode(), value, rev)
                for key, value in writes
            ]
            if self._watchers
            else []
        )
        staged = {k: None if v is None else _encode(rev, v) for k, v in writes}
        staged[_REV_KEY] = _VERSION.pack(rev)
        if not self._hold:
            self._write_batch(db, staged)
            self._notify(events)
            return
        self._rev = rev  # no other process writes a database we hold
        self._overlay.update(staged)
        self._staged_events.extend(events)
        if self._batch is None:
            self._batch = _Batch()

    def _write_batch(self, db: Any, staged: dict[bytes, bytes | None]) -> None:
        """Write `staged` (raw key: stored bytes, None to delete) as one batch."""
        with db.write_batch(sync=self._sync) as batch:
            for key, raw in staged.items():
                if raw is None:
                    batch.delete(key)
                else:
                    batch.put(key, raw)

    def _flush(self) -> None:
        """Write every staged change as one batch and tell its writers (loop thread).

        (Nothing is staged in a closed database: `aclose` flushes, then every operation
        is refused.)
        """
        with self._lock:
            batch, self._batch = self._batch, None
            if batch is None:  # nothing staged
                return
            staged, self._overlay = self._overlay, {}
            events, self._staged_events = self._staged_events, []
            try:
                self._write_batch(self._db, staged)
            except plyvel.Error as exc:
                batch.error = _database_error(exc)
                self._rev = None  # read it back: the revisions handed out were not written
                return
            self._keep_recent(staged)
        self._notify(events)

    async def _written(self) -> None:
        """Wait until what this task staged is written.

        With nothing else ready to run, the batch is written at once: no other writer
        could join it before the next turn of the loop anyway. Otherwise this task yields
        once, so that every writer of this turn stages its changes too, and the first of
        them to wake writes the batch for all (the others find it written, or failed).
        """
        batch = self._batch
        if batch is None:
            return
        try:
            if ready_count(asyncio.get_running_loop()) > 0:
                await asyncio.sleep(0)
        finally:  # (cancelled meanwhile too: what it staged is written with its turn)
            if self._batch is batch:
                self._flush()
        if batch.error is not None:
            raise batch.error

    # -- the seam -------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        return _entry(key, await self._run(lambda db: self._raw(db, _DATA + key.encode())))

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        raws = await self._run(lambda db: [self._raw(db, _DATA + k.encode()) for k in keys])
        # (one raw per key, made just above)
        return [_entry(key, raw) for key, raw in zip(keys, raws)]  # noqa: B905

    async def put(self, key: str, value: bytes) -> int:
        return await self.commit([Write(key, value)])

    async def delete(self, key: str) -> bool:
        def op(db: Any) -> bool:
            raw_key = _DATA + key.encode()
            if self._raw(db, raw_key) is None:
                return False
            self._change(db, [(raw_key, None)], self._next_revision(db))
            return True

        existed = await self._run(op)
        await self._written()
        return existed

    async def compare_and_swap(self, key: str, value: bytes | None, expected_version: int) -> int:
        def op(db: Any) -> int:
            raw_key = _DATA + key.encode()
            current = self._version(db, raw_key)
            if current != expected_version:
                return -1
            if value is None and current == 0:
                return 0
            rev = self._next_revision(db)
            self._change(db, [(raw_key, value)], rev)
            return 0 if value is None else rev

        rev = await self._run(op)
        await self._written()
        return rev

    async def commit(self, writes: Sequence[Write]) -> int:
        rev = (await self._run(lambda db: [self._commit_one(db, writes)]))[0]
        await self._written()
        return rev

    async def commit_later(self, writes: Sequence[Write]) -> tuple[int, Staged]:
        # Staged and not waited for: the next writer's batch (or `written`) writes it.
        rev = (await self._run(lambda db: [self._commit_one(db, writes)]))[0]
        batch = self._batch
        return rev, (WRITTEN if batch is None else _StagedBatch(self, batch))

    async def commit_many(self, batches: Sequence[Sequence[Write]]) -> list[int]:
        revs = await self._run(lambda db: [self._commit_one(db, w) for w in batches])
        await self._written()  # (held: all staged in one batch, written together)
        return revs

    def _commit_one(self, db: Any, writes: Sequence[Write]) -> int:
        changes = [(_DATA + w.key.encode(), w) for w in writes]
        if len({raw_key for raw_key, _ in changes}) != len(changes):
            raise ValueError("a commit names a key more than once")
        for raw_key, w in changes:
            if w.expected_version is not None and (
                self._version(db, raw_key) != w.expected_version
            ):
                return -1
        rev = self._next_revision(db)
        self._change(db, [(raw_key, w.value) for raw_key, w in changes], rev)
        return rev

    async def scan(
        self, prefix: str, *, reverse: bool = False, limit: int | None = None
    ) -> list[Entry]:
        raw_prefix = _DATA + prefix.encode()

        def op(db: Any) -> list[Entry]:
            self._flush()  # a range read sees every change made before it
            out: list[Entry] = []
            with db.iterator(prefix=raw_prefix, reverse=reverse) as it:
                for k, raw in it:
                    version, value = _decode(raw)
                    out.append(Entry(k[len(_DATA) :].decode(), value, version))
                    if limit is not None and len(out) >= limit:
                        break
            return out

        return await self._run(op)

    async def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue(maxsize=10_000)
        item = (prefix, queue, asyncio.get_running_loop())
        self._watchers.append(item)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(item)

    def _notify(self, events: list[WatchEvent]) -> None:
        for prefix, queue, loop in list(self._watchers):
            for event in events:
                if event.key.startswith(prefix):
                    loop.call_soon_threadsafe(_offer, queue, event)

    async def aclose(self) -> None:
        # Under the registry's lock: the path is free for another open once closed.
        with _OPEN_LOCK, self._lock:
            if self._closed:
                return
            self._flush()
            self._closed = True
            self._close_handle()
            _OPEN.remove(self._path)


class _Batch:
    """The changes staged since the last write; written once it is no longer `_batch`."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None  # why its write failed


class _StagedBatch(Staged):
    """Writes staged in `batch` of `kv` by `commit_later`."""

    __slots__ = ("_batch", "_kv")

    def __init__(self, kv: LevelDBKV, batch: _Batch) -> None:
        self._kv = kv
        self._batch = batch

    async def written(self) -> None:
        if self._kv._batch is self._batch:
            await self._kv._written()
        if self._batch.error is not None:
            raise self._batch.error

    def lost(self) -> bool:
        return self._kv._batch is not self._batch and self._batch.error is not None


def _offer(queue: asyncio.Queue[WatchEvent], event: WatchEvent) -> None:
    # A watcher that stops reading loses events rather than growing memory without bound.
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(event)
