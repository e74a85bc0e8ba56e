"""A ModelBackend for any OpenAI-compatible HTTP endpoint (OpenAI, vLLM, llama.cpp's
server, Ollama, ...): `POST {base_url}/chat/completions` (streamed as server-sent events)
and `POST {base_url}/embeddings`.

The API key is given to the constructor (the router reads it from the environment
variable the configuration names) and only ever travels in the Authorization header: it
is in no repr, log line or error message.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

import httpx

from spear.errors import DeadlineExceeded, InvalidArgument, PermissionDenied, Unavailable
from spear.models.base import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    EmbeddingResponse,
    ModelBackend,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

_MAX_ERROR_TEXT = 300


class OpenAIBackend(ModelBackend):
    """Chat and embeddings through an OpenAI-compatible HTTP API."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.name!r}, {self.base_url!r})"

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """httpx's errors as spear's, each naming the backend (never its headers)."""
        where = f"model backend {self.name!r} ({self.base_url})"
        try:
            yield
        except httpx.TimeoutException:
            raise DeadlineExceeded(f"{where} did not answer in time") from None
        except httpx.ConnectError as exc:
            raise Unavailable(f"{where} is down: {_reason(exc)}") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"{where} failed: {_reason(exc)}") from None

    async def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        await response.aread()
        detail = _error_detail(response)
        where = f"model backend {self.name!r}"
        status = response.status_code
        if status in (401, 403):
            raise PermissionDenied(f"{where} refused the credential: {detail}")
        if status == 404:
            raise InvalidArgument(f"{where} has no such model or path: {detail}")
        if 400 <= status < 500 and status != 429:
            raise InvalidArgument(f"{where} rejected the request: {detail}")
        raise Unavailable(f"{where} answered HTTP {status}: {detail}")

    async def chat(self, target: str, request: ChatRequest, max_tokens: int) -> ChatResponse:
        with self._translate():
            response = await self._client.post(
                "chat/completions", json=request.body(target, max_tokens)
            )
            await self._check(response)
            data = _json(response, self.name)
        return ChatResponse.from_openai(data, target)

    async def stream_chat(
        self, target: str, request: ChatRequest, max_tokens: int
    ) -> AsyncIterator[ChatChunk]:
        body = {**request.body(target, max_tokens), "stream": True}
        with self._translate():
            async with self._client.stream("POST", "chat/completions", json=body) as response:
                await self._check(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # comments, event names, blank separators
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    try:
                        data = json.loads(payload)
                    except ValueError:
                        raise Unavailable(
                            f"model backend {self.name!r} sent a malformed event"
                        ) from None
                    if isinstance(data, dict) and "error" in data:
                        raise Unavailable(f"model backend {self.name!r}: {data['error']}")
                    yield ChatChunk.from_openai(data)

    async def embed(self, target: str, inputs: Sequence[str]) -> EmbeddingResponse:
        with self._translate():
            response = await self._client.post(
                "embeddings", json={"model": target, "input": list(inputs)}
            )
            await self._check(response)
            data = _json(response, self.name)
        try:
            rows = sorted(data["data"], key=lambda d: int(d.get("index", 0)))
            vectors = tuple(_pooled(row["embedding"]) for row in rows)
            tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
        except (KeyError, TypeError, ValueError) as exc:
            raise Unavailable(
                f"model backend {self.name!r} sent malformed embeddings: {exc}"
            ) from None
        return EmbeddingResponse(target, vectors, tokens)

    async def aclose(self) -> None:
        await self._client.aclose()


def _pooled(embedding: list[Any]) -> tuple[float, ...]:
    """One vector. A server without pooling (llama.cpp's, for a generative model) sends
    one vector per token: their mean is the sentence's."""
    if embedding and isinstance(embedding[0], list):
        count = len(embedding)
        return tuple(sum(column) / count for column in zip(*embedding, strict=True))
    return tuple(float(x) for x in embedding)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:_MAX_ERROR_TEXT]


def _json(response: httpx.Response, name: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise Unavailable(f"model backend {name!r} did not answer JSON") from None
    if not isinstance(data, dict):
        raise Unavailable(f"model backend {name!r} did not answer a JSON object")
    return data


def _error_detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:_MAX_ERROR_TEXT] or f"HTTP {response.status_code}"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:_MAX_ERROR_TEXT]
    if isinstance(data, dict) and data.get("detail"):
        return json.dumps(data["detail"])[:_MAX_ERROR_TEXT]
    return json.dumps(data)[:_MAX_ERROR_TEXT]
