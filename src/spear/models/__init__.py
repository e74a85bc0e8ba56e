"""AI models for agents: the ModelBackend seam, its backends, and the router (docs/models.md).

Names load on first use, so a node that asks no model pays nothing to import them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spear.models.base import (
        ChatAccumulator,
        ChatChunk,
        ChatRequest,
        ChatResponse,
        EmbeddingResponse,
        ModelBackend,
        ToolCall,
        Usage,
    )
    from spear.models.limiter import FairLimiter
    from spear.models.router import ModelConfig, ModelRouter, RoutingConfig

_WHERE = {
    "ChatAccumulator": "base",
    "ChatChunk": "base",
    "ChatRequest": "base",
    "ChatResponse": "base",
    "EmbeddingResponse": "base",
    "ModelBackend": "base",
    "ToolCall": "base",
    "Usage": "base",
    "FairLimiter": "limiter",
    "ModelConfig": "router",
    "ModelRouter": "router",
    "RoutingConfig": "router",
}

__all__ = [
    "ChatAccumulator",
    "ChatChunk",
    "ChatRequest",
    "ChatResponse",
    "EmbeddingResponse",
    "FairLimiter",
    "ModelBackend",
    "ModelConfig",
    "ModelRouter",
    "RoutingConfig",
    "ToolCall",
    "Usage",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'spear.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"spear.models.{module}"), name)
