"""Retrying failed tasks (issue 16): which failures a task's spec retries, the back-off
between attempts, and the record of a task about to run again.

A task runs again when it FAILED in a way its spec names (`FunctionSpec.retry_on`) and
it has attempts left (`max_retries`). By default only the system's own failures are
retried, as Ray does for its tasks (`max_retries`, with `retry_exceptions` off): the node
running it was lost ("node-lost"), or the process running it died ("process-lost");
a timeout ("timeout") or the agent's own non-zero exit or trap ("exit") only when asked.
A task refused before it ran (a bad module, no room anywhere) or cancelled never is.

Each earlier attempt is kept in the task's `attempt_log` (the node it ran on, how it
ended) and its history (FAILED, then PENDING again); the task keeps its id, so its
result is stored once, under that id, by the attempt that finishes it.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING

from spear.core.models import Attempt, TaskState
from spear.core.worker import EXIT_LOST, EXIT_TIMEOUT

if TYPE_CHECKING:
    from spear.core.models import Task

NODE_LOST = "node-lost"
PROCESS_LOST = "process-lost"
TIMEOUT = "timeout"
EXIT = "exit"

# Exit codes of a refusal before the task ran (errors.py: a bad module, no room, bad
# input): running it again would be refused again.
_NEVER = frozenset({0, 64, 65, 66, 71, 77, 130})
_NODE_REASONS = ("node lost", "node left the cluster")

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


def failure_kind(exit_code: int | None, reason: str | None) -> str | None:
    """Which retryable failure an ending is (None: one never retried)."""
    if reason is not None and reason.startswith("exit status"):
        return EXIT  # the agent's own exit, whatever its code
    if exit_code is None or exit_code in _NEVER:
        return None
    if exit_code == EXIT_LOST:
        if reason is not None and reason.startswith(_NODE_REASONS):
            return NODE_LOST
        return PROCESS_LOST
    if exit_code == EXIT_TIMEOUT:
        return TIMEOUT
    return EXIT


def should_retry(task: Task, exit_code: int | None, reason: str | None) -> bool:
    """Whether `task`, ending FAILED with `exit_code` and `reason`, runs again."""
    spec = task.spec
    if task.attempts >= spec.max_retries:
        return False
    kind = failure_kind(exit_code, reason)
    return kind is not None and kind in spec.retry_on


def backoff_s(attempts: int) -> float:
    """How long to wait before attempt `attempts + 1`: doubling from 0.1 s up to 5 s, with
    jitter (between half and all of it) so tasks failed together do not retry in step."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** max(0, attempts - 1))
    return ceiling * (0.5 + random.random() / 2)  # (spread, not secrecy)


def next_attempt(
    task: Task, exit_code: int, reason: str, now: float, *, node: str | None = None
) -> Task:
    """`task` (failed as `exit_code`, `reason`) PENDING again for its next attempt, on
    `node` (default: where it was). The failed attempt joins its `attempt_log` and its
    history (FAILED, then PENDING)."""
    attempt = Attempt(
        node=task.node or "",
        started_at=task.started_at,
        finished_at=now,
        exit_code=exit_code,
        reason=reason,
    )
    retries = task.attempts + 1
    return dataclasses.replace(
        task,
        state=TaskState.PENDING,
        started_at=None,
        finished_at=None,
        exit_code=None,
        reason=f"retry {retries} of {task.spec.max_retries} after: {reason}",
        node=task.node if node is None else node,
        attempts=retries,
        history=(*task.history, (TaskState.FAILED.value, now), (TaskState.PENDING.value, now)),
        attempt_log=(*task.attempt_log, attempt),
    )
