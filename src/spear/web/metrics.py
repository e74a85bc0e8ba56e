"""`/metrics`: the node's and the SMS's state in Prometheus's exposition format.

Read at scrape time by a custom collector (the official `prometheus_client` writes the
format): the task controller's gauges, the object store's usage, and what the cheap
counters of `spear.core.stats` gathered as tasks ended and hostcalls ran. Nothing here
runs on a task's path; the only per-task cost is the finished-task hook's few additions.
Names follow Prometheus's conventions (base units, `_total` counters); docs/dashboard.md
lists them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from spear._version import version
from spear.core.cluster import NodeHealth
from spear.core.models import TaskState
from spear.core.stats import HOSTCALLS, Histogram, RuntimeStats, TaskStatsHook
from spear.errors import NotFound

if TYPE_CHECKING:
    from collections.abc import Iterable

    from spear.core.cluster import NodeRecord
    from spear.core.sms import MetadataServer
    from spear.models.router import ModelRouter
    from spear.node.cluster import ClusterNode
    from spear.node.inprocess import InProcessNode

# Counting objects scans the store's metadata: again when the bytes stored changed, else at
# most this often, whatever the scrapes.
_OBJECT_COUNT_EVERY_S = 10.0
# A scrape reads at most this many live tasks' records (for their runtime and namespace).
_LIVE_READ_MAX = 10_000


class _Scraped(Collector):
    """A collector whose families are computed (asynchronously) just before each scrape."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    async def refresh(self) -> None:
        raise NotImplementedError

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


def _histogram(name: str, doc: str, by: dict[str, Histogram], label: str) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, hist in sorted(by.items()):
        buckets = [(_le(bound), float(n)) for bound, n in hist.cumulative()]
        family.add_metric([value], buckets, hist.sum)
    return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _resources(name: str, doc: str, cpu_millis: int, memory_bytes: int) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=["resource"])
    family.add_metric(["cpu_millis"], cpu_millis)
    family.add_metric(["memory_bytes"], memory_bytes)
    return family


class NodeCollector(_Scraped):
    """A SPEARlet's metrics; `attach()` adds the finished-task hook that counts task ends."""

    def __init__(self, api: InProcessNode | ClusterNode) -> None:
        super().__init__()
        self.api = api
        self.hook = TaskStatsHook()
        self._objects: tuple[float, int, int] = (0.0, -1, 0)

    def attach(self) -> None:
        self.api.node.controller.add_finished_hook(self.hook)

    def detach(self) -> None:
        self.api.node.controller.remove_finished_hook(self.hook)

    async def _object_count(self, usage: int) -> int:
        at, seen_usage, count = self._objects
        now = time.monotonic()
        if usage != seen_usage or now - at >= _OBJECT_COUNT_EVERY_S:
            count = len(await self.api.node.objects.list(""))
            self._objects = (now, usage, count)
        return count

    async def _live_tasks(self, by_runtime: list[tuple[str, RuntimeStats]]) -> Metric:
        """Tasks held now by state (pending, running), runtime and namespace: each live
        task's record is read (the store keeps them cached). Every pair of runtime and
        namespace seen before shows zeros too, so a series drops to 0 rather than vanish."""
        node = self.api.node
        counts: dict[tuple[str, str, str], int] = {}
        for runtime, stats in by_runtime:
            for _, namespace in stats.finished:
                for state in ("pending", "running"):
                    counts[(state, runtime, namespace)] = 0
        for task_id in node.controller.live_ids[:_LIVE_READ_MAX]:
            try:
                task = await node.tasks_store.get(task_id)
            except NotFound:  # it ended and was forgotten in between
                continue
            if task.state.terminal:
                continue
            state = "running" if task.state is TaskState.RUNNING else "pending"
            key = (state, task.spec.runtime.value, task.spec.namespace)
            counts[key] = counts.get(key, 0) + 1
        family = GaugeMetricFamily(
            "spear_tasks",
            "Tasks this node holds now, by state (pending, running), runtime and namespace.",
            labels=["state", "runtime", "namespace"],
        )
        for labels, n in sorted(counts.items()):
            family.add_metric(list(labels), n)
        return family

    async def refresh(self) -> None:
        node = self.api.node
        controller = node.controller
        out: list[Metric] = []
        info = GaugeMetricFamily(
            "spear_node_info", "This node: name and spear version.", labels=["node", "version"]
        )
        info.add_metric([node.name, version()], 1)
        out.append(info)
        waiting = controller.waiting_count
        by_runtime = sorted(self.hook.by_runtime.items())
        out.append(await self._live_tasks(by_runtime))
        finished = CounterMetricFamily(
            "spear_tasks_finished",
            "Tasks that ended on this node, by final state, runtime and namespace.",
            labels=["state", "runtime", "namespace"],
        )
        for runtime, stats in by_runtime:
            for (state, namespace), n in sorted(stats.finished.items()):
                finished.add_metric([state, runtime, namespace], n)
        out.append(finished)
        for name, doc, part in (
            ("spear_task_queue_seconds", "Time from a task's creation to its start.", "queue"),
            ("spear_task_run_seconds", "Time a task ran (start to end).", "run"),
            ("spear_task_end_to_end_seconds", "Time from a task's creation to its end.",
             "end_to_end"),
        ):  # fmt: skip
            parts = {runtime: getattr(stats, part) for runtime, stats in by_runtime}
            out.append(_histogram(name, doc, parts, "runtime"))
        out.append(
            GaugeMetricFamily(
                "spear_admission_queue_depth",
                "Tasks waiting for CPU and memory to free up.",
                value=waiting,
            )
        )
        capacity, free = controller.capacity, controller.free
        out.append(
            _resources(
                "spear_resources_capacity",
                "What the node offers.",
                capacity.cpu_millis,
                capacity.memory_bytes,
            )
        )
        out.append(
            _resources(
                "spear_resources_free",
                "What is not reserved by running tasks.",
                free.cpu_millis,
                free.memory_bytes,
            )
        )
        out.append(
            _resources(
                "spear_resources_used",
                "What running tasks reserve.",
                capacity.cpu_millis - free.cpu_millis,
                capacity.memory_bytes - free.memory_bytes,
            )
        )
        usage = await node.objects.usage()
        count = await self._object_count(usage)
        out.append(GaugeMetricFamily("spear_objects", "Objects in the node's store.", value=count))
        out.append(
            GaugeMetricFamily("spear_objects_bytes", "Bytes of object values stored.", value=usage)
        )
        hostcalls = CounterMetricFamily(
            "spear_hostcalls",
            "Hostcalls served to agents (this process), by runtime and name.",
            labels=["runtime", "name"],
        )
        for (runtime, name), cell in sorted(HOSTCALLS.items()):
            if cell[0]:
                hostcalls.add_metric([runtime, name], cell[0])
        out.append(hostcalls)
        router = getattr(node.services, "models", None)
        if router is not None:
            out += model_families(router)
        self.families = out


def model_families(router: ModelRouter) -> list[Metric]:
    """The node's model calls (spear/models/stats.py) and its backends' slots."""
    stats = router.stats
    requests = CounterMetricFamily(
        "spear_model_requests",
        "Model calls, by model, kind (chat, stream, embed) and outcome (ok, or the error).",
        labels=["model", "kind", "outcome"],
    )
    for (model, kind, outcome), n in sorted(stats.requests.items()):
        requests.add_metric([model, kind, outcome], n)
    tokens = CounterMetricFamily(
        "spear_model_tokens_generated", "Completion tokens generated.", labels=["model"]
    )
    seconds = CounterMetricFamily(
        "spear_model_generation_seconds",
        "Seconds of the calls that generated tokens (tokens/s: the ratio of the rates).",
        labels=["model"],
    )
    speed = GaugeMetricFamily(
        "spear_model_tokens_per_second",
        "Mean generation speed since the node started.",
        labels=["model"],
    )
    in_flight = GaugeMetricFamily(
        "spear_model_calls_in_flight", "Model calls running now.", labels=["model"]
    )
    for model in stats.models():
        tokens.add_metric([model], stats.tokens.get(model, 0))
        seconds.add_metric([model], stats.generating_s.get(model, 0.0))
        speed.add_metric([model], stats.tokens_per_second(model))
        in_flight.add_metric([model], stats.in_flight.get(model, 0))
    slots = GaugeMetricFamily(
        "spear_model_backend_slots",
        "Each backend's inference slots: in use, free, and calls waiting for one.",
        labels=["backend", "state"],
    )
    for name in sorted(router.config.backends):
        limiter = router.limiter(name)
        slots.add_metric([name, "in_use"], limiter.in_use)
        slots.add_metric([name, "free"], max(limiter.slots - limiter.in_use, 0))
        slots.add_metric([name, "waiting"], limiter.waiting)
    return [
        requests,
        tokens,
        seconds,
        speed,
        _histogram(
            "spear_model_time_to_first_token_seconds",
            "Time from asking the backend to the first token of a streamed completion.",
            stats.ttft,
            "model",
        ),
        _histogram(
            "spear_model_request_seconds",
            "Time a model call took at its backend.",
            stats.duration,
            "model",
        ),
        in_flight,
        slots,
    ]


class SmsCollector(_Scraped):
    """The metadata server's metrics: nodes by health and their load, heartbeats,
    placement latency."""

    def __init__(self, sms: MetadataServer) -> None:
        super().__init__()
        self.sms = sms

    async def refresh(self) -> None:
        sms = self.sms
        records: list[NodeRecord] = await sms.nodes()
        now = time.time()
        out: list[Metric] = []
        health = GaugeMetricFamily(
            "spear_sms_nodes", "Nodes the SMS knows, by health.", labels=["health"]
        )
        for h in NodeHealth:
            health.add_metric([h.value], sum(1 for r in records if r.health is h))
        out.append(health)
        out.append(
            CounterMetricFamily(
                "spear_sms_heartbeats",
                "Heartbeats received since this SMS started.",
                value=sms.stats.heartbeats,
            )
        )
        out.append(
            _histogram(
                "spear_sms_placement_seconds",
                "Time to answer a placement query (FindNodes).",
                {"": sms.stats.placement},
                "query",
            )
        )
        age = GaugeMetricFamily(
            "spear_sms_node_heartbeat_age_seconds",
            "Seconds since each node's last heartbeat.",
            labels=["node"],
        )
        running = GaugeMetricFamily(
            "spear_sms_node_running_tasks", "Each node's running tasks.", labels=["node"]
        )
        free = GaugeMetricFamily(
            "spear_sms_node_free", "Each node's free resources.", labels=["node", "resource"]
        )
        for r in records:
            if not r.health.live:
                continue
            age.add_metric([r.name], max(now - r.last_heartbeat, 0.0))
            running.add_metric([r.name], r.running_tasks)
            free.add_metric([r.name, "cpu_millis"], r.free.cpu_millis)
            free.add_metric([r.name, "memory_bytes"], r.free.memory_bytes)
        out += [age, running, free]
        self.families = out


class Exposition:
    """One server's metrics: its collector and the process's, in a registry of its own
    (several nodes may share a test process; the library's global registry is not used)."""

    def __init__(self, collector: _Scraped) -> None:
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)

    async def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (text, or OpenMetrics if `accept` asks) and its content type."""
        await self.collector.refresh()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
