"""Calls on a grpc.aio channel in the shape spear's stubs (transport/services.py) and
its own callers use: an async context manager with `send_message`, `recv_message`,
`end`, `cancel` and `async for` (`AioChannel.request`, transport/aio_client.py), with
protobuf's own messages. Each call keeps:

- the message size limit both ways (encoded and decoded here by `LimitedCodec`: an
  "exceeds the limit" refusal before a byte is sent, and grpc's own limit on what it
  receives);
- the caller's token, namespace and (when tracing) current `traceparent` as metadata;
- a failure as the server's status (an `RpcError`) and, through `received_error_code`,
  its `spear-error-code` trailer (so `_status.client_errors` rebuilds the server's own
  SpearError); a peer it cannot reach as `Unavailable("cannot reach node ...")`;
- the deadline (`timeout`) and cancellation (`cancel()`, or leaving the block early).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Self

import grpc

from spear.errors import DeadlineExceeded, SpearError, Unavailable
from spear.transport._status import (
    ERROR_CODE_KEY,
    LimitedCodec,
    RpcError,
    received_error_code,
    unreachable,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Sequence

    import grpc.aio

    from spear.transport.services import Cardinality

# What grpc.aio reports when a write fails because the server already ended the call.
_WRITE_LOST_STATUS = "Internal error from Core"


def multicallable(channel: grpc.aio.Channel, route: str, cardinality: Cardinality) -> Any:
    """grpc.aio's callable for `route` of `cardinality` (bytes in and out)."""
    if cardinality.client_streaming:
        if cardinality.server_streaming:
            return channel.stream_stream(route)
        return channel.stream_unary(route)
    if cardinality.server_streaming:
        return channel.unary_stream(route)
    return channel.unary_unary(route)


class AioCallStream:
    """One call of `cardinality` through `method` (grpc.aio's callable for it, from
    `multicallable`): made when the first message is sent (unary requests) or on
    entering the block (streaming ones)."""

    def __init__(
        self,
        method: Any,
        address: str,
        route: str,
        cardinality: Cardinality,
        reply_type: type[Any],
        codec: LimitedCodec,
        *,
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        self._method = method
        self._address = address
        self._route = route
        self._cardinality = cardinality
        self._reply_type = reply_type
        self._codec = codec
        self._timeout = timeout
        self._metadata = tuple(metadata)
        self._call: Any = None
        self._replied = False
        self._ended = False  # the call answered in full (or failed): nothing to cancel

    async def __aenter__(self) -> Self:
        if self._cardinality.client_streaming:
            self._call = self._method(timeout=self._timeout, metadata=self._metadata)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._call is not None and not self._ended:
            self._call.cancel()  # (left early: the server's handler is cancelled too)

    async def send_request(self) -> None:
        """(Nothing to do: grpc.aio sends the headers with the call's first message.)"""

    async def send_message(self, message: Any, *, end: bool = False) -> None:
        data = self._encode(message)
        if not self._cardinality.client_streaming:
            if self._call is not None:
                raise SpearError(f"{self._route} takes one request message")
            self._call = self._method(data, timeout=self._timeout, metadata=self._metadata)
            return
        await self._writing(self._call.write(data))
        if end:
            await self._writing(self._call.done_writing())

    async def end(self) -> None:
        if self._cardinality.client_streaming and self._call is not None:
            await self._writing(self._call.done_writing())

    async def _writing(self, step: Awaitable[None]) -> None:
        """A write, or the status that ended the call under it: a server that refuses a
        streamed request (its caller unadmitted, say) answers before reading it, and
        grpc.aio's write then fails with a status of its own ("Internal error from
        Core") where the server's is the one to report."""
        import grpc.aio

        try:
            await step
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            self._ended = True
            code = await self._call.code()
            details = await self._call.details()
            trailers = await self._call.trailing_metadata()
            if code is grpc.StatusCode.INTERNAL and details == _WRITE_LOST_STATUS:
                raise await self._why_ended() from None
            with self._translated():
                raise grpc.aio.AioRpcError(code, None, trailers, details) from None

    async def _why_ended(self) -> Exception:
        """Why the server ended a call under a write, when grpc.aio lost its answer
        (grpc/grpc#36066: a write failing after the server's status replaces that status
        with INTERNAL "Internal error from Core"): the same call made again with no
        request message, which sends nothing that could fail, and whose refusal (the
        caller unadmitted) is the one the server gave. spear's client-streaming methods
        change nothing on an empty stream (they refuse it as INVALID_ARGUMENT)."""
        import grpc.aio

        again = self._method(timeout=self._timeout, metadata=self._metadata)
        try:
            await again.done_writing()
            await (again.read() if self._cardinality.server_streaming else again)
        except grpc.aio.AioRpcError as exc:
            if exc.code().name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                try:
                    with self._translated():
                        raise exc
                except Exception as translated:  # (RpcError or SpearError: either way)
                    return translated
        finally:
            again.cancel()
        return Unavailable(f"node {self._address} ended {self._route} before reading the request")

    async def recv_message(self) -> Any:
        """The next message (None at the end of a streamed answer)."""
        if self._call is None:
            raise SpearError(f"{self._route}: nothing sent yet")
        if not self._cardinality.server_streaming:
            if self._replied:
                return None
            with self._translated():
                data = await self._call
            self._replied = self._ended = True
            return self._decode(data)
        import grpc.aio

        with self._translated():
            data = await self._call.read()
        if data is grpc.aio.EOF:  # (read() raised the status had it not been OK)
            self._ended = True
            return None
        return self._decode(data)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        while True:
            message = await self.recv_message()
            if message is None:
                return
            yield message

    async def cancel(self) -> None:
        if self._call is not None and not self._ended:
            self._ended = True
            self._call.cancel()

    def _encode(self, message: Any) -> bytes:
        data: bytes = self._codec.encode(message, type(message))
        return data

    def _decode(self, data: bytes) -> Any:
        return self._codec.decode(data, self._reply_type)

    def _translated(self) -> _Translated:
        return _Translated(self)


class _Translated:
    """grpc.aio's failures as an `RpcError` (its trailer's spear code kept in
    `received_error_code`), or as spear's own where no server answered (unreachable, or
    out of time before a status)."""

    def __init__(self, stream: AioCallStream) -> None:
        self._stream = stream

    def __enter__(self) -> None:
        received_error_code.set(None)

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        import grpc.aio

        if isinstance(exc, asyncio.CancelledError) and self._stream._ended:
            raise RpcError(grpc.StatusCode.CANCELLED, "the call was cancelled") from None
        if not isinstance(exc, grpc.aio.AioRpcError):
            return
        self._stream._ended = True
        code = exc.code().name
        trailers = exc.trailing_metadata()
        address = self._stream._address
        if _spear_code(trailers) is None:
            if code == "UNAVAILABLE":
                raise unreachable(address, exc.details() or "") from None
            if code == "DEADLINE_EXCEEDED":
                raise DeadlineExceeded(
                    f"node {address} did not answer {self._stream._route} in time"
                ) from None
        raise _status_error(exc.code(), exc.details(), trailers) from None


def _spear_code(trailers: Any) -> str | None:
    for key, value in trailers or ():
        if key == ERROR_CODE_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _status_error(status: grpc.StatusCode, details: str | None, trailers: Any) -> RpcError:
    received_error_code.set(_spear_code(trailers))
    return RpcError(status, details or None)
