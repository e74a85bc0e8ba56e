"""A call's trace context in gRPC metadata (W3C `traceparent`; docs/observability.md).

Used only where tracing is on: a server whose node traces makes each call's
`traceparent` the current one in its handler (transport/aio_server.py `traced`:
`spear.tracing.base.current_traceparent`, so the task it makes joins the caller's trace);
a tracing client sends the current one with every call (`AioChannel(traced=True)`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from spear.tracing.base import current_traceparent, trace_id_of

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


def has_own_traceparents(requests: Sequence[Any]) -> bool:
    """Whether a SubmitTasks batch carries a context per task (a tracing client's)."""
    return any(getattr(r, "traceparent", "") for r in requests)


@contextlib.contextmanager
def in_trace(traceparent: str) -> Iterator[None]:
    """Make one task's `traceparent` (a well-formed one) current in the block: each task
    of a SubmitTasks batch joins its own client span's trace."""
    if not trace_id_of(traceparent):
        yield
        return
    token = current_traceparent.set(traceparent)
    try:
        yield
    finally:
        current_traceparent.reset(token)
