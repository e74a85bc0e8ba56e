"""What the node's model calls count, for `/metrics` (web/metrics.py) and the dashboard.

One `ModelStats` per router; the router hands its calls a `CountedBackend` (the backend
seen through the stats), so each call is one `ModelCall`: it counts the request by model,
kind (chat, stream, embed) and outcome (ok, or the error's code), the tokens generated
and the seconds spent generating them (so tokens/s is their ratio), the time to the first
token of a stream, and the calls in flight (a model's load). Plain counters and the
bucket arrays of `spear.core.stats`: a few additions a call, nothing on a task's path.
The clock starts when the backend is asked (after any wait for one of its slots,
`FairLimiter`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from spear.core.stats import Histogram
from spear.models.base import ModelBackend

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from spear.models.base import ChatChunk, ChatRequest, ChatResponse, EmbeddingResponse, Usage

# Seconds: a token from a warm local model (~10 ms) to a slow remote one (minutes).
TTFT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


class ModelStats:
    """Counts by model name (the name tasks use, not the backend's)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}  # (model, kind, outcome) -> n
        self.tokens: dict[str, int] = {}  # completion tokens generated
        self.generating_s: dict[str, float] = {}  # seconds of calls that generated tokens
        self.ttft: dict[str, Histogram] = {}
        self.duration: dict[str, Histogram] = {}
        self.in_flight: dict[str, int] = {}

    def call(self, model: str, kind: str) -> ModelCall:
        return ModelCall(self, model, kind)

    def tokens_per_second(self, model: str) -> float:
        """Mean generation speed of the model's calls so far (0 before any)."""
        seconds = self.generating_s.get(model, 0.0)
        return self.tokens.get(model, 0) / seconds if seconds > 0 else 0.0

    def models(self) -> list[str]:
        return sorted({m for m, _, _ in self.requests} | set(self.in_flight))


class ModelCall:
    """One model call being counted: `first(chunk)` for each streamed piece, then
    `done(usage)` or `failed(exc)` (exactly one of them ends it)."""

    __slots__ = ("_ended", "_pieces", "_start", "kind", "model", "stats")

    def __init__(self, stats: ModelStats, model: str, kind: str) -> None:
        self.stats = stats
        self.model = model
        self.kind = kind
        self._start = time.monotonic()
        self._pieces = -1  # -1: no token yet
        self._ended = False
        stats.in_flight[model] = stats.in_flight.get(model, 0) + 1

    def piece(self, chunk: ChatChunk) -> None:
        """A streamed chunk arrived: the first with content starts the TTFT clock's end."""
        if not (chunk.content or chunk.tool_calls):
            return
        if self._pieces < 0:
            self._pieces = 0
            elapsed = time.monotonic() - self._start
            ttft = self.stats.ttft.get(self.model)
            if ttft is None:
                ttft = self.stats.ttft[self.model] = Histogram(TTFT_BUCKETS)
            ttft.observe(elapsed)
        self._pieces += 1

    def done(self, usage: Usage | None = None) -> None:
        """It ended well; `usage`: the tokens the backend reported (else the pieces)."""
        generated = usage.completion_tokens if usage is not None else max(self._pieces, 0)
        self._end("ok", generated)

    def failed(self, exc: BaseException) -> None:
        """It raised: the outcome is the spear error's code, or `cancelled` (the task
        ended, or the model's timeout struck while it waited)."""
        code = getattr(exc, "code", None)
        if code is None:
            code = "cancelled" if "Cancel" in type(exc).__name__ else "error"
        self._end(str(code), 0)

    def _end(self, outcome: str, generated: int) -> None:
        if self._ended:
            return
        self._ended = True
        stats, model = self.stats, self.model
        elapsed = time.monotonic() - self._start
        stats.in_flight[model] -= 1
        key = (model, self.kind, outcome)
        stats.requests[key] = stats.requests.get(key, 0) + 1
        duration = stats.duration.get(model)
        if duration is None:
            duration = stats.duration[model] = Histogram()
        duration.observe(elapsed)
        if generated > 0:
            stats.tokens[model] = stats.tokens.get(model, 0) + generated
            stats.generating_s[model] = stats.generating_s.get(model, 0.0) + elapsed


class CountedBackend(ModelBackend):
    """`backend` serving `model`, each call counted into `stats` (closing it is the
    router's business: `aclose` here does nothing)."""

    def __init__(self, backend: ModelBackend, model: str, stats: ModelStats) -> None:
        self.name = backend.name
        self.backend = backend
        self.model = model
        self.stats = stats

    async def chat(self, target: str, request: ChatRequest, max_tokens: int) -> ChatResponse:
        call = self.stats.call(self.model, "chat")
        try:
            response = await self.backend.chat(target, request, max_tokens)
        except BaseException as exc:
            call.failed(exc)
            raise
        call.done(response.usage)
        return response

    async def stream_chat(
        self, target: str, request: ChatRequest, max_tokens: int
    ) -> AsyncIterator[ChatChunk]:
        call = self.stats.call(self.model, "stream")
        usage = None
        chunks = self.backend.stream_chat(target, request, max_tokens)
        try:
            async for chunk in chunks:
                call.piece(chunk)
                usage = chunk.usage or usage
                yield chunk
        except GeneratorExit:  # the caller stopped reading: what came is counted
            raise
        except BaseException as exc:
            call.failed(exc)
            raise
        finally:
            call.done(usage)  # (nothing if it failed)
            with anyio.CancelScope(shield=True):
                await chunks.aclose()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        return None

    async def embed(self, target: str, inputs: Sequence[str]) -> EmbeddingResponse:
        call = self.stats.call(self.model, "embed")
        try:
            response = await self.backend.embed(target, inputs)
        except BaseException as exc:
            call.failed(exc)
            raise
        call.done(None)
        return response
