"""Task ids as users type them: the whole id, or a unique prefix of it (as docker and git take).

Ids are 22 hex digits (`models.new_task_id`); the first 12 are the creation time in ms, so
a prefix of a few digits names every task of a day, and about 14 name one task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from spear.store.kv import KV

ID_LENGTH = 22
_TASKS = "tasks/"  # the task records' keys (core/tasks.py)
_SHOWN = 5  # candidates named in an ambiguity error
_HEX = frozenset("0123456789abcdef")


async def resolve_task_id(kv: KV, text: str) -> str:
    """The id of the one task whose id is `text` or starts with it.

    NotFound if none; InvalidArgument naming the candidates if several.
    """
    if len(text) >= ID_LENGTH:
        return text  # a whole id (or no id at all): looked up as it is
    if not text or not _HEX.issuperset(text):
        raise NotFound(f"no such task: {text}")
    entries = await kv.scan(_TASKS + text, limit=_SHOWN + 1)
    ids = [e.key[len(_TASKS) :] for e in entries]
    if not ids:
        raise NotFound(f"no such task: {text}")
    if len(ids) > 1:
        more = ", ..." if len(ids) > _SHOWN else ""
        raise InvalidArgument(
            f"task id prefix {text} is ambiguous: it matches {', '.join(ids[:_SHOWN])}{more}"
        )
    return ids[0]
