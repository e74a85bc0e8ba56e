"""The composition root: builds every kind of process (a local run, a daemon, a cluster
member, the SMS). The only place that chooses implementations for the seams."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import anyio

from spear.core.logs import TaskLogs
from spear.core.models import Resources
from spear.core.node import Spearlet
from spear.core.worker import NodeServices
from spear.errors import InvalidArgument, StorageError
from spear.node.membership import joined_cluster, node_labels, node_name_for, peer_services

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from spear.config import Settings
    from spear.core.cluster import Cluster
    from spear.core.node_controller import NodeController
    from spear.core.sms import MetadataServer
    from spear.core.streams import StreamRegistry
    from spear.core.tasks import FinishedHook
    from spear.core.worker import WorkerAgent
    from spear.models.router import ModelRouter
    from spear.node.cluster import ClusterNode
    from spear.node.inprocess import InProcessNode
    from spear.node.peer import Peers
    from spear.node.server import SpearletServer
    from spear.store.kv import KV
    from spear.store.objects import ObjectStore
    from spear.tracing.base import Tracing
    from spear.transport.channels import Credentials


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


class SpearletParts(TypedDict):
    """What `Spearlet(**parts)` is built from."""

    settings: Settings
    kv: KV
    agents: dict[str, WorkerAgent]
    logs: TaskLogs
    capacity: Resources
    services: NodeServices


def local_components(settings: Settings, *, hold_kv: bool = True) -> SpearletParts:
    """The parts of a local-mode SPEARlet: LevelDB metadata, the wasm and process worker
    agents, the services (object store, caller streams, AI models).

    `hold_kv=False` is for short CLI processes that share a data dir (see store/leveldb.py).
    """
    from spear.core.models import Runtime
    from spear.runtimes.deferred import DeferredAgent
    from spear.store.diskspace import Reserve
    from spear.store.leveldb import LevelDBKV

    prepare_data_dir(settings)
    Reserve(settings.data_dir).keep()  # room to open the database on a full disk
    kv = LevelDBKV.open(
        str(settings.kv_path),
        hold=hold_kv,
        busy_timeout_s=settings.busy_timeout_s,
        sync=settings.kv_sync,
    )

    def wasm() -> WorkerAgent:
        from spear.runtimes.wasm.agent import WasmWorkerAgent

        return WasmWorkerAgent(
            settings.module_cache_dir,
            max_threads=settings.max_concurrent_tasks,
            default_memory_bytes=settings.wasm_memory_max_bytes,
        )

    def process() -> WorkerAgent:
        from spear.runtimes.process.agent import ProcessWorkerAgent

        return ProcessWorkerAgent(
            settings.data_dir / "run",
            grace_s=settings.process_kill_grace_s,
            max_threads=settings.max_concurrent_tasks,
            warm_spares=settings.process_warm_spares,
            warm_idle_s=settings.process_warm_idle_s,
        )

    # Made when a task first needs them: a CLI process uses one runtime or none.
    agents: dict[str, WorkerAgent] = {
        "wasm": DeferredAgent(Runtime.WASM, wasm),
        "process": DeferredAgent(Runtime.PROCESS, process),
    }
    logs = TaskLogs(settings.tasks_log_dir, settings.task_log_max_bytes)
    services = NodeServices(
        objects=_object_store(settings, kv),
        streams=_streams(settings),
        models=_models(settings),
        result_max_bytes=settings.task_result_max_bytes,
        **toolkit_services(settings),
        tracing=node_tracing(settings),
    )
    return SpearletParts(
        settings=settings,
        kv=kv,
        agents=agents,
        logs=logs,
        capacity=_machine_capacity(settings),
        services=services,
    )


def node_tracing(settings: Settings) -> Tracing | None:
    """The node's tracer (spear/tracing): None, importing nothing, unless configured."""
    if not settings.trace_otlp_endpoint:
        return None
    from spear.tracing.setup import build_tracing

    return build_tracing(settings.trace_otlp_endpoint, settings.node_name)


def _object_store(settings: Settings, kv: KV) -> ObjectStore:
    from spear.store.objects import ObjectStore

    return ObjectStore(
        kv,
        settings.data_dir / "objects",
        max_bytes=settings.object_max_bytes,
        capacity_bytes=settings.object_store_capacity_bytes,
        spare_bytes=settings.object_spare_bytes,
        gc_grace_s=settings.object_gc_grace_s,
        gc_interval_s=settings.object_gc_interval_s,
        sync=settings.kv_sync,
    )


def _streams(settings: Settings) -> StreamRegistry:
    from spear.core.streams import StreamRegistry

    return StreamRegistry(settings.stream_queue_messages, settings.stream_message_max_bytes)


def _models(settings: Settings) -> ModelRouter:
    from spear.models.router import ModelRouter, RoutingConfig

    # The one place that hands the environment over: API keys are read from the variables
    # the routing file names.
    return ModelRouter(RoutingConfig.from_settings(settings), os.environ)


def toolkit_services(settings: Settings) -> dict[str, Any]:
    """The agent toolkit's services (spear/toolkit/services.py), each made lazily."""
    from spear.toolkit.services import toolkit_services as build

    return build(settings)


def build_local_node(settings: Settings, *, hold_kv: bool = True) -> Spearlet:
    return Spearlet(**local_components(settings, hold_kv=hold_kv))


def build_cluster(settings: Settings) -> Cluster | None:
    """The Cluster seam for the mode: none in local mode, the SMS client with `sms` set."""
    if not settings.sms:
        return None
    from spear.transport.sms_client import SmsClient

    return SmsClient(settings.sms, credentials=member_credentials(settings))


def member_credentials(settings: Settings) -> Credentials:
    """What a cluster member presents to the SMS and the other members: its certificate
    (DATA/tls, made by `spear cluster init` / `spear cluster cert`)."""
    from spear.transport.channels import Credentials
    from spear.transport.tls import TlsFiles

    tls = TlsFiles(settings.tls_files_dir)
    if not tls.present:
        raise InvalidArgument(
            f"a cluster member needs its certificate: no node.crt, node.key and ca.crt in"
            f" {tls.directory} (spear cluster init, then spear cluster cert NAME; see"
            " docs/security.md)"
        )
    return Credentials(tls=tls)


# -- a daemon, a cluster member ---------------------------------------------------------


def make_node_api(node: Spearlet, max_message_bytes: int = 0) -> InProcessNode | ClusterNode:
    """The NodeAPI a daemon serves: with `sms` set, a ClusterNode (scheduling, proxying)
    wrapping the node's InProcessNode."""
    from spear.node.inprocess import InProcessNode

    local = InProcessNode(node, max_message_bytes=max_message_bytes)
    settings = node.settings
    if not settings.sms:
        return local
    from spear.core.cluster import ClusterTimings
    from spear.core.forwarding import max_queued_from
    from spear.core.scheduler import Scheduler
    from spear.node.cluster import ClusterNode
    from spear.node.peer import Peers

    timings = ClusterTimings.from_extra(settings.extra)
    cluster = build_cluster(settings)
    assert cluster is not None
    peers = Peers(node.name, credentials=member_credentials(settings))
    peers.tracing = node.services.tracing
    scheduler = Scheduler(
        node,
        cluster,
        peers,
        node_labels(settings),
        timings.heartbeat_s,
        max_queued=max_queued_from(settings.extra),
    )
    api = ClusterNode(local, cluster, scheduler, peers)
    if node.services.subtasks is not None:  # children are placed by the scheduler
        node.services.subtasks.use_api(api)
    from spear.node.vector_peers import join_vectors  # a collection lives on its home node

    join_vectors(
        node.services.vectors, node.objects, node.name, cluster, member_credentials(settings)
    )
    return api


@dataclass(frozen=True, slots=True)
class ServingNode:
    """A node serving gRPC: its NodeAPI, its server, the address it bound, and (in a
    cluster) what keeps it a member."""

    api: InProcessNode | ClusterNode
    server: SpearletServer
    address: str
    membership: NodeController | None


@contextlib.asynccontextmanager
async def serving_node(
    settings: Settings,
    *,
    max_message_bytes: int | None = None,
    on_finished: FinishedHook | None = None,
) -> AsyncIterator[ServingNode]:
    """A daemon's node while inside: started on `settings.data_dir`, serving gRPC on
    `settings.listen`, and, with `settings.sms`, a cluster member. `spear serve` and
    `join_cluster` both build theirs here."""
    import dataclasses

    from spear.node.object_ports import serving_object_ports
    from spear.node.server import serve_spearlet
    from spear.node.vector_peers import vector_services
    from spear.transport._status import DEFAULT_MAX_MESSAGE_BYTES
    from spear.transport.cluster_tokens import with_cluster_tokens
    from spear.transport.serving import Security

    if settings.sms:  # distributed mode: a cluster-wide node name
        settings = dataclasses.replace(settings, node_name=node_name_for(settings))
        member_credentials(settings)  # (refused before anything starts without them)
    node = build_local_node(settings, hold_kv=True)
    if on_finished is not None:
        node.controller.add_finished_hook(on_finished)
    async with node:
        api = make_node_api(node)
        security = with_cluster_tokens(Security.for_settings(settings), api)
        server = await serve_spearlet(
            api,
            settings.listen,
            max_message_bytes=max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
            extra_services=[*peer_services(api), *vector_services(node.services.vectors)],
            security=security,
        )
        assert server.address is not None
        try:
            async with (
                serving_object_ports(api, server.address, security),
                joined_cluster(api, server.address) as membership,
            ):
                yield ServingNode(api, server, server.address, membership)
        finally:
            with anyio.CancelScope(shield=True):
                await server.close()
        # (Outside any scope of ours: the node's task group must close where it opened.)
        await node.shutdown("the node shut down before the task finished")


def member_settings(
    where: Settings | str | Path,
    *,
    sms: str | None = None,
    listen: str | None = None,
    name: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Settings:
    """Settings for an embedded node: `where` is Settings, or a data dir (defaults then,
    with no settings file or environment read); the keywords override."""
    import dataclasses

    from spear.config import Settings

    settings = where if isinstance(where, Settings) else Settings(data_dir=Path(where))
    changes: dict[str, Any] = {}
    if sms is not None:
        changes["sms"] = sms
    if listen is not None:
        changes["listen"] = listen
    elif not isinstance(where, Settings):
        changes["listen"] = "127.0.0.1:0"
    if name is not None:
        changes["node_name"] = name
    if labels is not None:
        changes["extra"] = {**settings.extra, "labels": dict(labels)}
    return dataclasses.replace(settings, **changes)


# -- the SMS ------------------------------------------------------------------------------


async def open_sms_kv(spec: str | None, data_dir: Path) -> KV:
    """`leveldb:PATH`, `etcd://HOST:PORT[,...]`, or None: LevelDB at DATA/sms.ldb."""
    if spec is None or spec.startswith("leveldb:"):
        from spear.config import Settings
        from spear.store.leveldb import LevelDBKV

        path = Path(spec[len("leveldb:") :]) if spec else data_dir / "sms.ldb"
        if spec is None:
            prepare_data_dir(Settings(data_dir=data_dir))
        if not str(path):
            raise InvalidArgument("--kv leveldb: needs a path (leveldb:PATH)")
        return LevelDBKV.open(str(path))
    if spec.startswith("etcd://"):
        from spear.store.etcd import EtcdKV

        return await EtcdKV.connect(spec)
    raise InvalidArgument(f"--kv expects leveldb:PATH or etcd://HOST:PORT[,...], got {spec!r}")


@dataclass(frozen=True, slots=True)
class ServingSms:
    """A metadata server serving gRPC: the address it bound, and its state."""

    address: str
    metadata: MetadataServer


@contextlib.asynccontextmanager
async def serving_sms(settings: Settings, kv_spec: str | None = None) -> AsyncIterator[ServingSms]:
    """The metadata server on `settings.listen` while inside (its store opened from
    `kv_spec`: leveldb:PATH, etcd://..., or None for DATA/sms.ldb; its sweeper running)."""
    from spear.core.cluster import ClusterTimings
    from spear.core.object_leases import lease_from
    from spear.core.sms import MetadataServer
    from spear.node.quotas import cluster_task_slots
    from spear.transport.serving import Security
    from spear.transport.sms_server import SmsServer

    timings = ClusterTimings.from_extra(settings.extra)
    object_lease_s = lease_from(settings.extra)
    kv = await open_sms_kv(kv_spec, settings.data_dir)
    async with kv:
        security = Security.for_settings(settings)
        if security.tls is None:
            member_credentials(settings)  # says what is missing: members prove who with TLS
        sms = MetadataServer(kv, timings)
        sms.objects.leases.lease_s = object_lease_s
        peers = retry_placement(sms, settings)
        server = SmsServer(sms, security=security)
        server.service.task_slots = cluster_task_slots(sms, settings.data_dir)
        address = await server.start(settings.listen)
        sms = server.sms
        try:
            async with anyio.create_task_group() as tg:
                from spear.core.sms_leader import sms_leadership

                sms.leadership, sms.kv = sms_leadership(kv, address, settings.extra)
                sms.objects.kv = sms.kv  # the object index writes fenced as well
                await tg.start(sms.leadership.run, sms)
                try:
                    yield ServingSms(address, sms)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await server.close()
                await peers.aclose()


def retry_placement(sms: MetadataServer, settings: Settings) -> Peers:
    """Let the SMS place a lost node's retryable tasks again (core/retry_placement.py),
    forwarding them with the member certificate; returns the peers to close."""
    from spear.core.retry_placement import RetryPlacement
    from spear.node.peer import Peers

    peers = Peers("sms", credentials=member_credentials(settings))
    sms.retries = RetryPlacement(sms, peers)
    return peers


def serve_sms(
    where: Settings | str | Path, *, listen: str | None = None, kv: str | None = None
) -> contextlib.AbstractAsyncContextManager[ServingSms]:
    """The cluster's metadata server (SMS) in this process while inside:

        async with spear.serve_sms(data_dir) as sms:
            async with spear.join_cluster(other_dir, sms=sms.address) as node: ...

    `where` is a data dir (its state goes to DATA/sms.ldb unless `kv` names another
    store: leveldb:PATH or etcd://HOST:PORT[,...]) or Settings; `listen` defaults to
    127.0.0.1 on a free port (`sms.address` is the one bound)."""
    return serving_sms(member_settings(where, listen=listen), kv)


@contextlib.asynccontextmanager
async def join_cluster(
    where: Settings | str | Path,
    *,
    sms: str | None = None,
    listen: str | None = None,
    name: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> AsyncIterator[ClusterNode]:
    """A cluster member in this process while inside: its node started on `where` (a
    data dir, or Settings), serving gRPC on `listen` (default 127.0.0.1, a free port),
    registered with the SMS at `sms` and placing tasks; `name` and `labels` (what tasks
    may select it by) as the settings' node_name and [labels]. Leaving drains nothing: it
    leaves the cluster and stops the node (running tasks are marked as ended by the
    shutdown)."""
    from spear.node.cluster import ClusterNode

    settings = member_settings(where, sms=sms, listen=listen, name=name, labels=labels)
    if not settings.sms:
        raise InvalidArgument("join_cluster needs the SMS's address (sms=HOST:PORT)")
    async with serving_node(settings) as served:
        assert isinstance(served.api, ClusterNode)
        yield served.api
