"""Wire messages <-> core models. The only place that knows both shapes."""

from __future__ import annotations

from spear._api import LogChunk, NodeInfo, ObjectInfo
from spear.core.models import DirMapping, FunctionSpec, Resources, Runtime, Task, TaskState
from spear.errors import InvalidArgument
from spear.transport import _fastdefaults
from spear.transport._gen.spear import v1

_fastdefaults.install()

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


def state_from_wire(state: v1.TaskState) -> TaskState | None:
    if state == v1.TaskState.UNSPECIFIED:
        return None
    try:
        return _STATE_FROM_WIRE[v1.TaskState(state)]
    except (KeyError, ValueError):
        raise InvalidArgument(f"unknown task state {state!r}") from None


def resources_to_wire(r: Resources) -> v1.Resources:
    return v1.Resources(cpu_millis=r.cpu_millis, memory_bytes=r.memory_bytes)


def resources_from_wire(r: v1.Resources | None) -> Resources:
    return Resources() if r is None else Resources(r.cpu_millis, r.memory_bytes)


def _pairs(items: tuple[tuple[str, str], ...]) -> list[v1.KeyValue]:
    return [v1.KeyValue(key=k, value=v) for k, v in items]


def spec_to_wire(spec: FunctionSpec) -> v1.FunctionSpec:
    return v1.FunctionSpec(
        artifact=spec.artifact,
        runtime=spec.runtime.value,
        args=list(spec.args),
        env=_pairs(spec.env),
        dirs=[v1.DirMapping(host=d.host, guest=d.guest) for d in spec.dirs],
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
    )


def spec_from_wire(spec: v1.FunctionSpec | None) -> FunctionSpec:
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
        resources=resources_from_wire(spec.resources),
        timeout_s=spec.timeout_s,
        memory_limit_bytes=spec.memory_limit_bytes,
        fuel=spec.fuel,
        labels=tuple((kv.key, kv.value) for kv in spec.labels),
        workdir=spec.workdir,
        warm=spec.warm,
        cpu_time_s=spec.cpu_time_s,
        open_files=spec.open_files,
    )


def task_to_wire(task: Task) -> v1.TaskInfo:
    history = []
    for state, at in task.history:
        try:
            wire = _STATE_TO_WIRE[TaskState(state)]
        except ValueError:
            wire = v1.TaskState.UNSPECIFIED
        history.append(v1.StateChange(state=wire, at=at))
    return v1.TaskInfo(
        id=task.id,
        spec=spec_to_wire(task.spec),
        state=_STATE_TO_WIRE[task.state],
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        exit_code=task.exit_code,
        reason=task.reason,
        node=task.node,
        attempts=task.attempts,
        history=history,
    )


def task_from_wire(info: v1.TaskInfo) -> Task:
    state = state_from_wire(info.state)
    if state is None:
        raise InvalidArgument(f"task {info.id} has no state")
    return Task(
        id=info.id,
        spec=spec_from_wire(info.spec),
        state=state,
        created_at=info.created_at,
        started_at=info.started_at,
        finished_at=info.finished_at,
        exit_code=info.exit_code,
        reason=info.reason,
        node=info.node,
        attempts=info.attempts,
        history=tuple(
            ((state_from_wire(h.state) or TaskState.PENDING).value, h.at) for h in info.history
        ),
    )


def log_to_wire(chunk: LogChunk) -> v1.LogChunk:
    return v1.LogChunk(stream=chunk.stream, data=chunk.data, offset=chunk.offset)


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
    )


def object_to_wire(info: ObjectInfo) -> v1.ObjectInfo:
    return v1.ObjectInfo(
        key=info.key, version=info.version, size=info.size, refs=info.refs, pinned=info.pinned
    )


def object_from_wire(info: v1.ObjectInfo | None) -> ObjectInfo:
    if info is None:
        raise InvalidArgument("the answer has no object info")
    return ObjectInfo(info.key, info.version, info.size, info.refs, info.pinned)
