"""Where a vector collection lives in a cluster (docs/toolkit.md, "On a cluster").

A collection lives on one node, its home: the node where it was created. The home is
recorded in the cluster's object space as a pinned object `@ns/@vectors/<namespace>/<name>`
whose value names the node (`{"node": NAME}`), so every member finds it through the SMS's
object index, and creating is a create-only put of that record: of two nodes creating
one name at once, one wins and the other forwards to it. A request for a collection
homed elsewhere is forwarded to its home in one call (node/vector_peers.py); the index
and its records stay in one place. No user can write the record: keys under `@ns/` are
reserved, and a namespace name holds no `@`.

A collection a node had before it joined (or made before this existed) is claimed for it
on first use. Homes are cached; a home that answers "no such collection" (it was dropped,
and maybe made again elsewhere) is looked up again once.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from spear.errors import Conflict, NotFound, SpearError, Unavailable
from spear.toolkit.vectors import check_create, check_name, check_request

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from spear.store.objects import ObjectStore
    from spear.toolkit.vectors import VectorStore

    # (home node, namespace, request) -> the home's answer
    Forward = Callable[[str, str, dict[str, Any]], Awaitable[Any]]

RECORD_PREFIX = "@ns/@vectors/"


def record_key(namespace: str, name: str) -> str:
    return f"{RECORD_PREFIX}{namespace}/{name}"


class VectorHomes:
    """The cluster's collections as one member routes them."""

    def __init__(
        self,
        store: VectorStore,
        objects: ObjectStore,
        node_name: str,
        forward: Forward,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self._close = close
        self.objects = objects
        self.node_name = node_name
        self.forward = forward
        self._homes: dict[tuple[str, str], str] = {}

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()

    async def request(self, data: Any, namespace: str) -> Any:
        op = check_request(data)
        if op == "list":
            return await self._list(namespace)
        name = check_name(data.get("collection"))
        if op == "create":
            check_create(name, data.get("dim"), data.get("metric", "cos"))
        for attempt in (0, 1):
            home = await self._home(namespace, name, fresh=attempt > 0)
            if home is None and (op == "create" or self.store.has(namespace, name)):
                home = await self._claim(namespace, name)
            try:
                if home is None or home == self.node_name:
                    answer = await self._here(op, data, namespace, name)
                else:
                    answer = await self.forward(home, namespace, data)
                break
            except NotFound:  # (a cached home may be stale: look it up once more)
                if attempt or home is None:
                    raise
                self._homes.pop((namespace, name), None)
        if op == "drop":
            await self._release(namespace, name)
        return answer

    async def _here(self, op: str, data: Any, namespace: str, name: str) -> Any:
        try:
            return await self.store.request_async(data, namespace, here=True)
        except SpearError:
            if op == "create" and not self.store.has(namespace, name):
                await self._release(namespace, name)  # (claimed for a create that failed)
            raise

    async def _home(self, namespace: str, name: str, *, fresh: bool = False) -> str | None:
        """The collection's home node, or None if it has none."""
        if not fresh:
            found = self._homes.get((namespace, name))
            if found is not None:
                return found
        try:
            value, _ = await self.objects.get(record_key(namespace, name))
        except NotFound:
            self._homes.pop((namespace, name), None)
            return None
        node = str(json.loads(bytes(value))["node"])
        self._homes[(namespace, name)] = node
        return node

    async def _claim(self, namespace: str, name: str) -> str:
        """Record this node as the collection's home, unless another node is already."""
        key = record_key(namespace, name)
        value = json.dumps({"node": self.node_name}).encode()
        for _ in range(3):
            try:
                await self.objects.put(key, value, expected_version=0)
            except Conflict:
                home = await self._home(namespace, name, fresh=True)
                if home is not None:
                    return home
                continue  # (dropped between the two: claim again)
            await self.objects.pin(key)  # (an unreferenced object would be collected)
            self._homes[(namespace, name)] = self.node_name
            return self.node_name
        raise Unavailable(f"collection {name!r} is being created and dropped: try again")

    async def _release(self, namespace: str, name: str) -> None:
        self._homes.pop((namespace, name), None)
        try:
            await self.objects.delete(record_key(namespace, name), force=True)
        except NotFound:
            pass

    async def _list(self, namespace: str) -> list[dict[str, Any]]:
        """Every collection of `namespace` in the cluster, with its home (`node`); one
        whose home does not answer is listed with the reason (`unavailable`)."""
        prefix = record_key(namespace, "")
        by_home: dict[str, list[str]] = {}
        unread: dict[str, dict[str, Any]] = {}
        for info in await self.objects.list(prefix):
            name = info.key[len(prefix) :]
            try:
                home = await self._home(namespace, name, fresh=True)
            except SpearError as exc:  # (its record is held by a node that is down)
                unread[name] = {"name": name, "node": None, "unavailable": str(exc)}
                continue
            if home is not None:
                by_home.setdefault(home, []).append(name)
        here = await self.store.request_async({"op": "list"}, namespace, here=True)
        found = {**unread, **{info["name"]: {**info, "node": self.node_name} for info in here}}
        for home, names in by_home.items():
            if home == self.node_name:
                continue
            try:
                there = await self.forward(home, namespace, {"op": "list"})
            except SpearError as exc:
                for name in names:
                    found[name] = {"name": name, "node": home, "unavailable": str(exc)}
                continue
            for info in there:
                if info["name"] in names:
                    found[info["name"]] = {**info, "node": home}
        return [found[name] for name in sorted(found)]
