"""How spear calls a grpc.aio server of ours (transport/aio_server.py): a channel with the
caller's credentials (the member's certificate over mutual TLS, or a token) and the
message size limit, and unary calls whose failures come back as spear's own errors (the
`spear-error-code` trailer, else the status, as `_status.error_from_grpc` reads them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from spear.transport._status import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ERROR_CODE_KEY,
    LimitedCodec,
    RpcError,
    error_from_grpc,
    received_error_code,
    unreachable,
)
from spear.transport.aio_server import channel_options
from spear.transport.aio_streams import AioCallStream, multicallable
from spear.transport.auth import METADATA_KEY, NAMESPACE_KEY
from spear.transport.member_proof import METADATA_KEY as MEMBER_KEY

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import grpc
    import grpc.aio

    from spear.errors import SpearError
    from spear.transport.channels import Credentials
    from spear.transport.member_proof import MemberProof
    from spear.transport.services import Cardinality

Request = TypeVar("Request")
Response = TypeVar("Response")


def channel_credentials(credentials: Credentials) -> grpc.ChannelCredentials | None:
    """TLS verifying the server against the cluster's CA, presenting the member's
    certificate when it has one; None for plaintext (no TLS files)."""
    import grpc

    tls = credentials.tls
    if tls is None:
        return None
    from spear.transport.tls import CA_CERT, NODE_CERT, NODE_KEY

    directory = tls.directory
    if not tls.present:
        return grpc.ssl_channel_credentials(root_certificates=(directory / CA_CERT).read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=(directory / CA_CERT).read_bytes(),
        private_key=(directory / NODE_KEY).read_bytes(),
        certificate_chain=(directory / NODE_CERT).read_bytes(),
    )


class AioChannel:
    """One connection to `address` (made on the first call, kept for the next ones)."""

    def __init__(
        self,
        address: str,
        credentials: Credentials,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        traced: bool = False,
        name: str | None = None,
    ) -> None:
        import grpc.aio

        self.address = address
        self.name = name or address  # what errors call the server ("SMS HOST:PORT")
        self.traced = traced  # send the current `traceparent` with each call
        self._codec = LimitedCodec(max_message_bytes)
        options = channel_options(max_message_bytes)
        secure = channel_credentials(credentials)
        self._channel = (
            grpc.aio.insecure_channel(address, options=options)
            if secure is None
            else grpc.aio.secure_channel(address, secure, options=options)
        )
        self._fixed: tuple[tuple[str, str], ...] = ()  # sent with every call
        # A member proves who it is in each call: the servers that take users too cannot
        # ask for its certificate at the handshake (transport/member_proof.py).
        self._proof: MemberProof | None = None
        if credentials.tls is not None and credentials.tls.present:
            self._proof = credentials.tls.member_proof()
        if credentials.token:
            self._fixed += ((METADATA_KEY, f"Bearer {credentials.token}"),)
        if credentials.namespace:
            self._fixed += ((NAMESPACE_KEY, credentials.namespace),)
        self._methods: dict[str, UnaryCall[Any, Any]] = {}
        self._callables: dict[tuple[str, Cardinality], Any] = {}

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call sends: the token and namespace, and a member's current proof."""
        if self._proof is None:
            return self._fixed
        return (*self._fixed, (MEMBER_KEY, self._proof.value()))

    @classmethod
    def to(
        cls,
        listen: str,
        credentials: Credentials,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        name: str | None = None,
    ) -> AioChannel:
        """A channel to an address as users and settings write it (`HOST:PORT`, `[V6]:PORT`,
        `:PORT`): checked here, one clear error if malformed."""
        from spear.transport.serving import format_address, parse_listen

        return cls(
            format_address(*parse_listen(listen)),
            credentials,
            max_message_bytes=max_message_bytes,
            name=name,
        )

    def unary(
        self,
        method: str,
        encode: Callable[[Request], bytes],
        decode: Callable[[bytes], Response],
    ) -> UnaryCall[Request, Response]:
        """A callable for the unary `method` (`/package.Service/Method`) on this channel."""
        found = self._methods.get(method)
        if found is None:
            found = self._methods[method] = UnaryCall(
                self,
                self._channel.unary_unary(
                    method, request_serializer=encode, response_deserializer=decode
                ),
            )
        return found

    def request(
        self,
        route: str,
        cardinality: Cardinality,
        request_type: type[Any],
        reply_type: type[Any],
        *,
        timeout: float | None = None,
        deadline: Any = None,
        metadata: Any = None,
    ) -> AioCallStream:
        """One call of any cardinality, a stream to use in `async with`: what spear's
        stubs call (`services.Stub(channel, SERVICE)`); transport/aio_streams.py."""
        if deadline is not None:
            remaining = deadline.time_remaining()
            timeout = remaining if timeout is None else min(timeout, remaining)
        sent = self._metadata
        if self.traced:
            from spear.tracing.base import TRACEPARENT_KEY, current_traceparent

            value = current_traceparent.get()
            if value:
                sent = (*sent, (TRACEPARENT_KEY, value))
        if metadata:
            items = metadata.items() if hasattr(metadata, "items") else metadata
            sent = (*sent, *((str(k), str(v)) for k, v in items))
        key = (route, cardinality)
        method = self._callables.get(key)
        if method is None:
            method = self._callables[key] = multicallable(self._channel, route, cardinality)
        return AioCallStream(
            method,
            self.name,
            route,
            cardinality,
            reply_type,
            self._codec,
            timeout=timeout,
            metadata=sent,
        )

    async def ready(self) -> None:
        """Connected (the TLS handshake done): the next call need not wait for it."""
        await self._channel.channel_ready()

    async def connected(self, within_s: float) -> bool:
        """Whether the channel is connected, or connects within `within_s`; False at once
        when its last attempt failed (nothing is sent either way)."""
        import grpc

        state = self._channel.get_state(try_to_connect=True)
        if state is grpc.ChannelConnectivity.READY:
            return True
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            return False
        with anyio.move_on_after(within_s):
            await self._channel.channel_ready()
            return True
        return False

    async def aclose(self) -> None:
        await self._channel.close()


class UnaryCall(Generic[Request, Response]):
    def __init__(self, channel: AioChannel, call: Any) -> None:
        self._channel = channel
        self._call = call

    async def __call__(
        self,
        request: Request,
        *,
        deadline_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Response:
        """The answer; a failure as the SpearError the server raised (else its status's)."""
        sent = self._channel._metadata
        if metadata:
            sent = (*sent, *metadata.items())
        import grpc.aio

        try:
            answer: Response = await self._call(request, timeout=deadline_s, metadata=sent or None)
        except grpc.aio.AioRpcError as exc:
            raise error_from_aio(exc, self._channel.address) from None
        return answer


def error_from_aio(exc: grpc.aio.AioRpcError, address: str) -> SpearError:
    """A failed grpc.aio call as spear's error: the trailer's code decides, else the
    status (the same mapping as a stub's calls)."""
    import grpc

    trailers = exc.trailing_metadata() or ()
    code = next((str(v) for k, v in trailers if k == ERROR_CODE_KEY), None)
    if code is None and exc.code() is grpc.StatusCode.UNAVAILABLE and exc.details():
        return unreachable(address, exc.details())
    received_error_code.set(code)
    return error_from_grpc(RpcError(exc.code(), exc.details() or None), address)
