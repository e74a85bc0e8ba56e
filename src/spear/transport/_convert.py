"""Wire messages <-> core models. The only place that knows both shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spear.core.models import (
    DEFAULT_RETRY_ON,
    Attempt,
    DirMapping,
    FunctionSpec,
    LogChunk,
    NodeInfo,
    ObjectInfo,
    Resources,
    Runtime,
    Task,
    TaskState,
)
from spear.errors import InvalidArgument
from spear.transport._gen.spear import v1

if TYPE_CHECKING:
    from spear.transport._gen.pb import spearlet_pb2 as pb

# The call whose messages are protobuf's own on both ends (client.call, SpearletService).
RUN_TASK = "/spear.v1.Spearlet/RunTask"
SUBMIT_TASKS = "/spear.v1.Spearlet/SubmitTasks"

_STATE_TO_WIRE = {
    TaskState.PENDING: v1.TaskState.PENDING,
    TaskState.RUNNING: v1.TaskState.RUNNING,
    TaskState.COMPLETED: v1.TaskState.COMPLETED,
    TaskState.FAILED: v1.TaskState.FAILED,
    TaskState.CANCELLED: v1.TaskState.CANCELLED,
}
_STATE_FROM_WIRE = {wire: state for state, wire in _STATE_TO_WIRE.items()}


def state_to_wire(state: TaskState | None) -> v1.TaskState:
    return v1.TaskState.UNSPECIFIED if state is None else _STATE_TO_WIRE[state]


def state_from_wire(state: v1.TaskState | int) -> TaskState | None:
    if state == v1.TaskState.UNSPECIFIED:
        return None
    try:
        return _STATE_FROM_WIRE[v1.TaskState(state)]
    except (KeyError, ValueError):
        raise InvalidArgument(f"unknown task state {state!r}") from None


# The converters below serve two kinds of message of the same protos: betterproto2's (`v1`,
# every call) and protobuf's own (`pb`, RUN_TASK's, where encoding costs count: see
# `Client._run_task` in node/client.py and `SpearletService._run_task_pb` in node/server.py).
# Both are built from keyword arguments (None leaves a field unset) and read by attribute;
# they differ in how an unset optional field reads: None in betterproto2, its zero value in
# protobuf, which says whether it is set with HasField.
_Messages = Any  # the module of either kind: v1, or pb


def optional(message: Any, name: str) -> Any:
    """The field `name` of `message`, None if unset (an optional field, or a message)."""
    has = getattr(message, "HasField", None)
    if has is None:
        return getattr(message, name)
    return getattr(message, name) if has(name) else None


def resources_to_wire(r: Resources, m: _Messages = v1) -> v1.Resources:
    return m.Resources(cpu_millis=r.cpu_millis, memory_bytes=r.memory_bytes)  # type: ignore[no-any-return]


def resources_from_wire(r: v1.Resources | pb.Resources | None) -> Resources:
    return Resources() if r is None else Resources(r.cpu_millis, r.memory_bytes)


def _pairs(items: tuple[tuple[str, str], ...], m: _Messages) -> list[Any]:
    return [m.KeyValue(key=k, value=v) for k, v in items]


def spec_to_wire(spec: FunctionSpec, m: _Messages = v1) -> v1.FunctionSpec:
    """`spec` as a message of `m`'s kind (betterproto2's by default)."""
    return m.FunctionSpec(  # type: ignore[no-any-return]
        artifact=spec.artifact,
        runtime=spec.runtime.value,
        args=list(spec.args),
        env=_pairs(spec.env, m),
        dirs=[m.DirMapping(host=d.host, guest=d.guest) for d in spec.dirs],
        entry=spec.entry,
        resources=resources_to_wire(spec.resources, m),
        timeout_s=spec.timeout_s,
        memory_limit_bytes=spec.memory_limit_bytes,
        fuel=spec.fuel,
        labels=_pairs(spec.labels, m),
        workdir=spec.workdir,
        warm=spec.warm,
        cpu_time_s=spec.cpu_time_s,
        open_files=spec.open_files,
        namespace=spec.namespace,
        max_retries=spec.max_retries,
        retry_on=[] if spec.retry_on == DEFAULT_RETRY_ON else list(spec.retry_on),
        priority=spec.priority,
        reuse=spec.reuse,
    )


def spec_from_wire(spec: v1.FunctionSpec | pb.FunctionSpec | None) -> FunctionSpec:
    if spec is None:
        raise InvalidArgument("the request has no function spec")
    try:
        runtime = Runtime(spec.runtime or "wasm")
    except ValueError:
        names = ", ".join(r.value for r in Runtime)
        raise InvalidArgument(f"unknown runtime {spec.runtime!r} (one of {names})") from None
    return FunctionSpec(
        artifact=spec.artifact,
        runtime=runtime,
        args=tuple(spec.args),
        env=tuple((kv.key, kv.value) for kv in spec.env),
        dirs=tuple(DirMapping(d.host, d.guest) for d in spec.dirs),
        entry=spec.entry or "_start",
        resources=resources_from_wire(optional(spec, "resources")),
        timeout_s=optional(spec, "timeout_s"),
        memory_limit_bytes=optional(spec, "memory_limit_bytes"),
        fuel=optional(spec, "fuel"),
        labels=tuple((kv.key, kv.value) for kv in spec.labels),
        workdir=optional(spec, "workdir"),
        warm=spec.warm,
        cpu_time_s=optional(spec, "cpu_time_s"),
        open_files=optional(spec, "open_files"),
        namespace=spec.namespace or "default",
        max_retries=spec.max_retries,
        retry_on=tuple(spec.retry_on) or DEFAULT_RETRY_ON,
        priority=spec.priority,
        reuse=spec.reuse,
    )


def task_to_wire(task: Task, m: _Messages = v1, *, with_spec: bool = True) -> v1.TaskInfo:
    """`task` as a message of `m`'s kind (betterproto2's by default); without its spec
    if not `with_spec` (the other end has it: a forwarded task's answer)."""
    history = []
    for state, at in task.history:
        try:
            wire = _STATE_TO_WIRE[TaskState(state)]
        except ValueError:
            wire = v1.TaskState.UNSPECIFIED
        history.append(m.StateChange(state=wire, at=at))
    return m.TaskInfo(  # type: ignore[no-any-return]
        id=task.id,
        spec=spec_to_wire(task.spec, m) if with_spec else None,
        state=_STATE_TO_WIRE[task.state],
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        exit_code=task.exit_code,
        reason=task.reason,
        node=task.node,
        attempts=task.attempts,
        history=history,
        attempt_log=[
            m.Attempt(
                node=a.node,
                started_at=a.started_at,
                finished_at=a.finished_at,
                exit_code=a.exit_code,
                reason=a.reason,
            )
            for a in task.attempt_log
        ],
        traceparent=task.traceparent,
    )


def task_from_wire(info: v1.TaskInfo | pb.TaskInfo, spec: FunctionSpec | None = None) -> Task:
    """The task `info` describes; with `spec`, that spec (the message may omit it)."""
    state = state_from_wire(info.state)
    if state is None:
        raise InvalidArgument(f"task {info.id} has no state")
    return Task(
        id=info.id,
        spec=spec if spec is not None else spec_from_wire(optional(info, "spec")),
        state=state,
        created_at=info.created_at,
        started_at=optional(info, "started_at"),
        finished_at=optional(info, "finished_at"),
        exit_code=optional(info, "exit_code"),
        reason=optional(info, "reason"),
        node=optional(info, "node"),
        attempts=info.attempts,
        history=tuple(
            ((state_from_wire(h.state) or TaskState.PENDING).value, h.at) for h in info.history
        ),
        attempt_log=tuple(
            Attempt(
                node=a.node,
                started_at=optional(a, "started_at"),
                finished_at=a.finished_at,
                exit_code=a.exit_code,
                reason=a.reason,
            )
            for a in info.attempt_log
        ),
        traceparent=info.traceparent,
    )


def log_from_wire(chunk: v1.LogChunk) -> LogChunk:
    return LogChunk(chunk.stream, chunk.data, chunk.offset)


def node_to_wire(info: NodeInfo) -> v1.NodeInfo:
    return v1.NodeInfo(
        name=info.name,
        state=info.state,
        address=info.address,
        version=info.version,
        wasmtime_version=info.wasmtime_version,
        capacity=resources_to_wire(info.capacity),
        free=resources_to_wire(info.free),
        running_tasks=info.running_tasks,
        runtimes=list(info.runtimes),
        started_at=info.started_at,
        data_dir=info.data_dir,
        pid=info.pid,
        max_message_bytes=info.max_message_bytes,
        object_transfer_address=info.object_transfer_address,
        peer_address=info.peer_address,
        object_socket=info.object_socket,
    )


def node_from_wire(info: v1.NodeInfo) -> NodeInfo:
    return NodeInfo(
        name=info.name,
        state=info.state,
        address=info.address,
        version=info.version,
        wasmtime_version=info.wasmtime_version,
        capacity=resources_from_wire(info.capacity),
        free=resources_from_wire(info.free),
        running_tasks=info.running_tasks,
        runtimes=tuple(info.runtimes),
        started_at=info.started_at,
        data_dir=info.data_dir,
        pid=info.pid,
        max_message_bytes=info.max_message_bytes,
        object_transfer_address=info.object_transfer_address,
        peer_address=info.peer_address,
        object_socket=info.object_socket,
    )


def object_to_wire(info: ObjectInfo) -> v1.ObjectInfo:
    return v1.ObjectInfo(
        key=info.key, version=info.version, size=info.size, refs=info.refs, pinned=info.pinned,
        locations=list(info.locations),
    )  # fmt: skip


def object_from_wire(info: v1.ObjectInfo | None) -> ObjectInfo:
    if info is None:
        raise InvalidArgument("the answer has no object info")
    return ObjectInfo(
        info.key, info.version, info.size, info.refs, info.pinned,
        locations=tuple(info.locations),
    )  # fmt: skip
