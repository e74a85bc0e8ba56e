"""gRPC services and stubs made from protobuf's own descriptors (protoc's `python_out`,
the one code generator: transport/_gen/pb).

protoc's Python output has the messages and each service's descriptor, not server and
client classes; these are the few lines that make them from a descriptor:

- `ServiceBase`: a service whose methods are the subclass's own, named as the RPC in
  snake case (`GetNodeInfo` -> `get_node_info`), each taking the request (or, for a
  client stream, an async iterator of requests) and returning the reply (or, for a
  server stream, yielding replies); `served()` gives them to a grpc.aio server of ours
  (transport/aio_server.py). An RPC the subclass does not define is UNIMPLEMENTED.
- `Stub`: a client of one service over a channel's `request(...)` (spear's `AioChannel`
  over grpc.aio, transport/aio_client.py): `await stub.get_node_info(request)`,
  `async for chunk in stub.run_task(request)`, `await stub.upload_artifact(chunks)`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import re
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf import message_factory  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

    from google.protobuf.descriptor import (  # type: ignore[import-untyped]
        MethodDescriptor,
        ServiceDescriptor,
    )

_CAPITAL = re.compile(r"(?<!^)(?=[A-Z])")


class Cardinality(enum.Enum):
    """Whether a method takes a stream of requests, and whether it answers with a stream
    of replies (else one message): how a call of it is made and served."""

    UNARY_UNARY = (False, False)
    UNARY_STREAM = (False, True)
    STREAM_UNARY = (True, False)
    STREAM_STREAM = (True, True)

    @property
    def client_streaming(self) -> bool:
        return bool(self.value[0])

    @property
    def server_streaming(self) -> bool:
        return bool(self.value[1])


class Method(NamedTuple):
    """One RPC of a service: its route, its Python name, and its messages."""

    route: str  # "/spear.v1.Spearlet/GetNodeInfo"
    name: str  # "get_node_info"
    cardinality: Cardinality
    request: type[Any]
    reply: type[Any]


def _cardinality(method: MethodDescriptor) -> Cardinality:
    return Cardinality((bool(method.client_streaming), bool(method.server_streaming)))


@functools.cache
def methods(service: ServiceDescriptor) -> tuple[Method, ...]:
    """The RPCs of `service`, in the order the proto declares them."""
    return tuple(
        Method(
            route=f"/{service.full_name}/{m.name}",
            name=_CAPITAL.sub("_", m.name).lower(),
            cardinality=_cardinality(m),
            request=message_factory.GetMessageClass(m.input_type),
            reply=message_factory.GetMessageClass(m.output_type),
        )
        for m in service.methods
    )


@dataclass(frozen=True, slots=True)
class ServedMethod:
    """One method as a server of ours serves it (transport/aio_server.py): `handler` takes
    the request (for a client stream, an async iterator of requests) and the call's
    grpc.aio context, and returns the reply (for a server stream, an async iterator of
    replies, or a coroutine that writes them to the context); `decode` and `encode` are
    its messages' protobuf parse and serialise."""

    handler: Callable[[Any, Any], Any]
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]
    client_streaming: bool = False
    server_streaming: bool = False


def served(
    descriptor: ServiceDescriptor, lookup: Callable[[Method], Any]
) -> dict[str, ServedMethod]:
    """The methods of `descriptor` that `lookup` finds a handler for (None: not served, so
    the server answers UNIMPLEMENTED), by route."""
    found = {}
    for method in methods(descriptor):
        handler = lookup(method)
        if handler is not None:
            found[method.route] = ServedMethod(
                handler,
                decode=method.request.FromString,
                encode=method.reply.SerializeToString,
                client_streaming=method.cardinality.client_streaming,
                server_streaming=method.cardinality.server_streaming,
            )
    return found


def _without_context(func: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda request, _context: func(request)


class ServiceBase:
    """A service of the RPCs of `SERVICE` that the subclass defines (see the module's
    docstring); `served()` is what a server of ours serves of it."""

    SERVICE: ServiceDescriptor

    def served(self) -> dict[str, ServedMethod]:
        def lookup(method: Method) -> Any:
            func = getattr(self, method.name, None)
            return None if func is None else _without_context(func)

        return served(self.SERVICE, lookup)


class Stub:
    """A client of `service` over `channel`: one async method per RPC (see the module's
    docstring); `timeout` (seconds) unless a call gives its own."""

    def __init__(self, channel: Any, service: ServiceDescriptor, *, timeout: float | None = None):
        self.channel = channel
        self.timeout = timeout
        for method in methods(service):
            setattr(self, method.name, functools.partial(_CALLS[method.cardinality], self, method))

    def _open(self, method: Method, timeout: float | None, metadata: Any) -> Any:
        """One call of `method` (`AioChannel.request`: a stream to use in `async with`),
        with this stub's timeout unless the call gives its own."""
        return self.channel.request(
            method.route, method.cardinality, method.request, method.reply,
            timeout=self.timeout if timeout is None else timeout, metadata=metadata,
        )  # fmt: skip

    def __getattr__(self, name: str) -> Any:  # (for type checkers: every RPC is a method)
        raise AttributeError(name)


async def _call_unary_unary(
    stub: Stub,
    method: Method,
    request: Any,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 (the stubs' call options)
    metadata: Any = None,
) -> Any:
    async with stub._open(method, timeout, metadata) as stream:
        await stream.send_message(request, end=True)
        reply = await stream.recv_message()
    assert reply is not None
    return reply


async def _call_unary_stream(
    stub: Stub,
    method: Method,
    request: Any,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 (the stubs' call options)
    metadata: Any = None,
) -> AsyncIterator[Any]:
    async with stub._open(method, timeout, metadata) as stream:
        await stream.send_message(request, end=True)
        async for reply in stream:
            yield reply


async def _send_all(stream: Any, requests: Iterable[Any] | AsyncIterable[Any]) -> None:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            await stream.send_message(request)
    else:
        for request in requests:
            await stream.send_message(request)
    await stream.end()


async def _call_stream_unary(
    stub: Stub,
    method: Method,
    requests: Iterable[Any] | AsyncIterable[Any],
    *,
    timeout: float | None = None,  # noqa: ASYNC109 (the stubs' call options)
    metadata: Any = None,
) -> Any:
    async with stub._open(method, timeout, metadata) as stream:
        await stream.send_request()
        await _send_all(stream, requests)
        reply = await stream.recv_message()
    assert reply is not None
    return reply


async def _call_stream_stream(
    stub: Stub,
    method: Method,
    requests: Iterable[Any] | AsyncIterable[Any],
    *,
    timeout: float | None = None,  # noqa: ASYNC109 (the stubs' call options)
    metadata: Any = None,
) -> AsyncIterator[Any]:
    async with stub._open(method, timeout, metadata) as stream:
        await stream.send_request()
        sending = asyncio.ensure_future(_send_all(stream, requests))
        try:
            async for reply in stream:
                yield reply
        except BaseException:
            sending.cancel()
            raise


_CALLS: dict[Cardinality, Callable[..., Any]] = {
    Cardinality.UNARY_UNARY: _call_unary_unary,
    Cardinality.UNARY_STREAM: _call_unary_stream,
    Cardinality.STREAM_UNARY: _call_stream_unary,
    Cardinality.STREAM_STREAM: _call_stream_stream,
}
