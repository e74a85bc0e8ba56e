"""Counts and histograms kept by the node and the SMS, cheap enough for the hot path.

Plain Python, no dependency: an observation is a bisect and two additions (about 0.3 us,
against 2-3 us for a `prometheus_client.Histogram`, whose lock and per-bucket loop
would cost the 70 us task of `run_many` several percent). The web layer turns them into
Prometheus metric families when scraped (spear/web/metrics.py); nothing else reads them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spear.core.models import Task
    from spear.core.tasks.hooks import TasksFinished

# Seconds: from a trivial wasm task (~100 us end to end) to long agent runs.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
)  # fmt: skip


class Histogram:
    """Observations counted into fixed buckets (upper bounds, `le`), with their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) for each bound, then (+inf, all)."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class RuntimeStats:
    """What the finished-task hook counts for one runtime: ends by final state and
    namespace, and the queue (created to started), run (started to finished) and
    end-to-end (created to finished) times. A task that never started counts in end to
    end only."""

    __slots__ = ("end_to_end", "finished", "queue", "run")

    def __init__(self) -> None:
        self.finished: dict[tuple[str, str], int] = {}  # (state, namespace) -> n
        self.queue = Histogram()
        self.run = Histogram()
        self.end_to_end = Histogram()


@dataclass(slots=True)
class SmsStats:
    """What the SMS counts as it serves: heartbeats received, placement queries' time."""

    heartbeats: int = 0
    placement: Histogram = field(default_factory=Histogram)


class TaskStatsHook:
    """A finished hook (`TaskController.add_finished_hook`) counting into `RuntimeStats`
    by runtime. About 1 us a task (three bisects): under 2% of `run_many`'s 70 us."""

    def __init__(self) -> None:
        self.by_runtime: dict[str, RuntimeStats] = {}

    async def __call__(self, finished: TasksFinished, /) -> None:
        record = self.record
        for task in finished.tasks:
            record(task)

    def record(self, task: Task) -> None:
        runtime = task.spec.runtime._value_
        stats = self.by_runtime.get(runtime)
        if stats is None:
            stats = self.by_runtime[runtime] = RuntimeStats()
        finished = stats.finished
        key = (task.state._value_, task.spec.namespace)
        finished[key] = finished.get(key, 0) + 1
        end = task.finished_at
        if end is None:
            return
        created = task.created_at
        started = task.started_at
        if started is not None:
            stats.queue.observe(started - created)
            stats.run.observe(end - started)
        stats.end_to_end.observe(end - created)


# Hostcalls served, by (runtime, name): one cell per call kind, so counting a call is one
# addition on a list the caller holds (wasm: in the adapted function's closure). Counts are
# per process (one node per daemon process), read by the node's /metrics.
HOSTCALLS: dict[tuple[str, str], list[int]] = {}


def hostcall_counter(runtime: str, name: str) -> list[int]:
    """The cell counting hostcalls `name` of `runtime`: `cell[0] += 1` per call."""
    return HOSTCALLS.setdefault((runtime, name), [0])
