"""The stdin of tasks the cluster may run again, kept at the SMS (issue 16).

A task retried on the node it ran on gets its stdin again from that node's memory; one
whose node was lost is placed again by the SMS (core/retry_placement.py), which never
saw its stdin. So the node a task is submitted to keeps a retryable task's stdin here,
before placing it: `task_inputs/<id>` in the SMS's KV. A retry placed by the SMS takes it
from there; once the task has ended the sweeper forgets it.

Only tasks that may run again on another node keep their stdin (`kept_for_retries`), and
only up to `MAX_KEPT_BYTES`: a bigger one is refused at submission, with the way out (an
object the task reads) in the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.core import retries
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from spear.core.models import FunctionSpec
    from spear.store.kv import KV

_INPUTS = "task_inputs/"
MAX_KEPT_BYTES = 1024 * 1024  # an etcd value stays well under its 1.5 MiB request limit


def kept_for_retries(spec: FunctionSpec, stdin: bytes | None) -> bool:
    """Whether a task given `stdin` keeps it at the SMS: it may be retried elsewhere.
    Raises InvalidArgument if that stdin is too big to keep."""
    if not stdin or spec.max_retries == 0:
        return False
    if not {retries.NODE_LOST, retries.PROCESS_LOST} & set(spec.retry_on):
        return False
    if len(stdin) > MAX_KEPT_BYTES:
        raise InvalidArgument(
            f"a task that may be retried on another node keeps its stdin at the SMS, up to "
            f"{MAX_KEPT_BYTES} bytes (this one has {len(stdin)}): put the input in an "
            f"object the task reads, or submit it with --max-retries 0"
        )
    return True


async def keep(kv: KV, task_id: str, stdin: bytes) -> None:
    if len(stdin) > MAX_KEPT_BYTES:
        raise InvalidArgument(f"a kept stdin is at most {MAX_KEPT_BYTES} bytes")
    await kv.put(_INPUTS + task_id, stdin)


async def kept(kv: KV, task_id: str) -> bytes | None:
    """The stdin kept for `task_id`, if any."""
    entry = await kv.get(_INPUTS + task_id)
    return None if entry is None else bytes(entry.value)


async def forget_finished(kv: KV, is_finished: Callable[[str], Awaitable[bool]]) -> int:
    """Drop the kept stdin of tasks that ended (or whose record is gone); how many."""
    gone = 0
    for entry in await kv.scan(_INPUTS):
        task_id = entry.key[len(_INPUTS) :]
        if await is_finished(task_id):
            await kv.delete(entry.key)
            gone += 1
    return gone
