"""The vector store: named collections of (id, vector, metadata, text) (docs/toolkit.md).

Each collection is a directory under `DATA/vectors/<name>/`: `records.sqlite` holds every
record (the truth, written in one transaction per call) and `index.usearch` the HNSW
index over its vectors (usearch), saved when the store closes. A collection whose index
was not saved cleanly (the process died) rebuilds it from the records when it opens.
Metadata filters are applied to the index's nearest candidates, fetched in growing
rounds until `k` match or every vector was looked at, so a selective filter still
answers exactly. One process holds a collection at a time (an exclusive lock on its
directory). Calls block on SQLite and the index: the node runs them on worker threads.
"""

from __future__ import annotations

import json
import os
import re
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from spear.core.namespaces import DEFAULT as DEFAULT_NAMESPACE
from spear.errors import Conflict, InvalidArgument, NotFound, Unavailable
from spear.toolkit.vector_filters import check_filter
from spear.toolkit.vector_filters import matches as matches_filter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
    from pathlib import Path

    from anyio.abc import TaskGroup

    from spear.core.node import Spearlet
    from spear.toolkit.vector_homes import VectorHomes

METRICS = ("cos", "ip", "l2sq")
MAX_DIM = 8192
MAX_K = 1000
RECORD_FIELDS = frozenset({"id", "vector", "metadata", "text"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"a collection name is 1-64 letters, digits, '_', '.' or '-', not {name!r}"
        )
    return name


READ_OPS = ("list", "query", "count")
WRITE_OPS = ("create", "upsert", "delete", "drop")


def check_request(data: Any) -> str:
    """The op of a well-formed request (an object with a known `op`)."""
    if not isinstance(data, dict) or not isinstance(data.get("op"), str):
        raise InvalidArgument('a vector request is {"op": ..., "collection": ...}')
    op: str = data["op"]
    if op not in READ_OPS + WRITE_OPS:
        raise InvalidArgument(
            f"unknown vector op {op!r} (create, drop, list, upsert, query, delete, count)"
        )
    return op


def check_create(name: Any, dim: Any, metric: Any) -> None:
    check_name(name)
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_DIM:
        raise InvalidArgument(f"dim is 1..{MAX_DIM}")
    if metric not in METRICS:
        raise InvalidArgument(f"metric is one of {', '.join(METRICS)}")


class Collection:
    """One collection, open in this process. Methods block: call them on a worker thread."""

    def __init__(self, directory: Path) -> None:
        import fcntl
        import sqlite3

        from usearch.index import Index

        self.directory = directory
        self.name = directory.name
        info = json.loads((directory / "collection.json").read_text())
        self.dim: int = int(info["dim"])
        self.metric: str = info["metric"]
        self._lock = threading.Lock()
        self._lockfile = open(directory / "lock", "a+")  # held while open
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise Unavailable(
                f"collection {self.name!r} is held by another process (a running node?)"
            ) from None
        self._db = sqlite3.connect(directory / "records.sqlite", check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (key INTEGER PRIMARY KEY AUTOINCREMENT,"
            " id TEXT UNIQUE NOT NULL, vector BLOB NOT NULL, metadata TEXT, text TEXT)"
        )
        self._db.commit()
        # id -> key, and key -> (id, metadata): filters read metadata without SQLite.
        self._keys: dict[str, int] = {}
        self._meta: dict[int, tuple[str, dict[str, Any]]] = {}
        for key, rid, meta in self._db.execute("SELECT key, id, metadata FROM records"):
            self._keys[rid] = key
            self._meta[key] = (rid, json.loads(meta) if meta else {})
        self._index = Index(ndim=self.dim, metric=self.metric, dtype="f32")
        clean = directory / "index.clean"
        path = directory / "index.usearch"
        if clean.exists() and path.exists():
            self._index.load(str(path))
        if len(self._index) != len(self._keys):  # not saved cleanly: rebuild from records
            self._rebuild()
        clean.unlink(missing_ok=True)  # (written again by a clean close)

    def _rebuild(self) -> None:
        import numpy as np
        from usearch.index import Index

        self._index = Index(ndim=self.dim, metric=self.metric, dtype="f32")
        rows = self._db.execute("SELECT key, vector FROM records").fetchall()
        if rows:
            keys = np.array([k for k, _ in rows], dtype=np.uint64)
            vectors = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32)
            self._index.add(keys, vectors.reshape(len(rows), self.dim))

    def _vector(self, raw: Any, what: str) -> Any:
        import numpy as np

        if not isinstance(raw, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in raw
        ):
            raise InvalidArgument(f"{what}: a vector is a list of numbers")
        if len(raw) != self.dim:
            raise InvalidArgument(
                f"dimension mismatch: collection {self.name!r} holds {self.dim}-dimensional"
                f" vectors, {what} has {len(raw)}"
            )
        return np.asarray(raw, dtype=np.float32)

    def upsert(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Insert or replace records `{"id", "vector", "metadata"?, "text"?}`; how many."""
        import numpy as np

        parsed = []
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not rec["id"]:
                raise InvalidArgument(f"record {i} needs a string id")
            if unknown := sorted(set(rec) - RECORD_FIELDS):  # (a misspelt field is not lost)
                known = ", ".join(sorted(RECORD_FIELDS))
                raise InvalidArgument(
                    f"record {rec['id']!r}: unknown field(s) {', '.join(unknown)}"
                    f" (a record has {known})"
                )
            metadata = rec.get("metadata") or {}
            text = rec.get("text")
            if not isinstance(metadata, dict) or (text is not None and not isinstance(text, str)):
                raise InvalidArgument(f"record {rec['id']!r}: metadata is an object, text a string")
            parsed.append(
                (
                    rec["id"],
                    self._vector(rec.get("vector"), f"record {rec['id']!r}"),
                    metadata,
                    text,
                )
            )
        with self._lock, self._db:
            keys = []
            for rid, vector, metadata, text in parsed:
                meta_json = json.dumps(metadata)
                old = self._keys.get(rid)
                if old is not None:
                    self._index.remove(old)
                    self._db.execute(
                        "UPDATE records SET vector=?, metadata=?, text=? WHERE key=?",
                        (vector.tobytes(), meta_json, text, old),
                    )
                    key = old
                else:
                    cur = self._db.execute(
                        "INSERT INTO records (id, vector, metadata, text) VALUES (?, ?, ?, ?)",
                        (rid, vector.tobytes(), meta_json, text),
                    )
                    key = int(cur.lastrowid or 0)
                self._keys[rid] = key
                self._meta[key] = (rid, metadata)
                keys.append(key)
            if parsed:
                matrix = np.stack([v for _, v, _, _ in parsed])
                self._index.add(np.array(keys, dtype=np.uint64), matrix)
        return len(parsed)

    def query(
        self, vector: Any, k: int = 10, where: Any = None, *, with_text: bool = True
    ) -> list[dict[str, Any]]:
        """The `k` nearest records that match `where`: `{"id", "distance", "metadata",
        "text"}` each, nearest first."""
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k is 1..{MAX_K}")
        query = self._vector(vector, "the query vector")
        where = check_filter(where)
        with self._lock:
            total = len(self._index)
            found: list[tuple[int, float]] = []
            fetch = k if not where else k * 4
            while total:
                fetch = min(fetch, total)
                matches = self._index.search(query, fetch)
                found = [
                    (int(key), float(dist))
                    for key, dist in zip(matches.keys, matches.distances, strict=True)
                    if not where or matches_filter(self._meta[int(key)][1], where)
                ]
                if len(found) >= k or fetch >= total:
                    break
                fetch *= 4
            found = found[:k]
            texts: dict[int, str | None] = {}
            if with_text and found:
                marks = ",".join("?" * len(found))
                texts = dict(
                    self._db.execute(
                        f"SELECT key, text FROM records WHERE key IN ({marks})",
                        [key for key, _ in found],
                    ).fetchall()
                )
            return [
                {
                    "id": self._meta[key][0],
                    "distance": dist,
                    "metadata": self._meta[key][1],
                    "text": texts.get(key),
                }
                for key, dist in found
            ]

    def delete(self, ids: Sequence[str]) -> int:
        """Delete records by id; how many there were."""
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InvalidArgument("ids is a list of strings")
        with self._lock, self._db:
            gone = 0
            for rid in ids:
                key = self._keys.pop(rid, None)
                if key is None:
                    continue
                self._index.remove(key)
                self._meta.pop(key, None)
                self._db.execute("DELETE FROM records WHERE key=?", (key,))
                gone += 1
            return gone

    def count(self) -> int:
        return len(self._keys)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "metric": self.metric, "count": self.count()}

    def close(self) -> None:
        """Save the index (a clean close) and let the collection go."""
        with self._lock:
            self._index.save(str(self.directory / "index.usearch"))
            (self.directory / "index.clean").touch()
            self._db.close()
            self._lockfile.close()


class VectorStore:
    """The node's `vectors` service: its collections, under one directory, by namespace
    (`default`'s in `root/<name>`, another's in `root/@ns/<namespace>/<name>`: a
    collection name cannot start with `@`). With `homes` set (a cluster member), a
    request for a collection homed on another node goes there (toolkit/vector_homes.py)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[tuple[str, str], Collection] = {}
        self._guard = threading.Lock()
        self.homes: VectorHomes | None = None

    def _dir(self, namespace: str, name: str = "") -> Path:
        base = self.root if namespace == DEFAULT_NAMESPACE else self.root / "@ns" / namespace
        return base / name if name else base

    def has(self, namespace: str, name: str) -> bool:
        return (self._dir(namespace, check_name(name)) / "collection.json").exists()

    def _collection(self, namespace: str, name: str) -> Collection:
        check_name(name)
        with self._guard:
            coll = self._open.get((namespace, name))
            if coll is None:
                directory = self._dir(namespace, name)
                if not (directory / "collection.json").exists():
                    raise NotFound(f"no vector collection {name!r}")
                coll = self._open[(namespace, name)] = Collection(directory)
            return coll

    def create(
        self, name: str, dim: int, metric: str = "cos", namespace: str = DEFAULT_NAMESPACE
    ) -> dict[str, Any]:
        """Make a collection (again with the same dim and metric: nothing changes)."""
        check_create(name, dim, metric)
        directory = self._dir(namespace, name)
        with self._guard:
            spec = directory / "collection.json"
            if spec.exists():
                have = json.loads(spec.read_text())
                if have["dim"] != dim or have["metric"] != metric:
                    raise Conflict(
                        f"collection {name!r} exists with dim {have['dim']} and metric"
                        f" {have['metric']}"
                    )
            else:
                directory.mkdir(parents=True, exist_ok=True)
                tmp = directory / "collection.json.tmp"
                tmp.write_text(json.dumps({"dim": dim, "metric": metric}))
                os.replace(tmp, spec)
        return self._collection(namespace, name).info()

    def drop(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> None:
        check_name(name)
        with self._guard:
            coll = self._open.pop((namespace, name), None)
            if coll is not None:
                coll.close()
            directory = self._dir(namespace, name)
            if not (directory / "collection.json").exists():
                raise NotFound(f"no vector collection {name!r}")
            import shutil

            shutil.rmtree(directory)

    def names(self, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
        base = self._dir(namespace)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / "collection.json").exists())

    def list(self, namespace: str = DEFAULT_NAMESPACE) -> list[dict[str, Any]]:
        return [self._collection(namespace, name).info() for name in self.names(namespace)]

    def request(self, data: Any, namespace: str = DEFAULT_NAMESPACE) -> Any:
        """One JSON request `{"op", "collection", ...}` (the hostcall's and the SDK's) on
        this node's collections of `namespace`."""
        op = check_request(data)
        if op == "list":
            return self.list(namespace)
        name = data.get("collection")
        if op == "create":
            return self.create(name, data.get("dim"), data.get("metric", "cos"), namespace)
        if op == "drop":
            self.drop(name, namespace)
            return None
        coll = self._collection(namespace, name)
        if op == "upsert":
            records = data.get("records")
            if not isinstance(records, list):
                raise InvalidArgument("upsert takes a list of records")
            return coll.upsert(records)
        if op == "query":
            return coll.query(data.get("vector"), data.get("k", 10), data.get("filter"))
        if op == "delete":
            return coll.delete(data.get("ids"))
        return coll.count()  # (check_request knows no other op)

    async def request_async(
        self, data: Any, namespace: str = DEFAULT_NAMESPACE, *, here: bool = False
    ) -> Any:
        """`request` off the event loop; in a cluster (unless `here`), at the
        collection's home node."""
        if self.homes is not None and not here:
            return await self.homes.request(data, namespace)
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self.request, data, namespace)

    def close(self) -> None:
        with self._guard:
            for coll in self._open.values():
                coll.close()
            self._open.clear()

    @asynccontextmanager
    async def serve_node(self, node: Spearlet, task_group: TaskGroup) -> AsyncIterator[None]:
        import anyio
        import anyio.to_thread

        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                if self.homes is not None:
                    await self.homes.aclose()
                await anyio.to_thread.run_sync(self.close)
