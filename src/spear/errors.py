"""The one exception hierarchy every layer of spear raises.

    SpearError                     code "internal"      exit 70
    ├── InvalidArgument            code "invalid"       exit 64   a malformed spec, flag or value
    │   └── InvalidModule          code "invalid_module" exit 65  not wasm, no _start
    ├── NotFound                   code "not_found"     exit 66   a missing file, task or object
    ├── Conflict                   code "conflict"      exit 69   a stale version (OCC)
    ├── ResourceExhausted          code "exhausted"     exit 71   a size, capacity or queue limit
    │   └── NoSpace                code "no_space"      exit 71   a full disk: nothing was written
    ├── StorageError               code "storage"       exit 73   the data dir cannot be used
    │   └── StorageBusy            code "busy"          exit 75   another process holds it too long
    ├── Unavailable                code "unavailable"   exit 76   a node is down or draining
    │   ├── DeadlineExceeded       code "deadline"      exit 76   a call ran past its timeout
    │   └── NotLeader              code "not_leader"    exit 76   an SMS follower refused a write
    ├── PermissionDenied           code "denied"        exit 77   a credential or allow-list refused
    │   └── Unauthenticated        code "unauthenticated" exit 77 no credential, or one not known
    └── Unimplemented              code "unimplemented" exit 70   a node older than the call it got

Each error has a stable ``code`` (used on the wire and in ``--json`` output) and an
``exit_code`` the CLI returns. The CLI's own usage errors exit 2; a guest's exit code
is passed through unchanged.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class SpearError(Exception):
    """Root of every error spear raises on purpose."""

    code: str = "internal"
    exit_code: int = 70

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(SpearError):
    code = "invalid"
    exit_code = 64


class InvalidModule(InvalidArgument):
    code = "invalid_module"
    exit_code = 65


class NotFound(SpearError):
    code = "not_found"
    exit_code = 66


class Conflict(SpearError):
    code = "conflict"
    exit_code = 69


class ResourceExhausted(SpearError):
    code = "exhausted"
    exit_code = 71


class NoSpace(ResourceExhausted):
    """A disk (or a disk quota) is full: nothing was written, and another node may have
    room (store/diskspace.py)."""

    code = "no_space"


class StorageError(SpearError):
    code = "storage"
    exit_code = 73


class StorageBusy(StorageError):
    code = "busy"
    exit_code = 75


class Unavailable(SpearError):
    code = "unavailable"
    exit_code = 76


class DeadlineExceeded(Unavailable):
    code = "deadline"


class NotLeader(Unavailable):
    """A write sent to an SMS that does not lead; the message names the leader if known."""

    code = "not_leader"


class PermissionDenied(SpearError):
    code = "denied"
    exit_code = 77


class Unauthenticated(PermissionDenied):
    code = "unauthenticated"


class Unimplemented(SpearError):
    """The server does not know the method called (a node older than the caller): nothing
    ran, and an older method may serve instead (`Client.call`: CallTask, then RunTask)."""

    code = "unimplemented"


_BY_CODE: dict[str, type[SpearError]] = {
    cls.code: cls
    for cls in (
        SpearError,
        InvalidArgument,
        InvalidModule,
        NotFound,
        Conflict,
        ResourceExhausted,
        NoSpace,
        StorageError,
        StorageBusy,
        Unavailable,
        DeadlineExceeded,
        PermissionDenied,
        Unauthenticated,
        NotLeader,
        Unimplemented,
    )
}


def error_from_code(code: str, message: str) -> SpearError:
    """Rebuild an error received over a wire from its stable code."""
    return _BY_CODE.get(code, SpearError)(message)


@contextlib.contextmanager
def map_exceptions(
    mapping: dict[type[BaseException], type[SpearError]],
    describe: Callable[[BaseException], str] = str,
) -> Iterator[None]:
    """Translate third-party exceptions at a seam into spear's own (httpcore's pattern)."""
    try:
        yield
    except SpearError:
        raise
    except BaseException as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(describe(exc)) from exc
        raise
