"""The order in which a node's queued tasks are placed (core/scheduler.py).

Higher priority first. Within a priority, namespaces take turns: each round places one
task of every namespace that has tasks waiting, so a namespace that queued ten thousand
tasks delays another's next task by one task, not by ten thousand. Within a namespace,
first come first served.

Each entry gets a round when it is queued: one past its namespace's last queued entry at
its priority, and never before the round being served (the first entry's at that
priority), so a namespace that had nothing waiting joins the current round. The queue is
kept sorted by (priority, round) with arrival order among equals, so the head is always
the next to place and an insertion is one scan from the tail (usually a step or two).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterator

T = TypeVar("T")


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    priority: int
    namespace: str
    turn: int


class FairQueue(Generic[T]):
    """Items in placement order: priority, then namespaces in turn, then arrival."""

    def __init__(self) -> None:
        self._entries: deque[_Entry[T]] = deque()
        # (priority, namespace) -> (the round of its last entry, how many it has queued)
        self._last: dict[tuple[int, str], tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[T]:
        return (entry.item for entry in self._entries)

    def __contains__(self, item: object) -> bool:
        return any(entry.item == item for entry in self._entries)

    @property
    def head(self) -> T:
        """The next item to place (IndexError when empty)."""
        return self._entries[0].item

    @property
    def head_priority(self) -> int:
        return self._entries[0].priority

    def push(self, item: T, priority: int, namespace: str) -> None:
        key = (priority, namespace)
        last = self._last.get(key)
        serving = self._serving(priority)
        turn = serving if last is None else max(last[0] + 1, serving)
        self._last[key] = (turn, 1 if last is None else last[1] + 1)
        entries = self._entries
        at = len(entries)
        while at > 0 and (
            entries[at - 1].priority < priority
            or (entries[at - 1].priority == priority and entries[at - 1].turn > turn)
        ):
            at -= 1
        entries.insert(at, _Entry(item, priority, namespace, turn))

    def remove(self, item: T) -> None:
        """Take `item` out (ValueError if it is not queued)."""
        for entry in self._entries:
            if entry.item == item:
                self._entries.remove(entry)
                key = (entry.priority, entry.namespace)
                turn, count = self._last[key]
                if count == 1:
                    del self._last[key]
                else:
                    self._last[key] = (turn, count - 1)
                return
        raise ValueError("not queued")

    def _serving(self, priority: int) -> int:
        """The round being served at `priority`: its first entry's (0 if none)."""
        for entry in self._entries:
            if entry.priority == priority:
                return entry.turn
            if entry.priority < priority:
                break
        return 0
