"""Client failover (issue 16): which node a client asks next when one is unavailable,
and how long it waits first.

A client given several addresses (`HOST:PORT,HOST:PORT`) starts with the first and moves
to the next, round the list, each time a call finds its node unavailable (refused, reset,
unreachable, draining) or its node's storage failing (a full disk). A call that ran out
of time (DeadlineExceeded) is not retried: it may still be running there. Waits double
from 0.1 s up to 2 s, with jitter.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, TypeVar

import anyio

from spear.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NoSpace,
    SpearError,
    StorageError,
    Unavailable,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_T = TypeVar("_T")

DEFAULT_RETRIES = 4
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0


class Failover:
    """The addresses of one client and where it is among them."""

    def __init__(self, addresses: str, retries: int = DEFAULT_RETRIES) -> None:
        self.addresses = tuple(a.strip() for a in addresses.split(",") if a.strip())
        if not self.addresses:
            raise InvalidArgument("a node address is HOST:PORT, got nothing")
        if retries < 0:
            raise InvalidArgument("retries must not be negative")
        self.retries = retries
        self._at = 0

    @property
    def address(self) -> str:
        return self.addresses[self._at]

    def should_retry(self, exc: SpearError, attempt: int) -> bool:
        """Whether a call that failed with `exc` on its `attempt`-th retry goes again."""
        # (a full disk: nothing was written there, and another node may have room)
        node_failed = isinstance(exc, (Unavailable, StorageError, NoSpace))
        return node_failed and attempt < self.retries and not isinstance(exc, DeadlineExceeded)

    def next_address(self) -> str:
        self._at = (self._at + 1) % len(self.addresses)
        return self.address

    @staticmethod
    def backoff_s(attempt: int) -> float:
        ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0**attempt)
        return ceiling * (0.5 + random.random() / 2)  # (spread, not secrecy)


async def persist(call: Callable[[], Awaitable[_T]], retries: int = 6) -> _T:
    """`call()`, again after a back-off while it finds its server unavailable or its
    storage failing (an SMS whose etcd is electing a leader): for a write that must not
    be dropped after one try, such as an object's entry in the SMS's index."""
    for attempt in range(retries):
        try:
            return await call()
        except (Unavailable, StorageError):
            if attempt + 1 == retries:
                raise
        await anyio.sleep(Failover.backoff_s(attempt))
    raise AssertionError("unreachable")  # pragma: no cover
