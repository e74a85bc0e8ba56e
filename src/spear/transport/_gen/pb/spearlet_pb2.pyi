from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_PENDING: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_COMPLETED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_CANCELLED: _ClassVar[TaskState]
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_PENDING: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_COMPLETED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_CANCELLED: TaskState

class KeyValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class DirMapping(_message.Message):
    __slots__ = ("host", "guest")
    HOST_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    host: str
    guest: str
    def __init__(self, host: _Optional[str] = ..., guest: _Optional[str] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class FunctionSpec(_message.Message):
    __slots__ = ("artifact", "runtime", "args", "env", "dirs", "entry", "resources", "timeout_s", "memory_limit_bytes", "fuel", "labels", "workdir", "warm", "cpu_time_s", "open_files", "namespace", "max_retries", "retry_on", "priority", "reuse")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    DIRS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    FUEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    WARM_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_S_FIELD_NUMBER: _ClassVar[int]
    OPEN_FILES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REUSE_FIELD_NUMBER: _ClassVar[int]
    artifact: str
    runtime: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedCompositeFieldContainer[KeyValue]
    dirs: _containers.RepeatedCompositeFieldContainer[DirMapping]
    entry: str
    resources: Resources
    timeout_s: float
    memory_limit_bytes: int
    fuel: int
    labels: _containers.RepeatedCompositeFieldContainer[KeyValue]
    workdir: str
    warm: bool
    cpu_time_s: float
    open_files: int
    namespace: str
    max_retries: int
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    priority: int
    reuse: bool
    def __init__(self, artifact: _Optional[str] = ..., runtime: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., dirs: _Optional[_Iterable[_Union[DirMapping, _Mapping]]] = ..., entry: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., timeout_s: _Optional[float] = ..., memory_limit_bytes: _Optional[int] = ..., fuel: _Optional[int] = ..., labels: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., workdir: _Optional[str] = ..., warm: _Optional[bool] = ..., cpu_time_s: _Optional[float] = ..., open_files: _Optional[int] = ..., namespace: _Optional[str] = ..., max_retries: _Optional[int] = ..., retry_on: _Optional[_Iterable[str]] = ..., priority: _Optional[int] = ..., reuse: _Optional[bool] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("state", "at")
    STATE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    state: TaskState
    at: float
    def __init__(self, state: _Optional[_Union[TaskState, str]] = ..., at: _Optional[float] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("id", "spec", "state", "created_at", "started_at", "finished_at", "exit_code", "reason", "node", "attempts", "history", "attempt_log", "traceparent")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_LOG_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: FunctionSpec
    state: TaskState
    created_at: float
    started_at: float
    finished_at: float
    exit_code: int
    reason: str
    node: str
    attempts: int
    history: _containers.RepeatedCompositeFieldContainer[StateChange]
    attempt_log: _containers.RepeatedCompositeFieldContainer[Attempt]
    traceparent: str
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[FunctionSpec, _Mapping]] = ..., state: _Optional[_Union[TaskState, str]] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., node: _Optional[str] = ..., attempts: _Optional[int] = ..., history: _Optional[_Iterable[_Union[StateChange, _Mapping]]] = ..., attempt_log: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., traceparent: _Optional[str] = ...) -> None: ...

class SubmitTaskRequest(_message.Message):
    __slots__ = ("spec", "artifact_digest", "artifact_object", "stdin", "wait", "idempotency_key", "traceparent")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_OBJECT_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    spec: FunctionSpec
    artifact_digest: str
    artifact_object: str
    stdin: bytes
    wait: bool
    idempotency_key: str
    traceparent: str
    def __init__(self, spec: _Optional[_Union[FunctionSpec, _Mapping]] = ..., artifact_digest: _Optional[str] = ..., artifact_object: _Optional[str] = ..., stdin: _Optional[bytes] = ..., wait: _Optional[bool] = ..., idempotency_key: _Optional[str] = ..., traceparent: _Optional[str] = ...) -> None: ...

class SubmitTasksRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[SubmitTaskRequest]
    def __init__(self, tasks: _Optional[_Iterable[_Union[SubmitTaskRequest, _Mapping]]] = ...) -> None: ...

class SubmitOutcome(_message.Message):
    __slots__ = ("task", "error")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task: TaskInfo
    error: Error
    def __init__(self, task: _Optional[_Union[TaskInfo, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class SubmitTasksResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[SubmitOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[SubmitOutcome, _Mapping]]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("state", "limit", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: TaskState
    limit: int
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[TaskState, str]] = ..., limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetResultRequest(_message.Message):
    __slots__ = ("task_id", "wait")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    wait: bool
    def __init__(self, task_id: _Optional[str] = ..., wait: _Optional[bool] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("task", "data", "ran_at", "fetch_output")
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RAN_AT_FIELD_NUMBER: _ClassVar[int]
    FETCH_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    task: TaskInfo
    data: bytes
    ran_at: str
    fetch_output: bool
    def __init__(self, task: _Optional[_Union[TaskInfo, _Mapping]] = ..., data: _Optional[bytes] = ..., ran_at: _Optional[str] = ..., fetch_output: _Optional[bool] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("task_id", "streams", "follow")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    streams: _containers.RepeatedScalarFieldContainer[str]
    follow: bool
    def __init__(self, task_id: _Optional[str] = ..., streams: _Optional[_Iterable[str]] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("stream", "data", "offset")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    stream: str
    data: bytes
    offset: int
    def __init__(self, stream: _Optional[str] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class StreamMessage(_message.Message):
    __slots__ = ("submit", "task", "data", "close")
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    submit: SubmitTaskRequest
    task: TaskInfo
    data: bytes
    close: bool
    def __init__(self, submit: _Optional[_Union[SubmitTaskRequest, _Mapping]] = ..., task: _Optional[_Union[TaskInfo, _Mapping]] = ..., data: _Optional[bytes] = ..., close: _Optional[bool] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("digest", "name", "size", "data")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    digest: str
    name: str
    size: int
    data: bytes
    def __init__(self, digest: _Optional[str] = ..., name: _Optional[str] = ..., size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class HasArtifactResponse(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: bool
    def __init__(self, present: _Optional[bool] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("name", "state", "address", "version", "wasmtime_version", "capacity", "free", "running_tasks", "runtimes", "started_at", "data_dir", "pid", "max_message_bytes", "object_transfer_address", "peer_address", "object_socket")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WASMTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DATA_DIR_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TRANSFER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_SOCKET_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    address: str
    version: str
    wasmtime_version: str
    capacity: Resources
    free: Resources
    running_tasks: int
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    started_at: float
    data_dir: str
    pid: int
    max_message_bytes: int
    object_transfer_address: str
    peer_address: str
    object_socket: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., address: _Optional[str] = ..., version: _Optional[str] = ..., wasmtime_version: _Optional[str] = ..., capacity: _Optional[_Union[Resources, _Mapping]] = ..., free: _Optional[_Union[Resources, _Mapping]] = ..., running_tasks: _Optional[int] = ..., runtimes: _Optional[_Iterable[str]] = ..., started_at: _Optional[float] = ..., data_dir: _Optional[str] = ..., pid: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., object_transfer_address: _Optional[str] = ..., peer_address: _Optional[str] = ..., object_socket: _Optional[str] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("key", "version", "size", "refs", "pinned", "locations")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    size: int
    refs: int
    pinned: bool
    locations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ..., refs: _Optional[int] = ..., pinned: _Optional[bool] = ..., locations: _Optional[_Iterable[str]] = ...) -> None: ...

class ObjectChunk(_message.Message):
    __slots__ = ("key", "expected_version", "data", "info")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    key: str
    expected_version: int
    data: bytes
    info: ObjectInfo
    def __init__(self, key: _Optional[str] = ..., expected_version: _Optional[int] = ..., data: _Optional[bytes] = ..., info: _Optional[_Union[ObjectInfo, _Mapping]] = ...) -> None: ...

class GetObjectRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class ListObjectsRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListObjectsResponse(_message.Message):
    __slots__ = ("objects", "next_page_token")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectInfo]
    next_page_token: str
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ObjectKeyRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class DeleteObjectRequest(_message.Message):
    __slots__ = ("key", "force")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    key: str
    force: bool
    def __init__(self, key: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteObjectResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("node", "started_at", "finished_at", "exit_code", "reason")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node: str
    started_at: float
    finished_at: float
    exit_code: int
    reason: str
    def __init__(self, node: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ForwardedTask(_message.Message):
    __slots__ = ("task", "artifact_digest", "stdin")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    task: TaskInfo
    artifact_digest: str
    stdin: bytes
    def __init__(self, task: _Optional[_Union[TaskInfo, _Mapping]] = ..., artifact_digest: _Optional[str] = ..., stdin: _Optional[bytes] = ...) -> None: ...

class ForwardTasksRequest(_message.Message):
    __slots__ = ("tasks", "wait", "from_node", "output")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[ForwardedTask]
    wait: bool
    from_node: str
    output: bool
    def __init__(self, tasks: _Optional[_Iterable[_Union[ForwardedTask, _Mapping]]] = ..., wait: _Optional[bool] = ..., from_node: _Optional[str] = ..., output: _Optional[bool] = ...) -> None: ...

class ForwardOutcome(_message.Message):
    __slots__ = ("task", "output", "refused", "error")
    TASK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task: TaskInfo
    output: bytes
    refused: bool
    error: Error
    def __init__(self, task: _Optional[_Union[TaskInfo, _Mapping]] = ..., output: _Optional[bytes] = ..., refused: _Optional[bool] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ForwardTasksResponse(_message.Message):
    __slots__ = ("outcomes", "free")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ForwardOutcome]
    free: Resources
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ForwardOutcome, _Mapping]]] = ..., free: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class DeleteTasksRequest(_message.Message):
    __slots__ = ("task_ids", "older_than_s", "keep")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    OLDER_THAN_S_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    older_than_s: float
    keep: int
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ..., older_than_s: _Optional[float] = ..., keep: _Optional[int] = ...) -> None: ...

class DeleteTasksResponse(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...
