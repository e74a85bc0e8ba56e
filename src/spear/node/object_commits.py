"""A member's object commits to the SMS, grouped (docs/objects.md, "Commits in groups").

Every value a member writes is committed at the SMS (a compare-and-swap there): every
task's result is one. One call per commit made the SMS's gRPC and TLS the largest cost of
a batch of short tasks, so `CommitQueue` groups them as a database groups its log
writes: a commit made while none is on the wire goes at once, alone (CommitObject: no
wait added); those made while a call is on the wire wait for it and then go together in
one CommitObjects call. Each is still a compare-and-swap of its own at the SMS, answered
on its own (a conflict refuses that commit only); commits of one key keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from spear.errors import SpearError

if TYPE_CHECKING:
    from spear.core.object_index import ObjectRecord
    from spear.transport.sms_client import ObjectCommit, SmsClient

MAX_GROUP = 256  # commits a call (values up to 4 KiB ride along: 1 MiB at most)


class CommitQueue:
    """Commits to `sms`, grouped while a call is on the wire."""

    def __init__(self, sms: SmsClient) -> None:
        self._sms = sms
        self._waiting: list[tuple[ObjectCommit, asyncio.Future[ObjectRecord]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.calls = 0  # calls made (for tests and benchmarks: commits / calls = grouping)

    async def commit(self, commit: ObjectCommit) -> ObjectRecord:
        """`commit`'s new record, or the error that refused it (Conflict: nothing
        written); a call that failed (the SMS unreachable) is every waiting commit's
        error, as it would be each one's alone."""
        future: asyncio.Future[ObjectRecord] = asyncio.get_running_loop().create_future()
        self._waiting.append((commit, future))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                await self._call(group)
        finally:
            self._sender = None
            for _, future in self._waiting:  # (only if this task was cancelled)
                future.cancel()
            self._waiting = []

    async def _call(self, group: list[tuple[ObjectCommit, asyncio.Future[ObjectRecord]]]) -> None:
        self.calls += 1
        try:
            if len(group) == 1:
                commit = group[0][0]
                outcomes: list[ObjectRecord | SpearError] = [await self._sms.commit_object(*commit)]
            else:
                outcomes = await self._sms.commit_objects([commit for commit, _ in group])
        except BaseException as exc:
            for _, future in group:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if future.done():  # (its caller was cancelled: it treats the key as unsure)
                continue
            if isinstance(outcome, SpearError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def aclose(self) -> None:
        """Stop sending: commits still waiting end cancelled (their callers treat their
        keys as unsure, as after any commit whose answer was not heard)."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
