"""spear's gRPC server: grpc.aio (issue 17, item 6: one gRPC stack), carrying the methods
registered with it, of any cardinality, and giving every call the same things:

- admission first (`auth.admit`: a certificate, a token of this node or of the cluster's
  SMS; role per method, namespace), before the request's bytes are decoded; a refusal is
  UNAUTHENTICATED, PERMISSION_DENIED or INVALID_ARGUMENT, logged `refused {method}: ...`;
  the caller's principal and namespace are `auth.current_principal`/`current_namespace`
  in the handler's task;
- the error mapping: a SpearError (or a full disk) is its status, message and
  `spear-error-code` trailer (`_status.py`), a bug one INTERNAL call, logged with its
  traceback, the server serving on; a client that goes away cancels the handler;
- the message size limit, as channel options (a larger message is RESOURCE_EXHAUSTED);
- a caller's `traceparent` made current in the handler when the node traces (`traced`).

TLS: `require_client_certificate=True` (the members' ForwardTasks port, node/peer_aio.py)
admits only callers with a certificate of the cluster's CA; False (the users' ports: the
node's and the SMS's, `GrpcServer` below) serves the node's certificate
and asks for none, because grpc's Python API cannot ask for an optional one
(docs/scheduling.md); members then prove who they are in metadata (transport/auth.py).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, Any, Self

from spear._logging import logger
from spear.errors import InvalidArgument, SpearError
from spear.store.diskspace import no_space
from spear.transport._status import DEFAULT_MAX_MESSAGE_BYTES, ERROR_CODE_KEY, status_for
from spear.transport.serving import format_address, listening_socket, parse_listen
from spear.transport.standard_services import Health, reflection_methods

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    import grpc
    import grpc.aio

    from spear.transport.auth import Authorizer
    from spear.transport.services import ServedMethod, ServiceBase
    from spear.transport.serving import Security
    from spear.transport.tls import TlsFiles


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """What a server and a channel of ours set: the message size limit either way."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def server_credentials(tls: TlsFiles, *, require_client_certificate: bool) -> Any:
    """Serve TLS with the node's certificate; with `require_client_certificate`, require
    and verify a caller's against the cluster's CA bundle (several CAs during a rotation),
    else ask for none (grpc cannot ask for an optional one)."""
    import grpc

    from spear.transport.tls import CA_CERT, NODE_CERT, NODE_KEY

    directory = tls.directory
    pair = ((directory / NODE_KEY).read_bytes(), (directory / NODE_CERT).read_bytes())
    if not require_client_certificate:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=(directory / CA_CERT).read_bytes(), require_client_auth=True
    )


class _Peer:
    """A grpc.aio caller as the Authorizer reads one: `cert()`, the verified certificate's
    subject (grpc checked it against the CA at the handshake), None without one."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._auth = context.auth_context()

    def cert(self) -> dict[str, Any] | None:
        names = self._auth.get("x509_common_name") or ()
        if not names:
            return None
        # (grpc gives each property's values as bytes: `auth_context`'s own type says so)
        return {"subject": ((("commonName", names[0].decode()),),)}


class _NoCertificate:
    """The caller of a port that asks for no client certificate: none to read (and no
    `auth_context()` built per call to find that out)."""

    def cert(self) -> None:
        return None


_NO_CERTIFICATE = _NoCertificate()


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, Any]:
    return {key: value for key, value in context.invocation_metadata() or ()}


class AioServer:
    """`methods` (by route, `/package.Service/Method`) served by grpc.aio on one port,
    admitting callers by `security`. `start` binds and reports the address; `close` is
    safe twice."""

    def __init__(
        self,
        methods: Mapping[str, ServedMethod],
        *,
        name: str,
        security: Security,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        traced: bool = False,
        require_client_certificate: bool = True,
    ) -> None:
        self.methods = dict(methods)
        self.name = name
        self.security = security
        self.max_message_bytes = max_message_bytes
        self.traced = traced
        self.require_client_certificate = require_client_certificate
        self._server: grpc.aio.Server | None = None
        self.address: str | None = None

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        import grpc

        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for route, method in self.methods.items():
            service, _, short = route.strip("/").partition("/")
            # (bytes in: decoded in the guard, after the caller is admitted, so a malformed
            # message is INVALID_ARGUMENT, not grpc's INTERNAL)
            make = {
                (False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler,
            }[(method.client_streaming, method.server_streaming)]
            by_service.setdefault(service, {})[short] = make(
                self._guarded(route, method, _request_name(method)),
                response_serializer=method.encode,
            )
        return [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()]

    def _guarded(
        self, route: str, method: ServedMethod, request_name: str
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        """The call admitted (or refused), then run; a SpearError answered with its
        status and code, a bug with INTERNAL; every call logged."""
        import grpc.aio

        authorizer = self.security.authorizer
        traced = self.traced
        # Only a port that asks for client certificates has one to read.
        certificates = self.security.tls is not None and self.require_client_certificate

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            outcome = "OK"
            try:
                if authorizer is not None or traced:
                    metadata = _metadata(context)
                    if authorizer is not None:
                        peer = _Peer(context) if certificates else _NO_CERTIFICATE
                        await _admit(authorizer, route, metadata, peer)
                    if traced:
                        _adopt_traceparent(metadata)
                if method.client_streaming:
                    argument = _decoding(method.decode, request_name, request)
                else:
                    argument = _decoded(method.decode, request_name, request)
                answer = method.handler(argument, context)
                if not method.server_streaming:
                    return await answer
                if inspect.isawaitable(answer):  # (a handler that writes to the context)
                    await answer
                else:
                    try:
                        async for reply in answer:
                            await context.write(reply)
                    finally:  # (its cleanup now, in this call's task, not when collected)
                        if hasattr(answer, "aclose"):
                            await answer.aclose()
                return None
            except grpc.aio.AbortError:  # (a handler's own abort: its status stands)
                outcome = "aborted"
                raise
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except Exception as exc:
                error = exc if isinstance(exc, SpearError) else no_space(exc)
                if error is not None:  # (a full disk is a limit reached, not a bug)
                    outcome = error.code
                    await _abort(context, error)
                outcome = "internal"  # a bug: one failed call, logged; the server serves on
                logger.exception("rpc {} failed", route)
                await _abort_internal(context, exc)
            finally:
                took_ms = (time.perf_counter() - start) * 1e3
                logger.debug("rpc {} {} in {:.2f} ms on {}", route, outcome, took_ms, self.address)

        return handle

    async def start(self, listen: str) -> str:
        """Bind `listen` (port 0 picks a free port) and serve; returns the bound address."""
        import grpc
        import grpc.aio

        self.security.check_listen(listen)
        # (a port taken or a host not ours: one clear error, before grpc's own log line)
        listening_socket(listen).close()
        host, port = parse_listen(listen)
        options = [
            *channel_options(self.max_message_bytes),
            ("grpc.so_reuseport", 0),  # (grpc's default would let another process share it)
        ]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers(self._handlers())
        target = format_address(host, port)
        tls = self.security.tls
        try:
            if tls is None:
                bound = server.add_insecure_port(target)
            else:
                credentials = server_credentials(
                    tls, require_client_certificate=self.require_client_certificate
                )
                bound = server.add_secure_port(target, credentials)
        except RuntimeError as exc:
            raise InvalidArgument(f"cannot listen on {target}: {exc}") from None
        await server.start()
        self._server = server
        self.address = format_address(host, bound)
        logger.info("serving {} on {}", self.name, self.address)
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


def _request_name(method: ServedMethod) -> str:
    """The request message's name (`decode` is its class's FromString), for errors."""
    return str(getattr(getattr(method.decode, "__self__", None), "__name__", "request"))


def _decoded(decode: Callable[[bytes], Any], name: str, data: bytes) -> Any:
    try:
        return decode(data)
    except Exception as exc:  # whatever the bytes made the decoder trip on
        raise InvalidArgument(f"malformed {name} message: {exc}") from None


async def _decoding(
    decode: Callable[[bytes], Any], name: str, requests: AsyncIterator[bytes]
) -> AsyncIterator[Any]:
    async for data in requests:
        yield _decoded(decode, name, data)


async def _admit(
    authorizer: Authorizer, method: str, metadata: Mapping[str, Any], peer: Any
) -> None:
    from spear.errors import PermissionDenied
    from spear.transport.auth import admit

    try:
        await admit(authorizer, method, metadata, peer)
    except (PermissionDenied, InvalidArgument) as exc:
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


class GrpcServer:
    """`service` (with grpc.health.v1 and server reflection for it, and `others` beside it:
    `ServiceBase`s) on one port (the node's, the SMS's), admitting callers by `security`.
    `start` binds and reports the address; `close` is safe twice."""

    def __init__(
        self,
        service: ServiceBase,
        others: Sequence[ServiceBase] = (),
        *,
        name: str,
        security: Security,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.service = service
        self.name = name
        self.security = security
        self.max_message_bytes = max_message_bytes
        self.traced = False  # adopt callers' `traceparent` (set before `start`)
        services = [service, *others]
        names = [s.SERVICE.full_name for s in services]
        self._health = Health(names)
        self._methods: dict[str, ServedMethod] = {}
        for each in services:
            self._methods.update(each.served())
        self._methods.update(self._health.methods())
        self._methods.update(reflection_methods(names))
        self._server: AioServer | None = None

    @property
    def address(self) -> str | None:
        """The bound address while serving, else None."""
        return None if self._server is None else self._server.address

    async def start(self, listen: str) -> str:
        """Bind `listen` (port 0 picks a free port) and serve; returns the bound address."""
        server = AioServer(
            self._methods,
            name=self.name,
            security=self.security,
            max_message_bytes=self.max_message_bytes,
            traced=self.traced,
            # Users' port: tokens over server-authenticated TLS; members prove who they
            # are in metadata (grpc cannot ask for an optional client certificate).
            require_client_certificate=False,
        )
        await self._health.set(True)  # (each service named: SERVING, as the server is)
        address = await server.start(listen)
        self._server = server
        return address

    def set_serving(self, serving: bool) -> None:
        """What health checks answer: SERVING, or NOT_SERVING (a node draining)."""
        self._health.set_serving(serving)

    async def close(self) -> None:
        """Stop accepting calls and end the running ones. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            await server.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
