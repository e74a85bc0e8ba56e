"""A node's task spans (spear/tracing): opened as a task is made, closed as it ends.

The controller calls these only when its node traces (`NodeServices.tracing` set); with
tracing off it pays one None check per task.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spear.core.models import Task
    from spear.core.tasks.hooks import FinishedHook, TasksFinished
    from spear.tracing.base import Tracing


def opened(tracing: Tracing, task: Task, parent: str | None) -> Task:
    """`task` with its span open under `parent` (else the current span, else a new trace)
    and its record naming it."""
    spec = task.spec
    traceparent = tracing.task_started(
        task.id,
        parent,
        {
            "spear.task.runtime": spec.runtime.value,
            "spear.task.artifact": spec.artifact,
            "spear.namespace": spec.namespace,
        },
    )
    return dataclasses.replace(task, traceparent=traceparent)


def ended_hook(tracing: Tracing) -> FinishedHook:
    """The finished hook that closes ended tasks' spans (state, exit code, reason)."""

    async def ended(finished: TasksFinished) -> None:
        for task in finished.tasks:
            tracing.task_ended(
                task.id, task.state.value, task.exit_code, task.reason, task.finished_at
            )

    return ended
