from spear.transport._gen.pb import spearlet_pb2 as _spearlet_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_HEALTH_UNSPECIFIED: _ClassVar[NodeHealth]
    NODE_HEALTH_HEALTHY: _ClassVar[NodeHealth]
    NODE_HEALTH_UNHEALTHY: _ClassVar[NodeHealth]
    NODE_HEALTH_DEAD: _ClassVar[NodeHealth]
    NODE_HEALTH_LEFT: _ClassVar[NodeHealth]
NODE_HEALTH_UNSPECIFIED: NodeHealth
NODE_HEALTH_HEALTHY: NodeHealth
NODE_HEALTH_UNHEALTHY: NodeHealth
NODE_HEALTH_DEAD: NodeHealth
NODE_HEALTH_LEFT: NodeHealth

class WorkerAgentInfo(_message.Message):
    __slots__ = ("runtime", "version")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    version: str
    def __init__(self, runtime: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class NodeRecord(_message.Message):
    __slots__ = ("name", "address", "labels", "capacity", "free", "agents", "running_tasks", "queued_tasks", "registered_at", "last_heartbeat", "health", "incarnation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TASKS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    labels: _containers.RepeatedCompositeFieldContainer[_spearlet_pb2.KeyValue]
    capacity: _spearlet_pb2.Resources
    free: _spearlet_pb2.Resources
    agents: _containers.RepeatedCompositeFieldContainer[WorkerAgentInfo]
    running_tasks: int
    queued_tasks: int
    registered_at: float
    last_heartbeat: float
    health: NodeHealth
    incarnation: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[_spearlet_pb2.KeyValue, _Mapping]]] = ..., capacity: _Optional[_Union[_spearlet_pb2.Resources, _Mapping]] = ..., free: _Optional[_Union[_spearlet_pb2.Resources, _Mapping]] = ..., agents: _Optional[_Iterable[_Union[WorkerAgentInfo, _Mapping]]] = ..., running_tasks: _Optional[int] = ..., queued_tasks: _Optional[int] = ..., registered_at: _Optional[float] = ..., last_heartbeat: _Optional[float] = ..., health: _Optional[_Union[NodeHealth, str]] = ..., incarnation: _Optional[str] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: NodeRecord
    def __init__(self, node: _Optional[_Union[NodeRecord, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("name", "incarnation", "free", "running_tasks", "queued_tasks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TASKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    incarnation: str
    free: _spearlet_pb2.Resources
    running_tasks: int
    queued_tasks: int
    def __init__(self, name: _Optional[str] = ..., incarnation: _Optional[str] = ..., free: _Optional[_Union[_spearlet_pb2.Resources, _Mapping]] = ..., running_tasks: _Optional[int] = ..., queued_tasks: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("known", "node")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    known: bool
    node: NodeRecord
    def __init__(self, known: _Optional[bool] = ..., node: _Optional[_Union[NodeRecord, _Mapping]] = ...) -> None: ...

class DeregisterNodeRequest(_message.Message):
    __slots__ = ("name", "incarnation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    incarnation: str
    def __init__(self, name: _Optional[str] = ..., incarnation: _Optional[str] = ...) -> None: ...

class DeregisterNodeResponse(_message.Message):
    __slots__ = ("deregistered",)
    DEREGISTERED_FIELD_NUMBER: _ClassVar[int]
    deregistered: bool
    def __init__(self, deregistered: _Optional[bool] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("live_only",)
    LIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    live_only: bool
    def __init__(self, live_only: _Optional[bool] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeRecord]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeRecord, _Mapping]]] = ...) -> None: ...

class FindNodesRequest(_message.Message):
    __slots__ = ("need", "runtime", "labels", "objects", "exclude")
    NEED_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    need: _spearlet_pb2.Resources
    runtime: str
    labels: _containers.RepeatedCompositeFieldContainer[_spearlet_pb2.KeyValue]
    objects: _containers.RepeatedScalarFieldContainer[str]
    exclude: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, need: _Optional[_Union[_spearlet_pb2.Resources, _Mapping]] = ..., runtime: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[_spearlet_pb2.KeyValue, _Mapping]]] = ..., objects: _Optional[_Iterable[str]] = ..., exclude: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeCandidate(_message.Message):
    __slots__ = ("node", "objects_held")
    NODE_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_HELD_FIELD_NUMBER: _ClassVar[int]
    node: NodeRecord
    objects_held: int
    def __init__(self, node: _Optional[_Union[NodeRecord, _Mapping]] = ..., objects_held: _Optional[int] = ...) -> None: ...

class FindNodesResponse(_message.Message):
    __slots__ = ("candidates", "could_ever_fit", "reason", "no_live_node")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    COULD_EVER_FIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NO_LIVE_NODE_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[NodeCandidate]
    could_ever_fit: bool
    reason: str
    no_live_node: bool
    def __init__(self, candidates: _Optional[_Iterable[_Union[NodeCandidate, _Mapping]]] = ..., could_ever_fit: _Optional[bool] = ..., reason: _Optional[str] = ..., no_live_node: _Optional[bool] = ...) -> None: ...

class ReportTaskRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _spearlet_pb2.TaskInfo
    def __init__(self, task: _Optional[_Union[_spearlet_pb2.TaskInfo, _Mapping]] = ...) -> None: ...

class ReportTasksRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_spearlet_pb2.TaskInfo]
    def __init__(self, tasks: _Optional[_Iterable[_Union[_spearlet_pb2.TaskInfo, _Mapping]]] = ...) -> None: ...

class ReportTasksResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LookupTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ListClusterTasksRequest(_message.Message):
    __slots__ = ("state", "limit", "node", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: _spearlet_pb2.TaskState
    limit: int
    node: str
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[_spearlet_pb2.TaskState, str]] = ..., limit: _Optional[int] = ..., node: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListClusterTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_spearlet_pb2.TaskInfo]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[_spearlet_pb2.TaskInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ObjectLocation(_message.Message):
    __slots__ = ("key", "node", "version", "size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    key: str
    node: str
    version: int
    size: int
    def __init__(self, key: _Optional[str] = ..., node: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class RemoveObjectLocationRequest(_message.Message):
    __slots__ = ("key", "node")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    key: str
    node: str
    def __init__(self, key: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class RemoveObjectLocationResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class LocateObjectRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class LocateObjectResponse(_message.Message):
    __slots__ = ("locations",)
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    locations: _containers.RepeatedCompositeFieldContainer[ObjectLocation]
    def __init__(self, locations: _Optional[_Iterable[_Union[ObjectLocation, _Mapping]]] = ...) -> None: ...

class ObjectHolder(_message.Message):
    __slots__ = ("node", "address", "live")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    live: bool
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., live: _Optional[bool] = ...) -> None: ...

class ObjectRecord(_message.Message):
    __slots__ = ("key", "version", "size", "holders", "refs", "pinned", "created_at", "updated_at", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    size: int
    holders: _containers.RepeatedCompositeFieldContainer[ObjectHolder]
    refs: int
    pinned: bool
    created_at: float
    updated_at: float
    value: bytes
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ..., holders: _Optional[_Iterable[_Union[ObjectHolder, _Mapping]]] = ..., refs: _Optional[int] = ..., pinned: _Optional[bool] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., value: _Optional[bytes] = ...) -> None: ...

class CommitObjectRequest(_message.Message):
    __slots__ = ("key", "node", "address", "size", "expected_version", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    node: str
    address: str
    size: int
    expected_version: int
    value: bytes
    def __init__(self, key: _Optional[str] = ..., node: _Optional[str] = ..., address: _Optional[str] = ..., size: _Optional[int] = ..., expected_version: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class CommitObjectsRequest(_message.Message):
    __slots__ = ("commits",)
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    commits: _containers.RepeatedCompositeFieldContainer[CommitObjectRequest]
    def __init__(self, commits: _Optional[_Iterable[_Union[CommitObjectRequest, _Mapping]]] = ...) -> None: ...

class CommitOutcome(_message.Message):
    __slots__ = ("record", "error_code", "error")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    record: ObjectRecord
    error_code: str
    error: str
    def __init__(self, record: _Optional[_Union[ObjectRecord, _Mapping]] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class CommitObjectsResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[CommitOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[CommitOutcome, _Mapping]]] = ...) -> None: ...

class LookupObjectRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class HoldObjectRequest(_message.Message):
    __slots__ = ("key", "node", "address", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    node: str
    address: str
    version: int
    def __init__(self, key: _Optional[str] = ..., node: _Optional[str] = ..., address: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ChangeObjectRequest(_message.Message):
    __slots__ = ("key", "change", "count", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    change: str
    count: int
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., change: _Optional[str] = ..., count: _Optional[int] = ..., expected_version: _Optional[int] = ...) -> None: ...

class ChangeObjectResponse(_message.Message):
    __slots__ = ("record", "deleted")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    record: ObjectRecord
    deleted: bool
    def __init__(self, record: _Optional[_Union[ObjectRecord, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class ListObjectRecordsRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class ListObjectRecordsResponse(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectRecord]
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectRecord, _Mapping]]] = ...) -> None: ...

class AnnouncedObject(_message.Message):
    __slots__ = ("key", "version", "size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    size: int
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class AnnounceObjectsRequest(_message.Message):
    __slots__ = ("node", "address", "held")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    held: _containers.RepeatedCompositeFieldContainer[AnnouncedObject]
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., held: _Optional[_Iterable[_Union[AnnouncedObject, _Mapping]]] = ...) -> None: ...

class AnnounceObjectsResponse(_message.Message):
    __slots__ = ("stale", "adopted")
    STALE_FIELD_NUMBER: _ClassVar[int]
    ADOPTED_FIELD_NUMBER: _ClassVar[int]
    stale: _containers.RepeatedScalarFieldContainer[str]
    adopted: _containers.RepeatedCompositeFieldContainer[AnnouncedObject]
    def __init__(self, stale: _Optional[_Iterable[str]] = ..., adopted: _Optional[_Iterable[_Union[AnnouncedObject, _Mapping]]] = ...) -> None: ...

class CollectObjectsRequest(_message.Message):
    __slots__ = ("grace_s", "dropped")
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    grace_s: float
    dropped: _containers.RepeatedCompositeFieldContainer[AnnouncedObject]
    def __init__(self, grace_s: _Optional[float] = ..., dropped: _Optional[_Iterable[_Union[AnnouncedObject, _Mapping]]] = ...) -> None: ...

class VerifyTokenRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class VerifyTokenResponse(_message.Message):
    __slots__ = ("valid", "name", "role", "namespace")
    VALID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    name: str
    role: str
    namespace: str
    def __init__(self, valid: _Optional[bool] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class TaskSlotRequest(_message.Message):
    __slots__ = ("namespace", "task_id", "until_released")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    UNTIL_RELEASED_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    task_id: str
    until_released: bool
    def __init__(self, namespace: _Optional[str] = ..., task_id: _Optional[str] = ..., until_released: _Optional[bool] = ...) -> None: ...

class TaskSlotResponse(_message.Message):
    __slots__ = ("limited",)
    LIMITED_FIELD_NUMBER: _ClassVar[int]
    limited: bool
    def __init__(self, limited: _Optional[bool] = ...) -> None: ...

class DeleteClusterTasksRequest(_message.Message):
    __slots__ = ("task_ids", "namespace")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    namespace: str
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ..., namespace: _Optional[str] = ...) -> None: ...

class DeleteClusterTasksResponse(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class KeepTaskInputRequest(_message.Message):
    __slots__ = ("task_id", "stdin")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    stdin: bytes
    def __init__(self, task_id: _Optional[str] = ..., stdin: _Optional[bytes] = ...) -> None: ...

class KeepTaskInputResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ObjectWatchRequest(_message.Message):
    __slots__ = ("node", "ping", "ack")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    node: str
    ping: int
    ack: int
    def __init__(self, node: _Optional[str] = ..., ping: _Optional[int] = ..., ack: _Optional[int] = ...) -> None: ...

class ObjectWatchEvent(_message.Message):
    __slots__ = ("pong", "lease_s", "seq", "keys", "record")
    PONG_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    pong: int
    lease_s: float
    seq: int
    keys: _containers.RepeatedScalarFieldContainer[str]
    record: ObjectRecord
    def __init__(self, pong: _Optional[int] = ..., lease_s: _Optional[float] = ..., seq: _Optional[int] = ..., keys: _Optional[_Iterable[str]] = ..., record: _Optional[_Union[ObjectRecord, _Mapping]] = ...) -> None: ...
