"""The domain models: frozen dataclasses with a JSON form for the KV and the CLI."""

from __future__ import annotations

import dataclasses
import enum
import itertools
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spear.core.namespaces import check_name as check_namespace
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Sequence

# The node API's object values are the store's own type (one ObjectInfo, light module).
from spear.store.object_info import ObjectInfo as ObjectInfo


class TaskState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})


class _Keep(enum.Enum):
    KEEP = 0  # Task.transition: leave this field as it is


_KEEP = _Keep.KEEP
_new_instance = object.__new__
_set_field = object.__setattr__  # a frozen dataclass's fields are set through object's

# Which transitions the lifecycle admits (seed §4). Anything else is a bug or a race lost.
ALLOWED_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.RUNNING, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.RUNNING: frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}


class Runtime(enum.StrEnum):
    WASM = "wasm"
    PROCESS = "process"


@dataclass(frozen=True, slots=True)
class Resources:
    """What a task reserves while it runs: CPU in millicores, memory in bytes."""

    cpu_millis: int = 100
    memory_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.cpu_millis < 0 or self.memory_bytes < 0:
            raise InvalidArgument("resources must not be negative")

    def fits_in(self, other: Resources) -> bool:
        return self.cpu_millis <= other.cpu_millis and self.memory_bytes <= other.memory_bytes

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            cpu_millis=self.cpu_millis + other.cpu_millis,
            memory_bytes=self.memory_bytes + other.memory_bytes,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            cpu_millis=max(0, self.cpu_millis - other.cpu_millis),
            memory_bytes=max(0, self.memory_bytes - other.memory_bytes),
        )


@dataclass(frozen=True, slots=True)
class DirMapping:
    """A host directory preopened for the guest, read-write (wasmtime's `--dir HOST::GUEST`)."""

    host: str
    guest: str

    @classmethod
    def parse(cls, text: str) -> DirMapping:
        host, sep, guest = text.partition("::")
        if not host:
            raise InvalidArgument(f"--dir needs a host directory, got {text!r}")
        return cls(host=host, guest=guest if sep else host)


def _utf8(what: str, text: str) -> None:
    if not isinstance(text, str):  # (a spec from JSON: any type may come)
        raise InvalidArgument(f"{what} must be text, not {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes the OS gave as surrogates: no text a record can hold
        raise InvalidArgument(f"{what} is not valid UTF-8: {text!r}") from None


def _check_text(spec: FunctionSpec) -> None:
    """Every text of a spec is UTF-8 (a record, the wire and the guest's WASI strings need
    it): a non-UTF-8 argument, variable or path is refused with what it is, escaped."""
    _utf8("the module path", spec.artifact)
    _utf8("the entry point", spec.entry)
    for i, arg in enumerate(spec.args, 1):
        _utf8(f"argument {i}", arg)
    for name, value in spec.env:
        _utf8("an environment variable's name", name)
        _utf8(f"environment variable {name!r}", value)
    for mapping in spec.dirs:
        _utf8("a --dir path", f"{mapping.host}{mapping.guest}")
    for key, value in spec.labels:
        _utf8("a label", f"{key}{value}")
    if spec.workdir is not None:
        _utf8("the working directory", spec.workdir)


# The failures a task may be retried on (FunctionSpec.retry_on; core/retries.py tells
# them apart). By default only the system's own: like Ray's tasks, an agent's error or
# timeout is not retried unless asked, since running it again may not be harmless.
RETRYABLE_FAILURES = ("node-lost", "process-lost", "timeout", "exit")
DEFAULT_RETRY_ON = ("node-lost", "process-lost")
MAX_RETRIES_LIMIT = 100
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000


UINT64_MAX = 2**64 - 1
_TUPLE_FIELDS = ("args", "env", "dirs", "labels", "retry_on")


def _as_tuple(name: str, value: Any) -> tuple[Any, ...]:
    """A spec's sequence field as the tuple it is kept as: a list's items, a dict's pairs
    (env, labels); a pair given as a list is a tuple too."""
    if isinstance(value, dict):
        return tuple(value.items())
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidArgument(f"{name} must be a list, not {type(value).__name__}: {value!r}")
    return tuple(tuple(item) if isinstance(item, list) else item for item in value)


_UINT64_FIELDS = (
    ("memory_limit_bytes", "memory limit"),
    ("fuel", "fuel"),
    ("open_files", "open files limit"),
)


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """Everything needed to run one task: what, with which inputs, under which limits.

    `artifact` is a path to the module or program (or, for the process runtime, the
    command); `args` follow it as argv[1:].
    """

    artifact: str
    runtime: Runtime = Runtime.WASM
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    dirs: tuple[DirMapping, ...] = ()
    entry: str = "_start"
    resources: Resources = field(default_factory=Resources)
    timeout_s: float | None = None
    memory_limit_bytes: int | None = None
    fuel: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    warm: bool = False
    cpu_time_s: float | None = None  # process runtime: RLIMIT_CPU
    open_files: int | None = None  # process runtime: RLIMIT_NOFILE
    namespace: str = "default"  # core/namespaces.py
    max_retries: int = 0  # how often a failed task is run again (core/retries.py)
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON  # on which failures (RETRYABLE_FAILURES)
    # Placement order among tasks waiting for room (seed's task priority): higher first,
    # then first come. Not a preemption: a running task is never stopped for another.
    priority: int = 0
    # process runtime, with `warm`: a worker that ran a task of this function cleanly
    # takes its next one, its process and imports kept (runtimes/process/reuse.py).
    reuse: bool = False

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:  # (given as a list, or a dict of pairs: kept as tuples)
            value = getattr(self, name)
            if type(value) is not tuple:
                object.__setattr__(self, name, _as_tuple(name, value))
        if not self.artifact:
            raise InvalidArgument("a function spec needs an artifact")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise InvalidArgument("timeout must be a positive number of seconds")
        if self.memory_limit_bytes is not None and self.memory_limit_bytes <= 0:
            raise InvalidArgument("memory limit must be positive")
        if self.fuel is not None and self.fuel <= 0:
            raise InvalidArgument("fuel must be positive")
        if self.cpu_time_s is not None and not self.cpu_time_s > 0:
            raise InvalidArgument("CPU time limit must be a positive number of seconds")
        if self.open_files is not None and self.open_files < 1:
            raise InvalidArgument("open files limit must be at least 1")
        for name, what in _UINT64_FIELDS:  # (64-bit on the wire and in the task record)
            value = getattr(self, name)
            if value is not None and value > UINT64_MAX:
                raise InvalidArgument(f"{what} must be at most {UINT64_MAX}")
        if not 0 <= self.max_retries <= MAX_RETRIES_LIMIT:
            raise InvalidArgument(f"max retries must be between 0 and {MAX_RETRIES_LIMIT}")
        for kind in self.retry_on:
            if kind not in RETRYABLE_FAILURES:
                known = ", ".join(RETRYABLE_FAILURES)
                raise InvalidArgument(f"unknown failure to retry on {kind!r} (one of {known})")
        if not MIN_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise InvalidArgument(f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}")
        for name, _ in self.env:
            if not name or "=" in name:
                raise InvalidArgument(f"invalid environment variable name {name!r}")
        _check_text(self)
        if self.namespace != "default":
            check_namespace(self.namespace)
        if self.reuse and not (self.warm and self.runtime is Runtime.PROCESS):
            raise InvalidArgument("reuse needs a warm process agent (warm=True, runtime process)")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["runtime"] = self.runtime.value
        # Every field, defaults too: the task codec writes a spec as orjson serializes the
        # dataclass (core/tasks/codec.py), and a record reads the same either way. Records
        # written before a field existed read back with its default (from_json).
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FunctionSpec:
        try:
            return cls(
                artifact=data["artifact"],
                runtime=Runtime(data.get("runtime", "wasm")),
                args=tuple(data.get("args", ())),
                env=tuple((str(k), str(v)) for k, v in data.get("env", ())),
                dirs=tuple(DirMapping(**d) for d in data.get("dirs", ())),
                entry=data.get("entry", "_start"),
                resources=Resources(**data.get("resources", {})),
                timeout_s=data.get("timeout_s"),
                memory_limit_bytes=data.get("memory_limit_bytes"),
                fuel=data.get("fuel"),
                labels=tuple((str(k), str(v)) for k, v in data.get("labels", ())),
                workdir=data.get("workdir"),
                warm=bool(data.get("warm", False)),
                cpu_time_s=data.get("cpu_time_s"),
                open_files=data.get("open_files"),
                namespace=data.get("namespace", "default"),
                max_retries=int(data.get("max_retries", 0)),
                retry_on=tuple(data.get("retry_on", DEFAULT_RETRY_ON)),
                priority=int(data.get("priority", 0)),
                reuse=bool(data.get("reuse", False)),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # (int(inf))
            raise InvalidArgument(f"malformed function spec: {exc}") from exc


def new_task_id() -> str:
    """A time-ordered id: 12 hex digits of milliseconds, then 10 more that make it unique.

    Lexicographic order is creation order, so a reverse prefix scan lists newest first.
    The last 10 digits count up from a random start (drawn again in a forked child):
    unique within a process, and unlike another process's but by a 2^-40 chance.
    """
    return f"{time.time_ns() // 1_000_000:012x}{next(_ID_SEQ) & 0xFF_FFFF_FFFF:010x}"


def _reseed_ids() -> None:
    global _ID_SEQ
    _ID_SEQ = itertools.count(int.from_bytes(os.urandom(5)))


_ID_SEQ = itertools.count(int.from_bytes(os.urandom(5)))
os.register_at_fork(after_in_child=_reseed_ids)


@dataclass(frozen=True, slots=True)
class Attempt:
    """An earlier run of a retried task: the node it ran on and how it ended."""

    node: str
    started_at: float | None
    finished_at: float
    exit_code: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        return cls(
            node=str(data.get("node", "")),
            started_at=data.get("started_at"),
            finished_at=float(data.get("finished_at", 0.0)),
            exit_code=int(data.get("exit_code", 0)),
            reason=str(data.get("reason", "")),
        )


@dataclass(frozen=True, slots=True)
class Task:
    """One run of a FunctionSpec and everything known about how it went."""

    id: str
    spec: FunctionSpec
    state: TaskState = TaskState.PENDING
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    node: str | None = None
    attempts: int = 0
    history: tuple[tuple[str, float], ...] = ()
    attempt_log: tuple[Attempt, ...] = ()  # the runs before this one (core/retries.py)
    # W3C traceparent of the task's span when traced (spear/tracing, docs/observability.md)
    traceparent: str = ""

    def transition(
        self,
        state: TaskState,
        now: float | None = None,
        *,
        exit_code: int | None | _Keep = _KEEP,
        reason: str | None | _Keep = _KEEP,
    ) -> Task:
        """The task after moving to `state` (at `now`), with its `exit_code` and `reason`
        if given; raises if the lifecycle does not allow it."""
        if state not in ALLOWED_TRANSITIONS[self.state]:
            raise InvalidArgument(f"task {self.id} cannot go from {self.state} to {state}")
        now = time.time() if now is None else now
        # Each field set by name on a new instance, skipping __init__: as safe against a
        # field reorder as Task(id=..., ...) and faster than either that or positional
        # construction (timeit, two transitions: positional 2.39 us, keyword 3.08 us, by
        # name 2.15 us). Task has no __post_init__ to skip; test_models checks that this
        # sets every field, as dataclasses.replace would.
        new = _new_instance(Task)
        _set_field(new, "id", self.id)
        _set_field(new, "spec", self.spec)
        _set_field(new, "state", state)
        _set_field(new, "created_at", self.created_at)
        _set_field(new, "started_at", now if state is TaskState.RUNNING else self.started_at)
        _set_field(new, "finished_at", now if state in _TERMINAL else self.finished_at)
        _set_field(new, "exit_code", self.exit_code if exit_code is _KEEP else exit_code)
        _set_field(new, "reason", self.reason if reason is _KEEP else reason)
        _set_field(new, "node", self.node)
        _set_field(new, "attempts", self.attempts)
        _set_field(new, "history", (*self.history, (state._value_, now)))
        _set_field(new, "attempt_log", self.attempt_log)
        _set_field(new, "traceparent", self.traceparent)
        return new

    def to_json(self, *, spec_json: Any = None) -> dict[str, Any]:
        """The task's JSON form (the one layout of its record: `from_json` reads it back).

        `spec_json` stands for the spec's JSON, `spec.to_json()` by default: the task
        codec (core/tasks/codec.py) passes it encoded already, once per spec."""
        return {
            "id": self.id,
            "spec": self.spec.to_json() if spec_json is None else spec_json,
            "state": self.state._value_,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "node": self.node,
            "attempts": self.attempts,
            "history": self.history,  # pairs: JSON arrays, as tuples or lists
            **(
                {"attempt_log": [a.to_json() for a in self.attempt_log]} if self.attempt_log else {}
            ),
            "traceparent": self.traceparent,
            # (derived, for readers: `spear status --json`, `run --json`; not read back)
            **({"trace_id": self.trace_id} if self.traceparent else {}),
        }

    @property
    def trace_id(self) -> str:
        """The id of the task's trace (32 hex digits), "" when it was not traced."""
        tp = self.traceparent
        return tp[3:35] if len(tp) == 55 else ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        return cls(
            id=data["id"],
            spec=FunctionSpec.from_json(data["spec"]),
            state=TaskState(data["state"]),
            created_at=data.get("created_at", 0.0),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            exit_code=data.get("exit_code"),
            reason=data.get("reason"),
            node=data.get("node"),
            attempts=data.get("attempts", 0),
            history=tuple((str(s), float(t)) for s, t in data.get("history", ())),
            attempt_log=tuple(Attempt.from_json(a) for a in data.get("attempt_log", ())),
            traceparent=str(data.get("traceparent") or ""),
        )


# -- what callers of a node get back (the NodeAPI's values) ------------------------

LOG_STREAMS = ("stdout", "stderr", "agent")


def log_streams(streams: Sequence[str]) -> tuple[str, ...]:
    """The log streams asked for (all of them for none); InvalidArgument for an unknown one."""
    names = tuple(streams) or LOG_STREAMS
    for name in names:
        if name not in LOG_STREAMS:
            raise InvalidArgument(f"unknown log stream {name!r} (one of {', '.join(LOG_STREAMS)})")
    return names


@dataclass(frozen=True, slots=True)
class LogChunk:
    """A piece of one of a task's log streams, starting at `offset` in that stream."""

    stream: str
    data: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class TaskResult:
    """A finished task and its output (what it wrote to stdout)."""

    task: Task
    output: bytes

    @property
    def exit_code(self) -> int | None:
        return self.task.exit_code

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task.to_json(),
            "output": self.output.decode("utf-8", errors="replace"),
        }


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node's identity, capacity and load."""

    name: str
    state: str
    address: str
    version: str
    wasmtime_version: str
    capacity: Resources
    free: Resources
    running_tasks: int
    runtimes: tuple[str, ...]
    started_at: float
    data_dir: str
    pid: int
    max_message_bytes: int = 0
    object_transfer_address: str = ""  # in a cluster: the object transfer service
    peer_address: str = ""  # in a cluster: ForwardTasks on grpc.aio (node/peer_aio.py)
    object_socket: str = ""  # for clients on the node's host (transport/object_socket.py)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["runtimes"] = list(self.runtimes)
        return data
