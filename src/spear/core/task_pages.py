"""Pages of a task listing, newest first, so any history can be read whatever the message
limit: a page token is the last id of the page before (ids are time-ordered, so the next
page is the tasks with smaller ids). The node's ListTasks (node/paging.py) and the SMS's
ListClusterTasks (transport/sms_server.py) both page this way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from spear.core.models import Task

PAGE_SIZE = 1000  # a page of tasks is at most ~1 MiB on the wire: well under 4 MiB
MAX_PAGE_SIZE = 5000


def page_size(asked: int, limit: int | None = None) -> int:
    """The page to answer: `asked` (0: the default), at most MAX_PAGE_SIZE and `limit`."""
    size = min(asked or PAGE_SIZE, MAX_PAGE_SIZE)
    return size if limit is None else max(min(size, limit), 1)


async def newest_page(
    fetch: Callable[[int], Awaitable[list[Task]]], size: int, token: str
) -> tuple[list[Task], str]:
    """The `size` newest tasks older than `token` (all, without one), and the next token;
    `fetch(n)` lists the n newest."""
    fetch_n = size + 1
    while True:
        found = await fetch(fetch_n)
        after = [t for t in found if t.id < token] if token else found
        if len(after) > size or len(found) < fetch_n:
            break
        fetch_n *= 4  # the token lies further back: look further
    page = after[:size]
    more = len(after) > size
    return page, page[-1].id if more and page else ""
