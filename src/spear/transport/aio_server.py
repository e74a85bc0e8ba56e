"""A grpc.aio server for the calls whose transport cost counts most (issue 17: the
node-to-node ForwardTasks), on a port of its own beside the node's grpclib server.

grpc.aio cannot share a port with grpclib, and moving every service is a larger step:
this server carries only unary methods registered with it, with what the grpclib
server gives every call (transport/serving.py):

- mutual TLS with the cluster's certificates: a caller must present a certificate of the
  cluster's CA at the handshake (the methods served here are members' only), and the
  same `Authorizer` then decides the call (`auth.admit`: role per method, namespace);
- the message size limit, as channel options (a larger message is RESOURCE_EXHAUSTED);
- the error mapping: a SpearError is its status, message and `spear-error-code` trailer
  (`_status.py`), a bug one INTERNAL call, logged;
- a caller's `traceparent` made current in the handler when the node traces.

Measured (benchmarks/grpc_stacks.py): grpc.aio's C-core HTTP/2 takes a fraction of
grpclib's CPU per call; docs/benchmarks.md, "ForwardTasks on grpc.aio".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from spear._logging import logger
from spear.errors import SpearError
from spear.store.diskspace import no_space
from spear.transport._status import DEFAULT_MAX_MESSAGE_BYTES, ERROR_CODE_KEY, status_for
from spear.transport.serving import format_address, parse_listen

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    import grpc
    import grpc.aio

    from spear.transport.auth import Authorizer
    from spear.transport.serving import Security
    from spear.transport.tls import TlsFiles

Request = TypeVar("Request")
Response = TypeVar("Response")


@dataclass(frozen=True, slots=True)
class UnaryMethod(Generic[Request, Response]):
    """One unary method: its handler and its messages' (protobuf's) decode and encode."""

    handler: Callable[[Request], Awaitable[Response]]
    decode: Callable[[bytes], Request]
    encode: Callable[[Response], bytes]


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """What a server and a channel of ours set: the message size limit either way."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Serve TLS with the member's certificate; require and verify a caller's against the
    cluster's CA bundle (several CAs during a rotation)."""
    import grpc

    from spear.transport.tls import CA_CERT, NODE_CERT, NODE_KEY

    directory = tls.directory
    return grpc.ssl_server_credentials(
        [((directory / NODE_KEY).read_bytes(), (directory / NODE_CERT).read_bytes())],
        root_certificates=(directory / CA_CERT).read_bytes(),
        require_client_auth=True,
    )


class _Peer:
    """A grpc.aio caller as the Authorizer reads a grpclib one: `cert()`, the verified
    certificate's subject (grpc checked it against the CA at the handshake)."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._auth = context.auth_context()

    def cert(self) -> dict[str, Any] | None:
        names = self._auth.get("x509_common_name") or ()
        if not names:
            return None
        name = names[0].decode() if isinstance(names[0], bytes) else str(names[0])
        return {"subject": ((("commonName", name),),)}


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, Any]:
    return {key: value for key, value in context.invocation_metadata() or ()}


class AioServer:
    """`methods` (full names, `/package.Service/Method`) served by grpc.aio on one port,
    admitting callers by `security`. `start` binds and reports the address; `close` is
    safe twice."""

    def __init__(
        self,
        methods: Mapping[str, UnaryMethod[Any, Any]],
        *,
        name: str,
        security: Security,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        traced: bool = False,
    ) -> None:
        self.methods = dict(methods)
        self.name = name
        self.security = security
        self.max_message_bytes = max_message_bytes
        self.traced = traced
        self._server: grpc.aio.Server | None = None
        self.address: str | None = None

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        import grpc

        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for full, method in self.methods.items():
            service, _, short = full.strip("/").partition("/")
            # (bytes in: decoded in the guard, after the caller is admitted, so a malformed
            # message is INVALID_ARGUMENT, as grpclib's codec answers, not grpc's INTERNAL)
            by_service.setdefault(service, {})[short] = grpc.unary_unary_rpc_method_handler(
                self._guarded(full, method), response_serializer=method.encode
            )
        return [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()]

    def _guarded(
        self, full: str, method: UnaryMethod[Any, Any]
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        """The call admitted (or refused) as the grpclib server admits it, then run; a
        SpearError answered with its status and code; every call logged."""
        authorizer = self.security.authorizer
        traced = self.traced

        async def handle(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            outcome = "OK"
            try:
                metadata = _metadata(context)
                if authorizer is not None:
                    await _admit(authorizer, full, metadata, context)
                if traced:
                    _adopt_traceparent(metadata)
                return await method.handler(_decoded(method, data))
            except SpearError as exc:
                outcome = exc.code
                await _abort(context, exc)
            except Exception as exc:  # a bug: one failed call, logged; the node serves on
                full_disk = no_space(exc)
                if full_disk is not None:  # a full disk is a limit reached, not a bug
                    outcome = full_disk.code
                    await _abort(context, full_disk)
                outcome = "internal"
                logger.exception("rpc {} failed", full)
                await _abort_internal(context, exc)
            finally:
                logger.debug(
                    "rpc {} {} in {:.2f} ms (grpc.aio)",
                    full,
                    outcome,
                    (time.perf_counter() - start) * 1e3,
                )

        return handle

    async def start(self, listen: str) -> str:
        """Bind `listen` (port 0 picks a free port) and serve; returns the bound address."""
        import grpc
        import grpc.aio

        self.security.check_listen(listen)
        host, port = parse_listen(listen)
        options = [
            *channel_options(self.max_message_bytes),
            ("grpc.so_reuseport", 0),  # (grpc's default would let another process share it)
        ]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers(self._handlers())
        target = format_address(host, port)
        try:
            if self.security.tls is None:
                bound = server.add_insecure_port(target)
            else:
                bound = server.add_secure_port(target, server_credentials(self.security.tls))
        except RuntimeError as exc:
            from spear.errors import InvalidArgument

            raise InvalidArgument(f"cannot listen on {target}: {exc}") from None
        await server.start()
        self._server = server
        self.address = format_address(host, bound)
        logger.info("serving {} (grpc.aio) on {}", self.name, self.address)
        return self.address

    async def close(self, grace_s: float | None = None) -> None:
        """Stop accepting calls and end the running ones (after `grace_s`). Safe twice."""
        server, self._server, self.address = self._server, None, None
        if server is not None:
            await server.stop(grace_s)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _decoded(method: UnaryMethod[Request, Response], data: bytes) -> Request:
    try:
        return method.decode(data)
    except Exception as exc:  # whatever the bytes made the decoder trip on
        from spear.errors import InvalidArgument

        raise InvalidArgument(f"malformed request message: {exc}") from None


async def _admit(
    authorizer: Authorizer,
    method: str,
    metadata: Mapping[str, Any],
    context: grpc.aio.ServicerContext[Any, Any],
) -> None:
    from spear.errors import PermissionDenied
    from spear.transport.auth import admit

    try:
        await admit(authorizer, method, metadata, _Peer(context))
    except PermissionDenied as exc:
        logger.info("refused {}: {}", method, exc)
        raise


def _adopt_traceparent(metadata: Mapping[str, Any]) -> None:
    from spear.tracing.base import TRACEPARENT_KEY, current_traceparent, trace_id_of

    value = metadata.get(TRACEPARENT_KEY)
    if isinstance(value, str) and trace_id_of(value):
        current_traceparent.set(value)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: SpearError) -> None:
    import grpc

    status = grpc.StatusCode[status_for(error).name]  # (the same names as grpclib's)
    await context.abort(status, str(error), trailing_metadata=((ERROR_CODE_KEY, error.code),))


async def _abort_internal(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    import grpc

    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error: {type(exc).__name__}: {exc}",
        trailing_metadata=((ERROR_CODE_KEY, "internal"),),
    )
