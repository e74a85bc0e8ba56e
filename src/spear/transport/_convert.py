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
from spear.transport._gen.pb import spearlet_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

_UNSPECIFIED: pb.TaskState = pb.TaskState.TASK_STATE_UNSPECIFIED
_STATE_TO_WIRE: dict[TaskState, pb.TaskState] = {
    TaskState.PENDING: pb.TaskState.TASK_STATE_PENDING,
    TaskState.RUNNING: pb.TaskState.TASK_STATE_RUNNING,
    TaskState.COMPLETED: pb.TaskState.TASK_STATE_COMPLETED,
    TaskState.FAILED: pb.TaskState.TASK_STATE_FAILED,
    TaskState.CANCELLED: pb.TaskState.TASK_STATE_CANCELLED,
}
_STATE_FROM_WIRE = {int(wire): state for state, wire in _STATE_TO_WIRE.items()}


def state_to_wire(state: TaskState | None) -> pb.TaskState:
    """`state` as the wire's enum value (an int); UNSPECIFIED for None."""
    return _UNSPECIFIED if state is None else _STATE_TO_WIRE[state]


def state_from_wire(state: int) -> TaskState | None:
    """The state of a wire enum value (an int), None for UNSPECIFIED."""
    if state == _UNSPECIFIED:
        return None
    try:
        return _STATE_FROM_WIRE[int(state)]
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument(f"unknown task state {state!r}") from None


# An unset optional field or sub-message of a protobuf message reads as its zero value, not
# None: `optional` says None for it (HasField).


def optional(message: Any, name: str) -> Any:
    """The field `name` of `message`, None if unset (an optional field, or a message)."""
    return getattr(message, name) if message.HasField(name) else None


def resources_to_wire(r: Resources) -> pb.Resources:
    return pb.Resources(cpu_millis=r.cpu_millis, memory_bytes=r.memory_bytes)


def resources_from_wire(r: pb.Resources | None) -> Resources:
    return Resources() if r is None else Resources(r.cpu_millis, r.memory_bytes)


def _pairs(items: tuple[tuple[str, str], ...]) -> list[pb.KeyValue]:
    return [pb.KeyValue(key=k, value=v) for k, v in items]


def spec_to_wire(spec: FunctionSpec) -> pb.FunctionSpec:
    return pb.FunctionSpec(
        artifact=spec.artifact,
        runtime=spec.runtime.value,
        args=list(spec.args),
        env=_pairs(spec.env),
        dirs=[pb.DirMapping(host=d.host, guest=d.guest) for d in spec.dirs],
        entry=spec.entry,
        resources=resources_to_wire(spec.resources),
        timeout_s=spec.timeout_s,
        memory_limit_bytes=spec.memory_limit_bytes,
        fuel=spec.fuel,
        labels=_pairs(spec.labels),
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


def spec_from_wire(spec: pb.FunctionSpec | None) -> FunctionSpec:
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


def task_to_wire(
    task: Task, *, with_spec: bool = True, spec: pb.FunctionSpec | None = None
) -> pb.TaskInfo:
    """`task` on the wire; without its spec if not `with_spec` (the other end has it: a
    forwarded task's answer); `spec`: its spec already on the wire (`tasks_to_wire`)."""
    history = []
    for state, at in task.history:
        try:
            wire = _STATE_TO_WIRE[TaskState(state)]
        except ValueError:
            wire = _UNSPECIFIED
        history.append(pb.StateChange(state=wire, at=at))
    return pb.TaskInfo(
        id=task.id,
        spec=(spec if spec is not None else spec_to_wire(task.spec)) if with_spec else None,
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
            pb.Attempt(
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


def task_from_wire(info: pb.TaskInfo, spec: FunctionSpec | None = None) -> Task:
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


# A batch's tasks mostly share one spec (a SubmitTasks of N copies, a wave's reports): its
# conversion, 3 us one way and 7.5 the other, was a third and a half of each task's.


def tasks_to_wire(tasks: Sequence[Task]) -> list[pb.TaskInfo]:
    """Each of `tasks` on the wire, a spec equal to the one before converted once."""
    out: list[pb.TaskInfo] = []
    last: FunctionSpec | None = None
    wire: pb.FunctionSpec | None = None
    for task in tasks:
        if wire is None or (task.spec is not last and task.spec != last):
            last, wire = task.spec, spec_to_wire(task.spec)
        out.append(task_to_wire(task, spec=wire))
    return out


def tasks_from_wire(infos: Iterable[pb.TaskInfo]) -> list[Task]:
    """The tasks `infos` describe, a spec equal to the one before converted once (the
    tasks then share one FunctionSpec: it is immutable)."""
    out: list[Task] = []
    last: pb.FunctionSpec | None = None
    spec: FunctionSpec | None = None
    for info in infos:
        if not info.HasField("spec"):
            out.append(task_from_wire(info))  # (refused: it says why)
            continue
        if spec is None or info.spec != last:
            last, spec = info.spec, spec_from_wire(info.spec)
        out.append(task_from_wire(info, spec))
    return out


def log_from_wire(chunk: pb.LogChunk) -> LogChunk:
    return LogChunk(chunk.stream, chunk.data, chunk.offset)


def node_to_wire(info: NodeInfo) -> pb.NodeInfo:
    return pb.NodeInfo(
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


def node_from_wire(info: pb.NodeInfo) -> NodeInfo:
    return NodeInfo(
        name=info.name,
        state=info.state,
        address=info.address,
        version=info.version,
        wasmtime_version=info.wasmtime_version,
        capacity=resources_from_wire(optional(info, "capacity")),
        free=resources_from_wire(optional(info, "free")),
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


def object_to_wire(info: ObjectInfo) -> pb.ObjectInfo:
    return pb.ObjectInfo(
        key=info.key, version=info.version, size=info.size, refs=info.refs, pinned=info.pinned,
        locations=list(info.locations),
    )  # fmt: skip


def object_from_wire(info: pb.ObjectInfo | None) -> ObjectInfo:
    if info is None:
        raise InvalidArgument("the answer has no object info")
    return ObjectInfo(
        info.key, info.version, info.size, info.refs, info.pinned,
        locations=tuple(info.locations),
    )  # fmt: skip
