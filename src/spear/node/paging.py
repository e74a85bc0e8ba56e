"""Pages of a long listing, so any history can be read whatever the message limit.

A page token is the last id (tasks) or key (objects) of the page before: tasks come
newest first (their ids are time-ordered), so the next page is the tasks with smaller
ids; objects come in key order, so the next page is the keys after it. A client asks page
after page until the token comes back empty (`node/client.py` does so by itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.core.task_pages import MAX_PAGE_SIZE, PAGE_SIZE, newest_page, page_size

__all__ = ["MAX_PAGE_SIZE", "PAGE_SIZE", "objects_page", "page_size", "tasks_page"]

if TYPE_CHECKING:
    from spear.core.models import Task, TaskState
    from spear.node.api import NodeAPI
    from spear.store.object_info import ObjectInfo


async def tasks_page(
    api: NodeAPI, state: TaskState | None, size: int, token: str
) -> tuple[list[Task], str]:
    """The `size` newest tasks older than `token` (all, without one), and the next token."""
    return await newest_page(lambda n: api.tasks(state, n), size, token)


async def objects_page(
    api: NodeAPI, prefix: str, size: int, token: str
) -> tuple[list[ObjectInfo], str]:
    """The `size` objects under `prefix` whose keys come after `token`, and the next token."""
    found = sorted(await api.list_objects(prefix), key=lambda o: o.key)
    after = [o for o in found if o.key > token] if token else found
    page = after[:size]
    return page, page[-1].key if len(after) > size and page else ""
