"""What every spear gRPC server shares: listening sockets and addresses, the call guard
that maps spear's errors to statuses, server reflection over our descriptors, who may
call (`Security`), and a server on one port (`GrpcServer`)."""

from __future__ import annotations

import socket
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.lowlevel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from spear._logging import logger
from spear.errors import InvalidArgument, SpearError
from spear.store.diskspace import no_space
from spear.transport._status import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ERROR_CODE_KEY,
    LimitedCodec,
    status_for,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Sequence
    from pathlib import Path

    from grpclib.server import Stream

    from spear.config import Settings
    from spear.transport.auth import Authorizer
    from spear.transport.tls import TlsFiles


def parse_listen(listen: str, flag: str = "--listen") -> tuple[str, int]:
    """'HOST:PORT', '[V6]:PORT', ':PORT' or 'PORT' -> (host, port); errors name `flag`."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "", listen
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise InvalidArgument(f"{flag} expects HOST:PORT, got {listen!r}") from None
    if not 0 <= number <= 65535:
        raise InvalidArgument(f"{flag}: port {number} is out of range")
    return host, number


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listening_socket(listen: str, flag: str = "--listen") -> socket.socket:
    """A bound, listening TCP socket for `listen` (port 0 picks a free port)."""
    host, port = parse_listen(listen, flag)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: grpclib turns Nagle off only on sockets that say TCP, and
    # with Nagle on, every small reply waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise InvalidArgument(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return sock


def guard(
    name: str, func: Callable[[Stream[Any, Any]], Awaitable[None]]
) -> Callable[[Stream[Any, Any]], Awaitable[None]]:
    """Answer a SpearError with its status and code; log every call to the system log."""

    async def handle(stream: Stream[Any, Any]) -> None:
        start = time.perf_counter()
        outcome = "OK"
        try:
            await func(stream)
        except SpearError as exc:
            outcome = exc.code
            await stream.send_trailing_metadata(
                status=status_for(exc),
                status_message=str(exc),
                metadata={ERROR_CODE_KEY: exc.code},
            )
        except GRPCError as exc:
            outcome = exc.status.name
            raise
        except StreamTerminatedError:
            outcome = "client gone"
            raise
        except Exception as exc:  # a bug: one failed call, logged; the node serves on
            full = no_space(exc)
            if full is not None:  # a full disk is a limit reached, not a bug
                outcome = full.code
                await stream.send_trailing_metadata(
                    status=status_for(full),
                    status_message=str(full),
                    metadata={ERROR_CODE_KEY: full.code},
                )
                return
            outcome = "internal"
            logger.exception("rpc {} failed", name)
            if not stream._send_trailing_metadata_done:  # (no public way to ask)
                await stream.send_trailing_metadata(
                    status=Status.INTERNAL,
                    status_message=f"internal error: {type(exc).__name__}: {exc}",
                    metadata={ERROR_CODE_KEY: "internal"},
                )
        finally:
            logger.debug(
                "rpc {} {} in {:.2f} ms", name, outcome, (time.perf_counter() - start) * 1e3
            )

    return handle


def reflection_services(service_names: list[str]) -> list[Any]:
    """Server reflection (v1 and v1alpha) over our descriptors and the standard services'."""
    from importlib import resources

    from google.protobuf import descriptor_pb2, descriptor_pool  # type: ignore[import-untyped]
    from grpclib.health.v1 import health_pb2
    from grpclib.reflection.service import ServerReflection
    from grpclib.reflection.v1 import reflection_pb2
    from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

    from grpclib.reflection._deprecated import (  # isort: skip
        ServerReflection as ServerReflectionV1Alpha,
    )

    pool = descriptor_pool.DescriptorPool()
    raw = resources.files("spear.transport._gen").joinpath("descriptors.binpb").read_bytes()
    for proto in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
        pool.Add(proto)
    for module in (health_pb2, reflection_pb2, reflection_v1alpha_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    names = [
        *service_names,
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    return [
        ServerReflection(_service_names=names, _pool=pool),
        ServerReflectionV1Alpha(_service_names=names, _pool=pool),
    ]


@dataclass(frozen=True)
class Security:
    """How a server admits callers: who may call what (`authorizer`: tokens and cluster
    certificates; None admits everyone as admin, which only `Security.open()` asks for),
    and the TLS it serves (`tls`: None for plaintext)."""

    authorizer: Authorizer | None
    tls: TlsFiles | None = None
    allow_insecure: bool = False  # serve beyond loopback without TLS and tokens (forced)

    @classmethod
    def open(cls) -> Security:
        """No authentication and no TLS: for benchmarks and tests of the bare transport."""
        return cls(authorizer=None)

    @classmethod
    def for_data_dir(cls, data_dir: Path, tls_dir: Path | None = None) -> Security:
        """Tokens from `data_dir` (making the owner's on first start), and TLS when the
        cluster's files are in `tls_dir` (default `DATA/tls`)."""
        from spear.transport.auth import Authorizer, TokenStore
        from spear.transport.tls import TlsFiles

        tokens = TokenStore(data_dir)
        tokens.owner_token()
        tls = TlsFiles(tls_dir or data_dir / "tls")
        if not tls.present:
            return cls(Authorizer(tokens))
        from spear.transport.member_proof import MemberVerifier
        from spear.transport.tls import CA_CERT

        return cls(Authorizer(tokens, members=MemberVerifier(tls.directory / CA_CERT)), tls)

    def check_listen(self, listen: str) -> None:
        """Refuse to serve beyond this machine without TLS and authentication (unforced)."""
        import ipaddress

        host, _ = parse_listen(listen)
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback or self.allow_insecure:
            return
        missing = [
            what
            for what, absent in (
                ("TLS", self.tls is None),
                ("authentication", self.authorizer is None),
            )
            if absent
        ]
        if missing:
            raise InvalidArgument(
                f"refusing to serve on {listen} without {' and '.join(missing)}: anyone who"
                " reaches the port could run tasks (set up TLS with `spear cluster init`, or"
                " force it with --insecure)"
            )

    @classmethod
    def for_settings(cls, settings: Settings) -> Security:
        """A server's security from its settings (data dir, tls_dir, insecure)."""
        found = cls.for_data_dir(settings.data_dir, settings.tls_files_dir)
        return cls(found.authorizer, found.tls, allow_insecure=settings.insecure)

    def install(self, server: Any) -> ssl.SSLContext | None:
        """Check every call `server` receives; the TLS context to start it with."""
        if self.authorizer is not None:
            from spear.transport.auth import install

            install(server, self.authorizer)
        return None if self.tls is None else self.tls.server_context()


class GrpcServer:
    """`service` (with grpc.health.v1 for it, and `others` beside it) on one port, admitting
    callers by `security`. `start` binds and reports the address; `close` is safe twice."""

    def __init__(
        self,
        service: Any,
        others: Sequence[Any] = (),
        *,
        name: str,
        security: Security,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        from grpclib.health.check import ServiceStatus
        from grpclib.health.service import Health
        from grpclib.server import Server

        from spear.transport import _speedups

        _speedups.install()
        self.service = service
        self.name = name
        self.security = security
        self._serving = ServiceStatus()
        self._serving.set(True)
        health = Health({service: [self._serving]})
        self._server = Server([service, *others, health], codec=LimitedCodec(max_message_bytes))
        self._ssl = security.install(self._server)
        self.address: str | None = None
        # The connections that made a call, closed with the server (grpclib leaves that to
        # its callers; a grpc.aio caller closes in the background, after the loop is gone).
        self._transports: weakref.WeakSet[Any] = weakref.WeakSet()
        from grpclib.events import RecvRequest, listen

        listen(self._server, RecvRequest, self._remember_connection)

    async def _remember_connection(self, event: Any) -> None:
        transport = getattr(event.peer, "_transport", None)  # (no public handle)
        if transport is not None:
            self._transports.add(transport)

    async def start(self, listen: str) -> str:
        """Bind `listen` (port 0 picks a free port) and serve; returns the bound address."""
        self.security.check_listen(listen)
        sock = listening_socket(listen)
        await self._server.start(sock=sock, ssl=self._ssl)
        bound_host, bound_port = sock.getsockname()[:2]
        self.address = format_address(bound_host, bound_port)
        logger.info("serving {} on {}", self.name, self.address)
        return self.address

    def set_serving(self, serving: bool) -> None:
        """What health checks answer: SERVING, or NOT_SERVING (a node draining)."""
        self._serving.set(serving)

    async def close(self) -> None:
        """Stop accepting calls and end the running ones. Safe to call twice."""
        if self.address is None:
            return
        self.address = None
        self._server.close()
        await self._server.wait_closed()
        open_ones = [t for t in self._transports if not t.is_closing()]
        for transport in open_ones:
            transport.close()
        if open_ones:
            await anyio.lowlevel.checkpoint()  # (one turn: the loop closes their sockets)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
