"""spear: a serverless runtime for AI agents.

The public API is what ``__all__`` names; every other module may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loguru import logger as _logger

from spear._api import StreamingTask, TaskHandle, TaskResult
from spear._local import LocalNode
from spear.config import Settings
from spear.core.models import DirMapping, FunctionSpec, Resources, Runtime, Task, TaskState
from spear.core.node import Spearlet
from spear.core.streams import TaskStream
from spear.errors import (
    Conflict,
    InvalidArgument,
    InvalidModule,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SpearError,
    StorageBusy,
    StorageError,
    Unavailable,
)
from spear.store.objects import ObjectStore

if TYPE_CHECKING:
    from spear.client import Client

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The gRPC client loads grpclib and the generated code: only when it is asked for.
    if name == "Client":
        from spear.client import Client

        return Client
    raise AttributeError(f"module 'spear' has no attribute {name!r}")


# A library stays quiet unless its user asks; the CLI enables and routes spear's log.
_logger.disable("spear")

__all__ = [
    "Client",
    "Conflict",
    "DirMapping",
    "FunctionSpec",
    "InvalidArgument",
    "InvalidModule",
    "LocalNode",
    "NotFound",
    "ObjectStore",
    "PermissionDenied",
    "ResourceExhausted",
    "Resources",
    "Runtime",
    "Settings",
    "SpearError",
    "Spearlet",
    "StorageBusy",
    "StorageError",
    "StreamingTask",
    "Task",
    "TaskHandle",
    "TaskResult",
    "TaskState",
    "TaskStream",
    "Unavailable",
    "__version__",
]
