from spear.transport._gen.pb import sms_pb2 as _sms_pb2
from spear.transport._gen.pb import spearlet_pb2 as _spearlet_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForwardTaskRequest(_message.Message):
    __slots__ = ("task", "artifact_digest", "stdin", "from_node")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    task: _spearlet_pb2.TaskInfo
    artifact_digest: str
    stdin: bytes
    from_node: str
    def __init__(self, task: _Optional[_Union[_spearlet_pb2.TaskInfo, _Mapping]] = ..., artifact_digest: _Optional[str] = ..., stdin: _Optional[bytes] = ..., from_node: _Optional[str] = ...) -> None: ...
