"""Subtasks: tasks an agent starts, waits for, reads and cancels (docs/toolkit.md).

A child goes through the node's normal submit path: on a cluster member that is the
`ClusterNode` (bound by node/assembly.py), so the scheduler places it like any task;
elsewhere the node's own controller. What a child may be is checked first (`check_child`):
it runs in its parent's namespace (a spec naming another is refused), it inherits its
parent's labels (so allow-lists carry over; labels are also placement constraints, which
children then share), a
WASM parent may start only WASM children (a process child could do anything the node's
user can), a child sees only directories its parent sees, and trees are at most
`MAX_DEPTH` deep with at most `MAX_CHILDREN` children a task; on a daemon, a child holds
a slot of its namespace's task quota like any task submitted there (node/quotas.py).
Input objects are held
(a reference with the child as holder) until the child ends. When a parent ends, by
any means, its unfinished children are cancelled, with the reason naming the parent.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from spear.core.models import FunctionSpec, Runtime, TaskState
from spear.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from anyio.abc import TaskGroup

    from spear.core.models import Task
    from spear.core.node import Spearlet
    from spear.core.tasks.hooks import TasksFinished

MAX_DEPTH = 16
MAX_CHILDREN = 1024  # unfinished children of one task at once
# In the child's environment (not its labels: a task's labels are also placement
# constraints, which a parent's id would never meet).
PARENT_ENV = "SPEAR_PARENT_TASK"
DEPTH_ENV = "SPEAR_TASK_DEPTH"
INPUTS_ENV = "SPEAR_INPUTS"  # the child's input object keys, comma-separated


class TaskSpawner(Protocol):
    """What subtasks need of a node: submit, wait, cancel, read a result."""

    async def submit(self, spec: FunctionSpec, stdin: bytes | None) -> str: ...

    async def wait(self, task_id: str) -> Task: ...

    async def cancel(self, task_id: str, reason: str) -> None: ...

    async def output(self, task: Task) -> bytes: ...

    async def done(self, task_id: str) -> bool: ...


class TaskQuota(Protocol):
    """A namespace's task slots (node/quotas.py `TaskSlots`)."""

    def slot(
        self, namespace: str, is_done: Callable[[str], Awaitable[bool]]
    ) -> AbstractAsyncContextManager[Callable[[str], None]]: ...


class SpearletSpawner:
    """Children on this node itself (local mode, or a daemon outside a cluster)."""

    def __init__(self, node: Spearlet) -> None:
        self._node = node

    async def submit(self, spec: FunctionSpec, stdin: bytes | None) -> str:
        return (await self._node.submit(spec, stdin=stdin)).id

    async def wait(self, task_id: str) -> Task:
        return await self._node.wait(task_id)

    async def cancel(self, task_id: str, reason: str) -> None:
        await self._node.cancel(task_id, reason)

    async def output(self, task: Task) -> bytes:
        """What the child (ended) set as its result, else its stdout."""
        store = self._node.services.objects
        if store is not None:
            from spear.core.namespaces import result_key

            try:
                value, _ = await store.get(result_key(task.spec.namespace, task.id))
                return bytes(value)
            except NotFound:
                pass
        return await self._node.logs_of(task.id, "stdout")

    async def done(self, task_id: str) -> bool:
        try:
            return (await self._node.task(task_id)).state.terminal
        except NotFound:
            return True


class NodeApiSpawner:
    """Children through a NodeAPI (a cluster member's ClusterNode: the scheduler places
    them, and wait, cancel and results reach whichever node runs them)."""

    def __init__(self, api: Any) -> None:
        self._api = api

    async def submit(self, spec: FunctionSpec, stdin: bytes | None) -> str:
        handle = await self._api.submit(spec, stdin=stdin)
        return str(handle.id)

    async def wait(self, task_id: str) -> Task:
        task: Task = await self._api.wait(task_id)
        return task

    async def cancel(self, task_id: str, reason: str) -> None:
        await self._api.cancel(task_id, reason)

    async def output(self, task: Task) -> bytes:
        return bytes((await self._api.result(task.id, wait=False)).output)

    async def done(self, task_id: str) -> bool:
        try:
            return bool((await self._api.task(task_id)).state.terminal)
        except NotFound:
            return True


@dataclass(frozen=True, slots=True)
class ChildRequest:
    """An agent's request for a child: the spec, its stdin and its input objects."""

    spec: FunctionSpec
    stdin: bytes | None
    inputs: tuple[str, ...]
    named: frozenset[str] = frozenset()  # the spec fields the request gave


def parse_child(data: Any) -> ChildRequest:
    """`{"artifact", "runtime"?, "args"?, "env"?: {..}, "labels"?: {..}, "timeout_s"?,
    "resources"?, "inputs"?: [keys], "stdin"?: text, ...}` (FunctionSpec's JSON fields)."""
    if not isinstance(data, dict) or not isinstance(data.get("artifact"), str):
        raise InvalidArgument('a child is a JSON object with at least "artifact"')
    fields = dict(data)
    inputs = fields.pop("inputs", []) or []
    stdin = fields.pop("stdin", None)
    if not isinstance(inputs, list) or not all(isinstance(k, str) and k for k in inputs):
        raise InvalidArgument("a child's inputs are a list of object keys")
    if stdin is not None and not isinstance(stdin, str):
        raise InvalidArgument("a child's stdin is text")
    for name in ("env", "labels"):
        if isinstance(fields.get(name), dict):
            fields[name] = list(fields[name].items())
    if isinstance(fields.get("args"), list) and not all(isinstance(a, str) for a in fields["args"]):
        raise InvalidArgument("a child's args are strings")
    return ChildRequest(
        spec=FunctionSpec.from_json(fields),
        stdin=None if stdin is None else stdin.encode(),
        inputs=tuple(inputs),
        named=frozenset(fields),
    )


def check_child(parent: Task, request: ChildRequest) -> FunctionSpec:
    """The spec to submit for `parent`'s child, or PermissionDenied / ResourceExhausted."""
    import dataclasses

    spec = request.spec
    if "namespace" in request.named and spec.namespace != parent.spec.namespace:
        raise PermissionDenied(
            f"a task of namespace {parent.spec.namespace!r} may not start a child in"
            f" {spec.namespace!r}"
        )
    if parent.spec.runtime is Runtime.WASM and spec.runtime is not Runtime.WASM:
        raise PermissionDenied("a WASM task may start only WASM children")
    allowed = set(parent.spec.dirs)
    for mapping in spec.dirs:
        if mapping not in allowed:
            raise PermissionDenied(
                f"a child may see only its parent's directories, not {mapping.host!r}"
            )
    labels = dict(parent.spec.labels)
    parent_depth = dict(parent.spec.env).get(DEPTH_ENV, "0")
    depth = (int(parent_depth) if parent_depth.isdigit() else 0) + 1
    if depth > MAX_DEPTH:
        raise ResourceExhausted(f"subtasks nest at most {MAX_DEPTH} deep")
    labels.update({k: v for k, v in spec.labels if k not in labels})
    env = dict(spec.env)
    env[PARENT_ENV] = parent.id
    env[DEPTH_ENV] = str(depth)
    if request.inputs:
        env[INPUTS_ENV] = ",".join(request.inputs)
    artifact = spec.artifact
    if spec.runtime is Runtime.WASM and not os.path.isabs(artifact):
        # Beside the parent's own module, so a tree of agents ships as one folder.
        artifact = os.path.join(os.path.dirname(parent.spec.artifact), artifact)
    return dataclasses.replace(
        spec,
        artifact=artifact,
        labels=tuple(labels.items()),
        env=tuple(env.items()),
        namespace=parent.spec.namespace,
    )


class Subtasks:
    """The node's `subtasks` service: starts children, and ends them with their parents."""

    def __init__(self) -> None:
        self._spawner: TaskSpawner | None = None
        self._node: Spearlet | None = None
        self._task_group: TaskGroup | None = None
        self._children: dict[str, set[str]] = {}  # parent id -> unfinished children
        self._quota: TaskQuota | None = None

    def use(self, spawner: TaskSpawner) -> None:
        """Submit children through `spawner` (a cluster member's NodeAPI)."""
        self._spawner = spawner

    def use_api(self, api: Any) -> None:
        self.use(NodeApiSpawner(api))

    def use_quota(self, quota: TaskQuota) -> None:
        """Hold a slot of the child's namespace's task quota for each child (a daemon's)."""
        self._quota = quota

    @asynccontextmanager
    async def serve_node(self, node: Spearlet, task_group: TaskGroup) -> AsyncIterator[None]:
        node.controller.add_finished_hook(self._tasks_finished)
        self._node, self._task_group = node, task_group
        if self._spawner is None:
            self._spawner = SpearletSpawner(node)
        try:
            yield
        finally:
            self._task_group = None

    @property
    def spawner(self) -> TaskSpawner:
        if self._spawner is None:
            raise InvalidArgument("the node is not running")
        return self._spawner

    @property
    def task_group(self) -> TaskGroup:
        if self._task_group is None:
            raise InvalidArgument("the node is not running")
        return self._task_group

    async def spawn(self, parent: Task, request: ChildRequest) -> str:
        """Start `parent`'s child; its task id."""
        spec = check_child(parent, request)
        live = self._children.setdefault(parent.id, set())
        if len(live) >= MAX_CHILDREN:
            raise ResourceExhausted(f"at most {MAX_CHILDREN} unfinished children a task")
        if self._quota is None:
            child_id = await self.spawner.submit(spec, request.stdin)
        else:
            async with self._quota.slot(spec.namespace, self.spawner.done) as keep:
                child_id = await self.spawner.submit(spec, request.stdin)
                keep(child_id)
        live.add(child_id)
        if request.inputs and self._node is not None and self._node.services.objects:
            store = self._node.services.objects
            for key in request.inputs:  # held for the child until it ends
                try:
                    await store.add_ref(key, holder=child_id)
                except NotFound:
                    pass  # it may live on another node: the child's get finds it there
        return child_id

    def ended(self, parent_id: str, child_id: str) -> None:
        live = self._children.get(parent_id)
        if live is not None:
            live.discard(child_id)
            if not live:
                self._children.pop(parent_id, None)

    async def _tasks_finished(self, finished: TasksFinished) -> None:
        for task in finished.tasks:
            children = self._children.pop(task.id, None)
            if not children:
                continue
            why = "cancelled" if task.state is TaskState.CANCELLED else task.state.value
            reason = f"parent task {task.id} ended ({why})"
            for child in children:
                try:
                    await self.spawner.cancel(child, reason)
                except Exception:  # already over, or its node is gone: nothing to stop
                    pass


def result_json(task: Task, output: bytes) -> dict[str, Any]:
    """A child's end as its parent reads it."""
    return {
        "id": task.id,
        "state": task.state.value,
        "exit_code": task.exit_code,
        "reason": task.reason,
        "output": output.decode("utf-8", errors="replace"),
    }
