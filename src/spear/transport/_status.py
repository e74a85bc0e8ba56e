"""spear errors <-> gRPC statuses, and the codec that enforces message size limits.

The server answers a SpearError with the status below, its message, and the trailing
metadata `spear-error-code` (the error's stable code), so a spear client rebuilds the
exact error while stock gRPC tools still see a standard status.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING, Any

import grpc

from spear.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SpearError,
    StorageError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    error_from_code,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

ERROR_CODE_KEY = "spear-error-code"
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Payload bytes per chunk of a streamed artifact, object or result: well under the limit.
CHUNK_BYTES = 1024 * 1024


class RpcError(Exception):
    """A call that ended with a status other than OK: what the server answered, or what
    this side refused to send or read (`LimitedCodec`). `client_errors` makes it the
    SpearError a caller sees; it never leaves the transport."""

    def __init__(self, status: grpc.StatusCode, message: str | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}" if self.message else self.status.name


_STATUS_BY_ERROR: list[tuple[type[SpearError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.ABORTED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (StorageError, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
]
_ERROR_BY_STATUS: dict[grpc.StatusCode, type[SpearError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def status_for(error: SpearError) -> grpc.StatusCode:
    for cls, status in _STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return grpc.StatusCode.INTERNAL


# The spear error code a call's trailers carried, set in the task that made the call when
# its failure is read (transport/aio_streams.py), read when its RpcError is translated.
received_error_code: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "spear_received_error_code", default=None
)


def error_from_grpc(exc: RpcError, address: str) -> SpearError:
    code = received_error_code.get()
    received_error_code.set(None)
    message = exc.message or exc.status.name.lower()
    if code:
        return error_from_code(code, message)
    if exc.status is grpc.StatusCode.UNAVAILABLE and not exc.message:
        message = f"node {address} is unavailable"
    return _ERROR_BY_STATUS.get(exc.status, SpearError)(message)


def unreachable(address: str, reason: str) -> Unavailable:
    """A node that could not be reached, with a hint where grpc's reason fits a client
    speaking plain TCP to a node that serves TLS (it closes the socket unanswered)."""
    message = f"cannot reach node {address}: {reason}"
    if reason.endswith("Socket closed"):
        message += (
            " (if it serves TLS, as cluster members do, give the cluster's CA:"
            " SPEAR_TLS_DIR=DIR with its ca.crt, or tls_dir in the settings)"
        )
    return Unavailable(message)


@contextlib.contextmanager
def client_errors(address: str) -> Iterator[None]:
    """Translate what a gRPC call can raise into spear's errors."""
    received_error_code.set(None)
    try:
        yield
    except RpcError as exc:
        raise error_from_grpc(exc, address) from None
    except (ConnectionError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise Unavailable(f"cannot reach node {address}: {reason}") from None


class LimitedCodec:
    """protobuf's encoding, refusing any message larger than `max_bytes` either way (as
    RESOURCE_EXHAUSTED, before a byte is sent), and bytes that are no message of the
    expected type (as INVALID_ARGUMENT)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes

    def encode(self, message: Any, message_type: type[Any]) -> bytes:
        if not isinstance(message, message_type):
            raise TypeError(f"message must be of type {message_type!r}, not {type(message)!r}")
        data: bytes = message.SerializeToString()
        self._check_size(data)
        return data

    def decode(self, data: bytes, message_type: type[Any]) -> Any:
        self._check_size(data)
        try:
            return message_type.FromString(data)
        except Exception as exc:  # whatever the bytes made the decoder trip on
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed {message_type.__name__} message: {exc}",
            ) from None

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.max_bytes:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"message of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes",
            )
