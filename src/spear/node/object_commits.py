"""A member's object commits to the SMS, grouped (docs/objects.md, "Commits in groups").

Every value a member writes is committed at the SMS (a compare-and-swap there): every
task's result is one. One call per commit made the SMS's gRPC and TLS the largest cost of
a batch of short tasks, so `CommitQueue` groups them as a database groups its log
writes: a commit made while none is on the wire goes at once (no wait added); those made
while a call is on the wire wait for it and then go together in the next CommitObjects
call. Each is still a compare-and-swap of its own at the SMS, answered
on its own (a conflict refuses that commit only); commits of one key keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from spear.errors import Unavailable

if TYPE_CHECKING:
    from collections.abc import Sequence

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
        written); a call that failed (the SMS unreachable) is the error of every commit
        in it, as it would have been of each alone."""
        (future,) = self._enqueue([commit])
        return await future

    async def commit_many(self, commits: Sequence[ObjectCommit]) -> list[ObjectRecord | Exception]:
        """`commit` of each of `commits`, queued together (so they go in as few calls as
        there are groups, with no task of their own each): each one's record, or the
        error that refused it. Cancelled, the ones not answered yet are given up (their
        callers treat those keys as unsure, as after any commit not heard)."""
        futures = self._enqueue(commits)
        outcomes: list[ObjectRecord | Exception] = []
        try:
            for future in futures:
                try:
                    outcomes.append(await future)
                except Exception as exc:  # (that commit's own error, as `commit` raises it)
                    outcomes.append(exc)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return outcomes

    def _enqueue(self, commits: Sequence[ObjectCommit]) -> list[asyncio.Future[ObjectRecord]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[ObjectRecord]] = [loop.create_future() for _ in commits]
        self._waiting.extend(zip(commits, futures))  # noqa: B905  (equal by construction)
        if self._sender is None:
            self._sender = loop.create_task(self._send())
        return futures

    async def _send(self) -> None:
        group: list[tuple[ObjectCommit, asyncio.Future[ObjectRecord]]] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                self.calls += 1
                try:
                    outcomes = await self._sms.commit_objects([commit for commit, _ in group])
                except Exception as exc:
                    _answer(group, [exc] * len(group))
                else:
                    _answer(group, outcomes)
        finally:  # (cancelled: `aclose`) what was not answered will not be
            self._sender = None
            _closed(group)
            self._close_waiting()

    def _close_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        _closed(waiting)

    async def aclose(self) -> None:
        """Stop sending: commits still waiting fail with Unavailable (their callers treat
        their keys as unsure, as after any commit whose answer was not heard)."""
        sender = self._sender
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        self._close_waiting()  # (a sender cancelled before it ran did not)


CLOSED = "the commit was not answered: the node's object space closed"


def _closed(group: list[tuple[ObjectCommit, asyncio.Future[ObjectRecord]]]) -> None:
    _answer(group, [Unavailable(CLOSED)] * len(group))


def _answer(
    group: list[tuple[ObjectCommit, asyncio.Future[ObjectRecord]]],
    outcomes: Sequence[ObjectRecord | Exception],
) -> None:
    # (one outcome per commit: commit_objects checks the SMS's answer has as many)
    for (_, future), outcome in zip(group, outcomes):  # noqa: B905
        if future.done():  # (its caller was cancelled: it treats the key as unsure)
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
