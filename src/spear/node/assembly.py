"""Builds a node for a mode. The only place that chooses implementations for the seams."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from spear.core.logs import TaskLogs
from spear.core.models import Resources
from spear.core.node import Spearlet
from spear.errors import StorageError

if TYPE_CHECKING:
    from spear.config import Settings
    from spear.core.cluster import Cluster
    from spear.core.worker import WorkerAgent


def _machine_capacity(settings: Settings) -> Resources:
    cpu = settings.cpu_millis or (os.cpu_count() or 1) * 1000
    memory = settings.memory_bytes
    if not memory:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):  # pragma: no cover
            memory = 4 * 1024**3
    return Resources(cpu, memory)


def prepare_data_dir(settings: Settings) -> None:
    """Create the data dir and check it is writable, with one clear error if not."""
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".spear-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StorageError(f"data dir {path} is not usable: {reason}") from None


def local_components(settings: Settings, *, hold_kv: bool = True) -> dict[str, Any]:
    """The parts of a local-mode SPEARlet: LevelDB metadata, the wasm worker agent.

    `hold_kv=False` is for short CLI processes that share a data dir (see store/leveldb.py).
    """
    from spear.core.models import Runtime
    from spear.runtimes.deferred import DeferredAgent
    from spear.store.leveldb import LevelDBKV

    prepare_data_dir(settings)
    kv = LevelDBKV.open(
        str(settings.kv_path),
        hold=hold_kv,
        busy_timeout_s=settings.busy_timeout_s,
        sync=settings.kv_sync,
    )

    def wasm() -> WorkerAgent:
        from spear.runtimes.wasm.agent import WasmWorkerAgent

        return WasmWorkerAgent(settings.module_cache_dir, max_threads=settings.max_concurrent_tasks)

    def process() -> WorkerAgent:
        from spear.runtimes.process.agent import ProcessWorkerAgent

        return ProcessWorkerAgent(
            settings.data_dir / "run",
            grace_s=settings.process_kill_grace_s,
            max_threads=settings.max_concurrent_tasks,
        )

    # Made when a task first needs them: a CLI process uses one runtime or none.
    agents: dict[str, WorkerAgent] = {
        "wasm": DeferredAgent(Runtime.WASM, wasm),
        "process": DeferredAgent(Runtime.PROCESS, process),
    }
    logs = TaskLogs(settings.tasks_log_dir, settings.task_log_max_bytes)
    services: dict[str, Any] = {
        "objects": _object_store(settings, kv),
        "streams": _streams(settings),
        "models": _models(settings),
    }
    return {
        "services": services,
        "settings": settings,
        "kv": kv,
        "agents": agents,
        "logs": logs,
        "capacity": _machine_capacity(settings),
    }


def _object_store(settings: Settings, kv: Any) -> Any:
    from spear.store.objects import ObjectStore

    return ObjectStore(
        kv,
        settings.data_dir / "objects",
        max_bytes=settings.object_max_bytes,
        capacity_bytes=settings.object_store_capacity_bytes,
        gc_grace_s=settings.object_gc_grace_s,
        gc_interval_s=settings.object_gc_interval_s,
        sync=settings.kv_sync,
    )


def _streams(settings: Settings) -> Any:
    from spear.core.streams import StreamRegistry

    return StreamRegistry(settings.stream_queue_messages, settings.stream_message_max_bytes)


def _models(settings: Settings) -> Any:
    from spear.models.router import ModelRouter, RoutingConfig

    # The one place that hands the environment over: API keys are read from the variables
    # the routing file names.
    return ModelRouter(RoutingConfig.from_settings(settings), os.environ)


def build_local_node(settings: Settings, *, hold_kv: bool = True) -> Spearlet:
    return Spearlet(**local_components(settings, hold_kv=hold_kv))


def build_cluster(settings: Settings) -> Cluster | None:
    """The Cluster seam for the mode: none in local mode, the SMS client with `sms` set."""
    if not settings.sms:
        return None
    from spear.transport.sms_client import SmsClient

    return SmsClient(settings.sms)
