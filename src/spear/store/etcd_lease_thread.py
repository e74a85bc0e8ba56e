"""An etcd lease refreshed from a thread of its own, on a connection of its own.

`Lease` refreshes on the caller's event loop. An SMS whose loop is swamped by requests
(measured: a second and more behind with 1,000 simulated nodes on a machine with little
CPU to spare) sends its refreshes late, steps down at 80% of the TTL, stands again, and
loses it again: leadership flaps exactly when load is highest. Here the refreshes run
on a thread with its own asyncio loop and gRPC connection; the thread needs the GIL only
for a moment each time (Python hands it over every few milliseconds), so the lease holds
as long as the process is alive and etcd answers, however busy its main loop is.

    async with ThreadedLease.keep(kv.client, ttl_s=3) as lease:   # as Lease.keep
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING

import anyio
from loguru import logger

from spear.errors import SpearError
from spear.store._etcd_client import EtcdClient
from spear.store.etcd_election import _SAFETY_MARGIN, Lease

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

_STOP_POLL_S = 0.05


class ThreadedLease(Lease):
    """A `Lease` whose refreshes run on a thread of their own (see the module's doc)."""

    @classmethod
    @contextlib.asynccontextmanager
    async def keep(cls, client: EtcdClient, ttl_s: int = 5) -> AsyncIterator[Lease]:
        lease = await cls.grant(client, ttl_s)
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        thread = threading.Thread(
            target=lambda: asyncio.run(lease._refresh(list(client.endpoints), loop, stop)),
            name=f"etcd-lease-{lease.id:x}",
            daemon=True,
        )
        thread.start()
        try:
            yield lease
        finally:
            stop.set()
            with anyio.CancelScope(shield=True):
                await lease.revoke()
                await anyio.to_thread.run_sync(thread.join)

    async def _refresh(
        self, endpoints: list[str], owner: asyncio.AbstractEventLoop, stop: threading.Event
    ) -> None:
        """The thread's loop: refresh every third of the TTL until `stop` or the loss."""
        log = logger.bind(lease=f"{self.id:x}")
        client = EtcdClient(endpoints, timeout_s=self.ttl_s)

        def lose(why: str) -> None:
            log.warning("etcd lease lost: {}", why)
            with contextlib.suppress(RuntimeError):  # the owner's loop is closed: moot
                owner.call_soon_threadsafe(self.lost.set)

        async def pause(seconds: float) -> None:
            until = time.monotonic() + seconds
            # `stop` is set from the owner's thread: a threading.Event, polled (50 ms).
            while not stop.is_set() and time.monotonic() < until:  # noqa: ASYNC110
                await asyncio.sleep(min(_STOP_POLL_S, max(0.0, until - time.monotonic())))

        try:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    ttl = await client.lease_keepalive(
                        self.id, within_s=max(0.05, self._valid_until - sent)
                    )
                except SpearError as exc:
                    if time.monotonic() >= self._valid_until:
                        lose(f"not refreshed within its TTL ({exc})")
                        return
                    await pause(min(0.2, self.ttl_s / 10))
                    continue
                if ttl <= 0:
                    lose("expired or revoked")
                    return
                self._valid_until = sent + ttl * (1 - _SAFETY_MARGIN)
                await pause(self.ttl_s / 3)
        finally:
            await client.aclose()
