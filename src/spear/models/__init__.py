"""AI models for agents: the ModelBackend seam, its backends, and the router (docs/models.md)."""

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
