"""A node as one namespace sees it: its tasks, its objects, its quotas (docs/security.md).

`NamespacedNode(api, "team-a")` is a `NodeAPI` over any other: tasks are submitted in
the namespace, and a task of another namespace is "not found" (as if it did not exist);
object keys are mapped to the namespace's part of the store (core/namespaces.py), and
keys under `results/` are the node's to write. The gRPC server wraps its node in one per
call (`scoped`), in the namespace the call's credentials allow; the CLI does the same for
a local data dir when `--namespace` / `SPEAR_NAMESPACE` names one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Literal, cast

import anyio

from spear._logging import logger
from spear.core import namespaces as ns
from spear.core.models import log_streams, new_task_id
from spear.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SpearError,
    StorageError,
    Unavailable,
)
from spear.node.idempotency import task_id_for_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from spear.core.models import FunctionSpec, LogChunk, NodeInfo, Task, TaskResult, TaskState
    from spear.node.api import BatchNode, NodeAPI, StreamingTask, TaskHandle
    from spear.node.quotas import TaskSlots
    from spear.store.object_info import ObjectInfo


# What a namespace's view passes through to the node it wraps (`__getattr__`): the node's
# parts and its state, which the servers and the dashboard read (a ClusterNode's SMS
# client and its local node, the Spearlet, whether it drains, its address).
NODE_WIDE = frozenset(
    {"node", "cluster", "local", "scheduler", "draining", "address", "max_message_bytes"}
)


class NamespacedNode:
    """`api` seen from `namespace`; `slots` holds the namespace's task quota (None: none)."""

    def __init__(self, api: NodeAPI, namespace: str, slots: TaskSlots | None = None) -> None:
        self.api = api
        self.namespace = ns.check_name(namespace)
        self.slots = slots

    def __getattr__(self, name: str) -> Any:
        # What the seam does not name, and only what is the node's own (its parts and
        # its state, the same for every namespace): a way to run or read tasks or objects
        # that this class does not scope is an AttributeError here, not the whole node's.
        if name not in NODE_WIDE:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(self.api, name)

    @property
    def in_process(self) -> bool:
        return self.api.in_process

    # -- tasks -----------------------------------------------------------------------

    def _spec(self, spec: FunctionSpec) -> FunctionSpec:
        if spec.namespace == self.namespace:
            return spec
        return dataclasses.replace(spec, namespace=self.namespace)

    async def _done(self, task_id: str) -> bool:
        try:
            return (await self.api.task(task_id)).state.terminal
        except NotFound:
            return True

    def _limited(self) -> bool:
        """Whether the namespace has a task or log quota (most have none: they skip
        `_slot`)."""
        if self.slots is None:
            return False
        quota = self.slots.quotas.get(self.namespace)
        return quota is not None and (quota.tasks is not None or quota.log_bytes is not None)

    async def _check_logs(self) -> None:
        """ResourceExhausted if the namespace's tasks keep its quota of log bytes here."""
        quota = self.slots.quotas.get(self.namespace) if self.slots is not None else None
        if self.slots is None or quota is None or quota.log_bytes is None:
            return
        node = getattr(self.api, "node", None)  # (InProcessNode, ClusterNode: the Spearlet)
        if node is None:
            return
        namespace = self.namespace

        async def ids() -> list[str]:
            return [t.id for t in await node.tasks() if t.spec.namespace == namespace]

        await self.slots.log_usage.check(quota, ids, node.logs)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[Callable[[str], None]]:
        if self.slots is None:
            yield lambda _id: None
            return
        await self._check_logs()
        async with self.slots.slot(self.namespace, self._done) as keep:
            yield keep

    async def submit(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> TaskHandle:
        async with self._cluster_slot(idempotency_key, keep=True) as key:
            return await self._submit(spec, stdin, key)

    async def _submit(
        self, spec: FunctionSpec, stdin: bytes | None, idempotency_key: str | None
    ) -> TaskHandle:
        if not self._limited():
            handle = await self.api.submit(
                self._spec(spec), stdin=stdin, idempotency_key=idempotency_key
            )
            return self._own(handle, idempotency_key)
        async with self._slot() as keep:
            handle = await self.api.submit(
                self._spec(spec), stdin=stdin, idempotency_key=idempotency_key
            )
            keep(self._own(handle, idempotency_key).id)
            return handle

    def _own(self, handle: TaskHandle, idempotency_key: str | None) -> TaskHandle:
        if handle.task.spec.namespace != self.namespace:  # a key another one used
            raise InvalidArgument(
                f"idempotency key {idempotency_key!r} names a task of another namespace"
            )
        return handle

    async def run(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | Literal["inherit"] | None = None,
        stdout: Callable[[bytes], None] | None = None,
        stderr: Callable[[bytes], None] | None = None,
        on_created: Callable[[Task], None] | None = None,
    ) -> Task:
        async with self._cluster_slot(None):
            if not self._limited():
                return await self.api.run(
                    self._spec(spec),
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    on_created=on_created,
                )
            async with self._slot():
                return await self.api.run(
                    self._spec(spec),
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    on_created=on_created,
                )

    async def run_many(
        self, specs: Sequence[FunctionSpec], stdins: Sequence[bytes | None] | None = None
    ) -> list[Task | SpearError]:
        """Run tasks to their ends in this namespace (SubmitTasks, every task waited for):
        as one wave of the node's `run_many` when the namespace has no task quota, here or
        across the cluster; else each on its own, at once, each taking its slot (those past
        the quota refused with ResourceExhausted, as `submit` refuses them)."""
        if not self._limited() and self._cluster_unlimited():
            node = cast("BatchNode", self.api)  # (the server asks only nodes that have it)
            return await node.run_many([self._spec(s) for s in specs], stdins)

        async def outcome(spec: FunctionSpec, stdin: bytes | None) -> Task | SpearError:
            try:
                return await self.run(spec, stdin=stdin)
            except SpearError as exc:
                return exc

        runs = zip(specs, stdins or [None] * len(specs), strict=True)
        return list(await asyncio.gather(*(outcome(spec, stdin) for spec, stdin in runs)))

    async def call(self, spec: FunctionSpec, *, stdin: bytes | None = None) -> TaskResult:
        async with self._cluster_slot(None):
            if not self._limited():
                return await self.api.call(self._spec(spec), stdin=stdin)
            async with self._slot():
                return await self.api.call(self._spec(spec), stdin=stdin)

    @contextlib.asynccontextmanager
    async def start_task(
        self, spec: FunctionSpec, *, stdin: bytes | None = None
    ) -> AsyncIterator[StreamingTask]:
        async with (
            self._cluster_slot(None),
            self._slot(),
            self.api.start_task(self._spec(spec), stdin=stdin) as task,
        ):
            yield task

    @contextlib.asynccontextmanager
    async def _cluster_slot(
        self, idempotency_key: str | None, *, keep: bool = False
    ) -> AsyncIterator[str | None]:
        """A slot of the namespace's cluster-wide task quota, held at the SMS while the
        block runs (core/cluster_quotas.py), on a cluster member. `keep`: a submit, whose
        slot its task's record at the SMS ends; the block gets the idempotency key that
        names the task in advance (the caller's, or a new id). Without a quota: one SMS
        call a second per namespace, to learn there is none."""
        if self._cluster_unlimited():
            yield idempotency_key
            return
        cluster = self.api.cluster  # type: ignore[attr-defined]  # (it has take_task_slot)
        slots = self.slots
        assert slots is not None
        now = time.monotonic()
        take = cluster.take_task_slot
        key = idempotency_key or new_task_id()
        task_id = task_id_for_key(key)
        try:
            limited = await take(self.namespace, task_id, until_released=not keep)
        except (Unavailable, StorageError) as exc:  # no SMS: the cluster quota is not kept
            logger.warning("namespace {}: cluster quota not checked: {}", self.namespace, exc)
            limited = False
        if not limited:
            slots.cluster_unlimited[self.namespace] = now + 1.0
            yield idempotency_key
            return
        started = False
        try:
            yield key
            started = True
        finally:
            if not (keep and started):
                with anyio.CancelScope(shield=True), contextlib.suppress(SpearError):
                    await cluster.release_task_slot(self.namespace, task_id)

    def _cluster_unlimited(self) -> bool:
        """Whether this namespace is known to have no cluster-wide task quota now: not a
        cluster member, no slots kept, or told so by the SMS within the last second."""
        cluster = getattr(self.api, "cluster", None)  # (ClusterNode: its SMS client)
        if getattr(cluster, "take_task_slot", None) is None or self.slots is None:
            return True
        return self.slots.cluster_unlimited.get(self.namespace, 0) > time.monotonic()

    def _mine(self, task: Task) -> Task:
        if task.spec.namespace != self.namespace:
            raise NotFound(f"no task {task.id!r} in namespace {self.namespace!r}")
        return task

    async def task(self, task_id: str) -> Task:
        return self._mine(await self.api.task(task_id))

    async def tasks(self, state: TaskState | None = None, limit: int | None = None) -> list[Task]:
        fetch = limit
        while True:  # the newest `limit` of this namespace: ask for more while others hide them
            found = await self.api.tasks(state, fetch)
            mine = [t for t in found if t.spec.namespace == self.namespace]
            if fetch is None or limit is None or len(mine) >= limit or len(found) < fetch:
                return mine[:limit]
            fetch *= 4

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        task_id = (await self.task(task_id)).id
        async for task in self.api.watch(task_id):
            yield task

    async def wait(self, task_id: str) -> Task:
        return await self.api.wait((await self.task(task_id)).id)

    async def cancel(self, task_id: str, reason: str = "cancelled") -> Task:
        return await self.api.cancel((await self.task(task_id)).id, reason)

    async def result(self, task_id: str, *, wait: bool = True) -> TaskResult:
        return await self.api.result((await self.task(task_id)).id, wait=wait)

    async def logs(
        self, task_id: str, streams: Sequence[str] = (), *, follow: bool = False
    ) -> AsyncIterator[LogChunk]:
        log_streams(streams)  # an unknown stream is refused first, as by the node itself
        task_id = (await self.task(task_id)).id
        async for chunk in self.api.logs(task_id, streams, follow=follow):
            yield chunk

    async def node_info(self) -> NodeInfo:
        return await self.api.node_info()

    # -- objects ---------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return ns.stored_key(self.namespace, key)

    def _info(self, info: ObjectInfo) -> ObjectInfo:
        key = ns.user_key(self.namespace, info.key)
        return info if key is None or key == info.key else dataclasses.replace(info, key=key)

    async def _check_bytes(self, key: str, size: int) -> None:
        quota = self.slots.quotas.get(self.namespace) if self.slots is not None else None
        if quota is None or quota.object_bytes is None:
            return
        used = 0
        for info in await self.api.list_objects(ns.stored_prefix(self.namespace, "")):
            if ns.user_key(self.namespace, info.key) not in (None, key):
                used += info.size
        if used + size > quota.object_bytes:
            raise ResourceExhausted(
                f"namespace {self.namespace!r} is at its quota of {quota.object_bytes} object"
                f" bytes ({used} used; this object is {size})"
            )

    async def put_object(
        self, key: str, data: bytes, *, expected_version: int | None = None
    ) -> ObjectInfo:
        ns.refuse_system_write(key)
        await self._check_bytes(key, len(data))
        info = await self.api.put_object(self._key(key), data, expected_version=expected_version)
        return self._info(info)

    async def get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        data, info = await self.api.get_object(self._key(key))
        return data, self._info(info)

    async def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        found = await self.api.list_objects(ns.stored_prefix(self.namespace, prefix))
        return [self._info(i) for i in found if ns.user_key(self.namespace, i.key) is not None]

    async def delete_object(self, key: str, *, force: bool = False) -> bool:
        return await self.api.delete_object(self._key(key), force=force)

    async def add_object_ref(self, key: str) -> ObjectInfo:
        return self._info(await self.api.add_object_ref(self._key(key)))

    async def remove_object_ref(self, key: str) -> ObjectInfo:
        return self._info(await self.api.remove_object_ref(self._key(key)))

    async def pin_object(self, key: str) -> ObjectInfo:
        return self._info(await self.api.pin_object(self._key(key)))

    async def unpin_object(self, key: str) -> ObjectInfo:
        return self._info(await self.api.unpin_object(self._key(key)))

    async def aclose(self) -> None:
        await self.api.aclose()

    async def delete_tasks(
        self,
        task_ids: Sequence[str] = (),
        *,
        older_than_s: float | None = None,
        keep: int | None = None,
        namespace: str | None = None,
    ) -> list[str]:
        """Only this namespace's tasks: another's named one is "not found"."""
        ids = [(await self.task(task_id)).id for task_id in task_ids]
        return await self.api.delete_tasks(
            ids, older_than_s=older_than_s, keep=keep, namespace=self.namespace
        )


def scoped(api: NodeAPI, slots: TaskSlots | None = None) -> NodeAPI:
    """`api` in the namespace of the call being served (transport/auth.py), or itself
    when the call is unscoped (a cluster member naming no namespace)."""
    from spear.transport.auth import current_namespace

    namespace = current_namespace.get()
    if namespace is None:
        return api
    return NamespacedNode(api, namespace, slots)
