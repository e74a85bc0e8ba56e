"""spear: a serverless runtime for AI agents.

The public API is what ``__all__`` names; every other module may change.
"""

from __future__ import annotations

TYPE_CHECKING = False  # (typing.TYPE_CHECKING: `from spear import agent` imports no typing)
if TYPE_CHECKING:
    from typing import Any

    from spear.config import Settings
    from spear.core.models import (
        DirMapping,
        FunctionSpec,
        LogChunk,
        NodeInfo,
        ObjectInfo,
        Resources,
        Runtime,
        Task,
        TaskResult,
        TaskState,
    )
    from spear.core.node import Spearlet
    from spear.core.streams import TaskStream
    from spear.errors import (
        Conflict,
        DeadlineExceeded,
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
    from spear.node.api import NodeAPI, StreamingTask, TaskHandle
    from spear.node.assembly import join_cluster, serve_sms
    from spear.node.client import Client
    from spear.node.cluster import ClusterNode
    from spear.node.local import LocalNode
    from spear.store.objects import ObjectStore

# Public names are loaded on first use (PEP 562), so `from spear import agent` in a process
# agent, or `spear run`, pays only for what it touches, not for the whole node and gRPC.
_WHERE = {
    "NodeAPI": "spear.node.api",
    "StreamingTask": "spear.node.api",
    "TaskHandle": "spear.node.api",
    "LogChunk": "spear.core.models",
    "NodeInfo": "spear.core.models",
    "ObjectInfo": "spear.core.models",
    "TaskResult": "spear.core.models",
    "LocalNode": "spear.node.local",
    "Client": "spear.node.client",
    "ClusterNode": "spear.node.cluster",
    "join_cluster": "spear.node.assembly",
    "serve_sms": "spear.node.assembly",
    "Settings": "spear.config",
    "DirMapping": "spear.core.models",
    "FunctionSpec": "spear.core.models",
    "Resources": "spear.core.models",
    "Runtime": "spear.core.models",
    "Task": "spear.core.models",
    "TaskState": "spear.core.models",
    "Spearlet": "spear.core.node",
    "TaskStream": "spear.core.streams",
    "ObjectStore": "spear.store.objects",
    **{
        name: "spear.errors"
        for name in (
            "Conflict",
            "DeadlineExceeded",
            "InvalidArgument",
            "InvalidModule",
            "NotFound",
            "PermissionDenied",
            "ResourceExhausted",
            "SpearError",
            "StorageBusy",
            "StorageError",
            "Unavailable",
        )
    },
}
_quieted = False


def _quiet() -> None:
    # A library stays quiet unless its user asks; the CLI enables and routes spear's log.
    global _quieted
    if not _quieted:
        from loguru import logger

        logger.disable("spear")
        _quieted = True


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the installed distribution's, read once, on demand
        from importlib.metadata import version

        globals()[name] = value = version("spear")
        return value
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'spear' has no attribute {name!r}")
    import importlib

    _quiet()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE, "__version__"])


__all__ = [
    "Client",
    "ClusterNode",
    "Conflict",
    "DeadlineExceeded",
    "DirMapping",
    "FunctionSpec",
    "InvalidArgument",
    "InvalidModule",
    "join_cluster",
    "LocalNode",
    "LogChunk",
    "NodeAPI",
    "NodeInfo",
    "NotFound",
    "ObjectInfo",
    "ObjectStore",
    "PermissionDenied",
    "ResourceExhausted",
    "Resources",
    "Runtime",
    "serve_sms",
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
