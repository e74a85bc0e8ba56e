"""`InProcessNode`: the `NodeAPI` over a Spearlet in this process.

The CLI uses it on a local data dir when no daemon holds it; the gRPC server wraps it to
serve a daemon's node. Following logs reads the task's log files from where it left off,
waking when the task ends or after a short interval, like `tail -f`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from typing import TYPE_CHECKING, Literal

import anyio

from spear.core.models import LogChunk, NodeInfo, ObjectInfo, TaskResult, log_streams
from spear.errors import NotFound, SpearError, Unavailable
from spear.node.api import StreamingTask, TaskHandle
from spear.store.small_files import read_file

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from spear.core.models import FunctionSpec, Task, TaskState
    from spear.core.node import Spearlet
    from spear.store.objects import ObjectStore

# How much of a log one chunk carries, and how often a follower looks for more output.
LOG_CHUNK_BYTES = 256 * 1024
_FOLLOW_INTERVAL_S = 0.05


@functools.cache
def _wasmtime_version() -> str:
    from spear.runtimes.wasm import wasmtime_version

    return wasmtime_version()  # (it takes ~0.2 ms: asked once per process)


async def _read_output(path: str) -> bytes:
    """The whole file at `path` (b"" if there is none)."""
    try:
        return await read_file(path)
    except (FileNotFoundError, NotADirectoryError):
        return b""


def _read_at(path: str, offset: int, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except (FileNotFoundError, NotADirectoryError):
        return b""


class InProcessNode:
    """A `NodeAPI` on a started Spearlet of this process."""

    def __init__(self, node: Spearlet, *, address: str = "", max_message_bytes: int = 0) -> None:
        self.node = node
        self.address = address
        self.max_message_bytes = max_message_bytes
        self.started_at = time.time()
        self.draining = False
        self.peer_address = ""  # in a cluster: ForwardTasks on grpc.aio (node/peer_aio.py)
        self.object_transfer_address = ""  # a daemon's, standalone (node/object_ports.py)
        self.object_socket = ""  # a daemon's (node/object_ports.py)

    # -- tasks -----------------------------------------------------------------------

    async def submit(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> TaskHandle:
        if self.draining:
            raise Unavailable(f"node {self.node.name} is draining: it accepts no new tasks")
        if idempotency_key is not None:
            from spear.node.idempotency import submit_once

            async def start(task_id: str) -> Task:
                return await self.node.submit(spec, stdin=stdin, task_id=task_id)

            return TaskHandle(self, await submit_once(idempotency_key, self.task, start))
        return TaskHandle(self, await self.node.submit(spec, stdin=stdin))

    @property
    def in_process(self) -> bool:
        return True

    async def run(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | Literal["inherit"] | None = None,
        stdout: Callable[[bytes], None] | None = None,
        stderr: Callable[[bytes], None] | None = None,
        on_created: Callable[[Task], None] | None = None,
        hooks_later: bool = False,
    ) -> Task:
        if self.draining:
            raise Unavailable(f"node {self.node.name} is draining: it accepts no new tasks")
        # Run in the caller's task (the node's quickest path), shielded: a caller that
        # goes away (a gRPC client that hangs up) leaves the task to finish as submitted.
        with anyio.CancelScope(shield=True):
            task = await self.node.run(
                spec,
                stdin=stdin,
                tee_stdout=stdout,
                tee_stderr=stderr,
                on_created=on_created,
                hooks_later=hooks_later,
            )
        return task

    async def run_many(
        self, specs: Sequence[FunctionSpec], stdins: Sequence[bytes | None] | None = None
    ) -> list[Task | SpearError]:
        """Run tasks to their ends, those without stdin as one `run_many` wave (records
        written together), the others one by one beside it; in order."""
        if self.draining:
            raise Unavailable(f"node {self.node.name} is draining: it accepts no new tasks")
        stdins = stdins or [None] * len(specs)
        plain = [i for i, data in enumerate(stdins) if not data]
        out: list[Task | SpearError | None] = [None] * len(specs)

        async def one(i: int) -> None:
            try:
                out[i] = await self.run(specs[i], stdin=stdins[i])
            except SpearError as exc:
                out[i] = exc

        with anyio.CancelScope(shield=True):  # (as `run`: a caller hanging up stops nothing)
            async with anyio.create_task_group() as tg:
                for i in range(len(specs)):
                    if stdins[i]:
                        tg.start_soon(one, i)
                if plain:
                    refusals: dict[str, SpearError] = {}
                    controller = self.node.controller
                    ended = await controller.run_many([specs[i] for i in plain], refusals=refusals)
                    for i, task in zip(plain, ended, strict=True):
                        out[i] = refusals.get(task.id, task)  # (refused as `submit` is)
        return [o for o in out if o is not None]

    async def call(
        self, spec: FunctionSpec, *, stdin: bytes | None = None, hooks_later: bool = False
    ) -> TaskResult:
        """Run a task and return its result; `hooks_later`: answered once its end is
        recorded (a cluster member's call: keeping its result is a commit with the SMS,
        made right after; see `TaskController.run`)."""
        task = await self.run(spec, stdin=stdin, hooks_later=hooks_later)
        return TaskResult(task, await self._output(task))

    @contextlib.asynccontextmanager
    async def start_task(
        self, spec: FunctionSpec, *, stdin: bytes | None = None
    ) -> AsyncIterator[StreamingTask]:
        if self.draining:
            raise Unavailable(f"node {self.node.name} is draining: it accepts no new tasks")
        stream = await self.node.start_task(spec, stdin=stdin)
        try:
            yield StreamingTask(self, stream.task, stream)  # built on the node's TaskStream
        finally:
            await stream.close()

    async def _full_id(self, task_id: str) -> str:
        """The id `task_id` names: itself, or the one task id it is a prefix of."""
        from spear.core.task_ids import resolve_task_id

        return await resolve_task_id(self.node.kv, task_id)

    async def task(self, task_id: str) -> Task:
        return await self.node.task(await self._full_id(task_id))

    async def tasks(self, state: TaskState | None = None, limit: int | None = None) -> list[Task]:
        return await self.node.tasks(state, limit)

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        task_id = await self._full_id(task_id)
        async for task in self.node.tasks_store.watch(task_id):
            yield task

    async def wait(self, task_id: str) -> Task:
        task_id = await self._full_id(task_id)
        while True:
            task = await self.node.wait(task_id)
            if task.state.terminal:
                return task
            # Run by another process on this data dir: nothing here signals its end.
            await anyio.sleep(_FOLLOW_INTERVAL_S)

    async def cancel(self, task_id: str, reason: str = "cancelled") -> Task:
        task = await self.node.cancel(await self._full_id(task_id), reason)
        if not task.state.terminal:
            raise Unavailable(
                f"task {task_id} is {task.state.value} in another process; stop that process"
            )
        return task

    async def result(self, task_id: str, *, wait: bool = True) -> TaskResult:
        task_id = await self._full_id(task_id)
        task = await (self.wait(task_id) if wait else self.node.task(task_id))
        if not task.state.terminal:
            raise Unavailable(f"task {task_id} has not finished (it is {task.state.value})")
        return TaskResult(task, await self._output(task))

    async def output(self, task_id: str) -> bytes:
        """A finished task's result (node/peer.py: a forwarded call's answer)."""
        return await self._output(await self.node.task(task_id))

    async def _output(self, task: Task) -> bytes:
        """A finished task's result: what it set, else its stdout."""
        store = self.node.services.objects
        if store is not None:  # what the task set as its result, else its stdout (seed §6)
            from spear.core.namespaces import result_key

            key = result_key(task.spec.namespace, task.id)
            try:
                # A task that ran here stored its result here first: this node's copy,
                # without asking the SMS for the current version (a round trip on every
                # call's path, local or forwarded: issue 17's breakdown).
                ran_here = task.node == self.node.name
                value, _ = await (store.get_local(key) if ran_here else store.get(key))
                return bytes(value)
            except NotFound:
                pass  # not stored (yet: the node stores it just after the task ends)
        return await _read_output(str(self.node.logs.path(task.id, "stdout")))

    async def logs(
        self, task_id: str, streams: Sequence[str] = (), *, follow: bool = False
    ) -> AsyncIterator[LogChunk]:
        names = log_streams(streams)
        task_id = await self._full_id(task_id)
        task = await self.node.task(task_id)  # NotFound for an unknown id
        paths = {n: str(self.node.logs.path(task_id, n)) for n in names}
        offsets = dict.fromkeys(names, 0)
        while True:
            # Whether the task had ended is decided before reading, so nothing written
            # before the end is missed.
            finished = not follow or task.state.terminal
            progressed = True
            while progressed:
                progressed = False
                for name in names:
                    data = await anyio.to_thread.run_sync(
                        _read_at, paths[name], offsets[name], LOG_CHUNK_BYTES
                    )
                    if data:
                        yield LogChunk(name, data, offsets[name])
                        offsets[name] += len(data)
                        progressed = True
            if finished:
                return
            with anyio.move_on_after(_FOLLOW_INTERVAL_S):
                task = await self.node.wait(task_id)
                if not task.state.terminal:  # run by another process: look again later
                    await anyio.sleep(_FOLLOW_INTERVAL_S)
            task = await self.node.task(task_id)

    # -- the node --------------------------------------------------------------------

    async def node_info(self) -> NodeInfo:
        from spear._version import version

        controller = self.node.controller
        return NodeInfo(
            name=self.node.name,
            state="draining" if self.draining else self.node.state.value,
            address=self.address,
            version=version(),
            wasmtime_version=_wasmtime_version(),
            capacity=controller.capacity,
            free=controller.free,
            running_tasks=controller.running_count,
            runtimes=tuple(sorted(self.node.agents)),
            started_at=self.started_at,
            data_dir=str(self.node.settings.data_dir),
            pid=os.getpid(),
            max_message_bytes=self.max_message_bytes,
            object_transfer_address=self.object_transfer_address
            or _transfer_address(self.node.services.objects),
            peer_address=self.peer_address,
            object_socket=self.object_socket,
        )

    async def drain(self, grace_s: float) -> None:
        """Accept no new tasks; wait up to `grace_s` for the running ones to finish."""
        from spear.core.models import TaskState

        self.draining = True
        with anyio.move_on_after(grace_s):
            while self.node.controller.running_count:
                active = [
                    *await self.node.tasks(TaskState.RUNNING),
                    *await self.node.tasks(TaskState.PENDING),
                ]
                if not active:
                    break
                for task in active:
                    await self.node.wait(task.id)

    # -- objects ---------------------------------------------------------------------

    def _objects(self) -> ObjectStore:
        store = self.node.services.objects
        if store is None:
            raise Unavailable(f"node {self.node.name} has no object store")
        return store

    async def _info(self, key: str) -> ObjectInfo:
        return await self._objects().info(key)

    async def put_object(
        self, key: str, data: bytes, *, expected_version: int | None = None
    ) -> ObjectInfo:
        await self._objects().put(key, data, expected_version)
        return await self._info(key)

    async def get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        value, version = await self._objects().get(key)
        info = await self._info(key)
        return bytes(value), dataclasses.replace(info, version=version, size=value.nbytes)

    async def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        return await self._objects().list(prefix)

    async def delete_object(self, key: str, *, force: bool = False) -> bool:
        try:
            await self._objects().delete(key, force=force)
        except NotFound:
            return False
        return True

    async def add_object_ref(self, key: str) -> ObjectInfo:
        await self._objects().add_ref(key)
        return await self._info(key)

    async def remove_object_ref(self, key: str) -> ObjectInfo:
        before = await self._info(key)
        count = await self._objects().remove_ref(key)
        try:
            return await self._info(key)
        except NotFound:  # its last reference went: collected
            return dataclasses.replace(before, refs=count)

    async def pin_object(self, key: str) -> ObjectInfo:
        await self._objects().pin(key)
        return await self._info(key)

    async def unpin_object(self, key: str) -> ObjectInfo:
        await self._objects().unpin(key)
        return await self._info(key)

    async def aclose(self) -> None:
        """The node belongs to whoever started it; closing the adapter leaves it running."""

    async def delete_tasks(
        self,
        task_ids: Sequence[str] = (),
        *,
        older_than_s: float | None = None,
        keep: int | None = None,
        namespace: str | None = None,
    ) -> list[str]:
        from spear.core import retention

        named = [await self.task(task_id) for task_id in task_ids]
        if namespace is not None:
            for task in named:
                if task.spec.namespace != namespace:
                    raise NotFound(f"no task {task.id!r} in namespace {namespace!r}")
        gone = await retention.delete_tasks(self.node, named)
        more = await retention.delete_by_policy(
            self.node, older_than_s=older_than_s, keep=keep, namespace=namespace
        )
        return gone + more


def _transfer_address(store: ObjectStore | None) -> str:
    """Where this node's object transfer service listens (a cluster member's), else ""."""
    return str(getattr(store.authority, "address", "")) if store is not None else ""
