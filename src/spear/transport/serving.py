"""What every spear gRPC server shares: listening sockets and addresses, the call guard
that maps spear's errors to statuses, and server reflection over our descriptors."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from spear._logging import logger
from spear.errors import InvalidArgument, SpearError
from spear.transport._status import ERROR_CODE_KEY, status_for

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from grpclib.server import Stream


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
