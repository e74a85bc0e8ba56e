"""Finished hooks: what the node's services do once tasks end (the task controller calls
them; services register with `TaskController.add_finished_hook`).

A hook takes one input dataclass, so a field can be added without breaking hooks
(temporalio's interceptors take their inputs the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spear.core.models import Task


@dataclass(frozen=True, slots=True)
class TasksFinished:
    """Tasks that just ended, as recorded (COMPLETED, FAILED or CANCELLED): one task, or
    the tasks of a `TaskController.run_many` wave, in the order they ended."""

    tasks: Sequence[Task]


class FinishedHook(Protocol):
    """Called once tasks have ended and their ends are recorded.

    Hooks run one after another in the order they were added (the object store's first,
    so a task's result is stored before anything else hears it ended), each awaited, and
    are not cancelled by the cancellation of the task that ended. The task's waiters
    (`wait`) are woken once all have run. Any async callable
    taking a `TasksFinished` is one.
    """

    async def __call__(self, finished: TasksFinished, /) -> None: ...
