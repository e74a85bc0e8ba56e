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

from spear.errors import Conflict, InvalidArgument, NotFound, Unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
    from pathlib import Path

    from anyio.abc import TaskGroup

    from spear.core.node import Spearlet

METRICS = ("cos", "ip", "l2sq")
MAX_DIM = 8192
MAX_K = 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_OPS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte")


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(
            f"a collection name is 1-64 letters, digits, '_', '.' or '-', not {name!r}"
        )
    return name


def _holds(op: str, value: Any, arg: Any) -> bool:
    if op == "$eq":
        return bool(value == arg)
    if op == "$ne":
        return bool(value != arg)
    if op == "$in":
        return value in arg
    if op == "$nin":
        return value not in arg
    if value is None:
        return False
    if op == "$gt":
        return bool(value > arg)
    if op == "$gte":
        return bool(value >= arg)
    if op == "$lt":
        return bool(value < arg)
    return bool(value <= arg)  # $lte


def _matches(metadata: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    for field, cond in where.items():
        value = metadata.get(field)
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        for op, arg in ops.items():
            try:
                if not _holds(op, value, arg):
                    return False
            except TypeError:  # comparing unlike types: not a match
                return False
    return True


def check_filter(where: Any) -> dict[str, Any]:
    if where is None:
        return {}
    if not isinstance(where, dict):
        raise InvalidArgument("a filter is an object of field: value or field: {op: value}")
    for field, cond in where.items():
        if isinstance(cond, dict):
            unknown = set(cond) - set(_OPS)
            if unknown or not cond:
                raise InvalidArgument(
                    f"filter on {field!r}: operators are {', '.join(_OPS)}, not {sorted(unknown)}"
                )
            for op in ("$in", "$nin"):
                if op in cond and not isinstance(cond[op], list):
                    raise InvalidArgument(f"filter on {field!r}: {op} takes a list")
    return where


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
            raise InvalidArgument(f"{what} is a list of numbers")
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
                    if not where or _matches(self._meta[int(key)][1], where)
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
    """The node's `vectors` service: its collections, under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[str, Collection] = {}
        self._guard = threading.Lock()

    def _collection(self, name: str) -> Collection:
        check_name(name)
        with self._guard:
            coll = self._open.get(name)
            if coll is None:
                if not (self.root / name / "collection.json").exists():
                    raise NotFound(f"no vector collection {name!r}")
                coll = self._open[name] = Collection(self.root / name)
            return coll

    def create(self, name: str, dim: int, metric: str = "cos") -> dict[str, Any]:
        """Make a collection (again with the same dim and metric: nothing changes)."""
        check_name(name)
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_DIM:
            raise InvalidArgument(f"dim is 1..{MAX_DIM}")
        if metric not in METRICS:
            raise InvalidArgument(f"metric is one of {', '.join(METRICS)}")
        directory = self.root / name
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
        return self._collection(name).info()

    def drop(self, name: str) -> None:
        check_name(name)
        with self._guard:
            coll = self._open.pop(name, None)
            if coll is not None:
                coll.close()
            if not (self.root / name / "collection.json").exists():
                raise NotFound(f"no vector collection {name!r}")
            import shutil

            shutil.rmtree(self.root / name)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "collection.json").exists())

    def list(self) -> list[dict[str, Any]]:
        return [self._collection(name).info() for name in self.names()]

    def request(self, data: Any) -> Any:
        """One JSON request `{"op", "collection", ...}` (the hostcall's and the SDK's)."""
        if not isinstance(data, dict) or not isinstance(data.get("op"), str):
            raise InvalidArgument('a vector request is {"op": ..., "collection": ...}')
        op = data["op"]
        if op == "list":
            return self.list()
        name = data.get("collection")
        if op == "create":
            return self.create(name, data.get("dim"), data.get("metric", "cos"))  # type: ignore[arg-type]
        if op == "drop":
            self.drop(name)  # type: ignore[arg-type]
            return None
        coll = self._collection(name)  # type: ignore[arg-type]
        if op == "upsert":
            records = data.get("records")
            if not isinstance(records, list):
                raise InvalidArgument("upsert takes a list of records")
            return coll.upsert(records)
        if op == "query":
            return coll.query(data.get("vector"), data.get("k", 10), data.get("filter"))
        if op == "delete":
            return coll.delete(data.get("ids"))  # type: ignore[arg-type]
        if op == "count":
            return coll.count()
        raise InvalidArgument(
            f"unknown vector op {op!r} (create, drop, list, upsert, query, delete, count)"
        )

    async def request_async(self, data: Any) -> Any:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self.request, data)

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
                await anyio.to_thread.run_sync(self.close)
