"""The `spear.forward` spans of a traced node's ForwardTasks call (docs/observability.md).

One span per task (a batch may carry tasks of several traces), each under the task's own
context (its placement's span); the forwarded task carries its forward span's context in
its record (`TaskInfo.traceparent`), and the call's metadata the first one's, so the
receiving node's spans join each task's trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING

from spear.tracing.base import TRACEPARENT_KEY

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from spear.core.models import Task
    from spear.tracing.base import SpanHandle, Tracing


class ForwardSpans:
    """The open forward spans of one call, and the tasks as sent (naming them)."""

    def __init__(
        self, tracing: Tracing, to_node: str, tasks: Sequence[tuple[Task, bytes | None]]
    ) -> None:
        self.spans: list[SpanHandle] = []
        self.tasks: list[tuple[Task, bytes | None]] = []
        for task, stdin in tasks:
            span = tracing.start_span(
                "spear.forward",
                task.traceparent or None,
                {"spear.task.id": task.id, "spear.forward.to": to_node},
                client=True,
            )
            self.spans.append(span)
            self.tasks.append((dataclasses.replace(task, traceparent=span.traceparent), stdin))

    @property
    def metadata(self) -> dict[str, str] | None:
        return {TRACEPARENT_KEY: self.spans[0].traceparent} if self.spans else None

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        """The spans end with the block (failed, with the error, if it raises)."""
        error: str | None = None
        try:
            yield
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            for span in self.spans:
                span.end(error)
