"""Idempotent submission (issue 16): a submit carrying an idempotency key makes at most
one task, however often it is retried (a reply lost on the way back, a client failing
over to another node).

The key names the task: a key that is itself a task id (what `spear.Client` makes when
its caller gives none: time-ordered, so listings stay newest first) is the task's id;
any other key is hashed into one (sha256: the same key, the same id, on every node). A
retry finds that task (on this node, or through the SMS on another) and returns it; two
submits with the same key racing on one node make one record, the loser reads it.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from spear.errors import InvalidArgument, NotFound, Unavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from spear.core.models import Task

_TASK_ID = re.compile(r"[0-9a-f]{22}")
MAX_KEY_CHARS = 256


def task_id_for_key(key: str) -> str:
    """The id of the one task an idempotency key stands for."""
    if not key or len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(f"an idempotency key has 1 to {MAX_KEY_CHARS} characters")
    if _TASK_ID.fullmatch(key):
        return key
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:22]


async def submit_once(
    key: str,
    find: Callable[[str], Awaitable[Task]],
    start: Callable[[str], Awaitable[Task]],
) -> Task:
    """The task for `key`: found with `find(id)` if a submit made it already, else made
    with `start(id)`."""
    task_id = task_id_for_key(key)
    try:
        return await find(task_id)
    except NotFound:
        pass
    except Unavailable:  # the SMS is away: this node's own record still refuses a twin
        pass
    try:
        return await start(task_id)
    except InvalidArgument as exc:
        if "exists already" not in str(exc):
            raise
        return await find(task_id)  # a twin submit won the race here
