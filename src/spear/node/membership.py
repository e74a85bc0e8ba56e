"""A node's membership of a cluster: its cluster-wide name and labels, the record it
registers, the peer service it serves, and the background work that keeps it a member
(registration, heartbeats, task reports, placing queued tasks). assembly.py puts these
together; this module imports nothing of it."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio

from spear._logging import logger
from spear.errors import InvalidArgument, SpearError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from spear.config import Settings
    from spear.core.cluster import NodeRecord
    from spear.core.node import Spearlet
    from spear.core.node_controller import NodeController
    from spear.node.cluster import ClusterNode
    from spear.node.inprocess import InProcessNode
    from spear.node.quotas import QuotaFile


def node_name_for(settings: Settings) -> str:
    """The cluster-wide name: the one in the member's certificate (DATA/tls/node.crt) when
    it has one (a setting naming another is refused), else `node_name` if set, else host
    name + a digest of the data dir."""
    from spear.transport.tls import TlsFiles

    tls = TlsFiles(settings.tls_files_dir)
    if tls.present:
        certified = tls.name()
        if settings.node_name not in ("local", certified):
            raise InvalidArgument(
                f"node_name is {settings.node_name!r} but this member's certificate is for"
                f" {certified!r} ({tls.directory}): a member is the node its certificate names"
            )
        return certified
    if settings.node_name != "local":
        return settings.node_name
    import hashlib
    import socket

    digest = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


def node_labels(settings: Settings) -> tuple[tuple[str, str], ...]:
    """Labels from the settings file's `[labels]` table (or `labels = {k = "v"}`)."""
    raw = settings.extra.get("labels", {})
    if not isinstance(raw, dict):
        raise InvalidArgument("setting labels must be a table of name = value")
    return tuple(sorted((str(k), str(v)) for k, v in raw.items()))


def describe_node(node: Spearlet, address: str) -> NodeRecord:
    """The record a member registers with the SMS (and refreshes with each heartbeat)."""
    from spear.core.cluster import AgentInfo, NodeRecord
    from spear.runtimes.wasm import wasmtime_version

    agents = tuple(
        AgentInfo(runtime, wasmtime_version() if runtime == "wasm" else "")
        for runtime in sorted(node.agents)
    )
    return NodeRecord(
        name=node.name,
        address=address,
        capacity=node.controller.capacity,
        free=node.controller.free,
        labels=node_labels(node.settings),
        agents=agents,
    )


def peer_services(api: InProcessNode | ClusterNode) -> list[Any]:
    """The SpearletPeer service (forwarded tasks) for a ClusterNode; nothing in local mode."""
    from spear.node.cluster import ClusterNode

    if not isinstance(api, ClusterNode):
        return []
    from spear.core.artifacts import ArtifactStore
    from spear.node.peer import PeerService

    settings = api.node.settings
    artifacts = ArtifactStore(settings.data_dir / "artifacts", settings.object_max_bytes)
    return [PeerService(api.scheduler, artifacts, api.local)]


@contextlib.asynccontextmanager
async def joined_cluster(
    api: InProcessNode | ClusterNode, address: str
) -> AsyncIterator[NodeController | None]:
    """While inside, the node behind `api` (serving on `address`) is a cluster member:
    registered, heartbeating, reporting each task change, placing queued tasks.
    Nothing happens for a local-mode node."""
    from spear.core.cluster import ClusterTimings
    from spear.core.forwarding import view_refresh_from
    from spear.core.node_controller import NodeController
    from spear.core.task_reports import TaskReporter
    from spear.node.cluster import ClusterNode

    if not isinstance(api, ClusterNode):
        yield None
        return
    node, cluster, scheduler = api.node, api.cluster, api.scheduler
    timings = ClusterTimings.from_extra(node.settings.extra)

    def load() -> Any:
        return scheduler.offered(), node.controller.running_count, scheduler.queued

    controller = NodeController(cluster, lambda: describe_node(node, address), load, timings)
    reporter = TaskReporter(cluster, node.kv, node.tasks_store)
    controller.on_registered = reporter.resync
    # (core/retention.py: an SMS client forgets the finished tasks deleted here)
    node.forget_tasks = getattr(cluster, "delete_cluster_tasks", None)
    from spear.node.peer_aio import serving_peer_aio

    try:
        async with (
            sharing_node_objects(api, address, controller),
            serving_peer_aio(api, address),
            anyio.create_task_group() as tg,
        ):
            await tg.start(reporter.run)
            await tg.start(scheduler.run)
            refresh_s = view_refresh_from(node.settings.extra, timings.heartbeat_s)
            await tg.start(scheduler.watch_cluster, refresh_s)
            await tg.start(controller.run)
            tg.start_soon(warm_up, api)
            try:
                yield controller
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await controller.leave()
    finally:
        node.forget_tasks = None
        await api.peers.aclose()
        await cluster.aclose()


WARM_PEERS = 8  # peers a member opens channels to before its first forward
_WARM_LOOK_S = 1.0  # how often it looks at its view for peers not warmed yet


async def warm_up(api: ClusterNode) -> None:
    """Ready a new member for its first tasks before they come: its wasm runtime made
    (an import and an engine: ~10 ms on the first task otherwise) and its channels open
    to the first WARM_PEERS peers its view shows (two TLS handshakes on the first forward
    to each otherwise), looked for every second until it has as many. Best effort: what
    fails here is done again when first needed."""
    warm = getattr(api.node.agents.get("wasm"), "warm", None)  # (node/assembly.py)
    if warm is not None:
        try:
            await warm()
        except Exception as exc:  # (the first wasm task will say what is wrong)
            logger.debug("the wasm runtime was not made ahead: {}", exc)
    warmed: set[str] = set()
    while len(warmed) < WARM_PEERS:
        fresh = [r for r in api.scheduler.view.nodes() if r.name not in warmed]
        fresh = fresh[: WARM_PEERS - len(warmed)]
        warmed.update(r.name for r in fresh)
        async with anyio.create_task_group() as tg:
            for record in fresh:
                tg.start_soon(_warm_peer, api, record)
        await anyio.sleep(_WARM_LOOK_S)


async def _warm_peer(api: ClusterNode, record: NodeRecord) -> None:
    try:
        with anyio.fail_after(10):
            await api.peers.warm(record)
    except (SpearError, OSError, TimeoutError) as exc:
        logger.debug("no channel to {} ahead of a forward: {}", record.name, exc)


@contextlib.asynccontextmanager
async def sharing_node_objects(
    api: ClusterNode, address: str, controller: NodeController
) -> AsyncIterator[None]:
    """The node's object store joins the cluster's object space (node/object_space.py);
    what it holds is announced after each registration."""
    from spear.node.object_space import announce_held, sharing_objects
    from spear.transport.channels import Credentials
    from spear.transport.serving import Security, parse_listen
    from spear.transport.sms_client import SmsClient
    from spear.transport.tls import TlsFiles

    store, settings = api.node.services.objects, api.node.settings
    if not isinstance(api.cluster, SmsClient):
        yield
        return
    host, _ = parse_listen(address)
    # (the member's certificate, as assembly.member_credentials checked at start)
    credentials = Credentials(tls=TlsFiles(settings.tls_files_dir))
    from spear.transport.cluster_tokens import with_cluster_tokens

    security = with_cluster_tokens(Security.for_settings(settings), api)  # (the SMS's too)
    async with sharing_objects(
        store,
        api.cluster,
        api.node.name,
        host,
        security,
        credentials,
        encrypt=settings.object_transfer_encrypt,
        seal=settings.object_transfer_seal,
        quotas=_quotas(settings),
        replicas=settings.object_replicas,
    ) as authority:
        if authority is not None and store is not None:
            registered = controller.on_registered

            async def on_registered(known: bool) -> None:
                if registered is not None:
                    await registered(known)
                await announce_held(store, authority)

            controller.on_registered = on_registered
        yield


def _quotas(settings: Settings) -> QuotaFile:
    """The node's namespace quotas, for puts through its object transfer service."""
    from spear.node.quotas import QuotaFile
    from spear.transport.auth import AUTH_DIR

    return QuotaFile(settings.data_dir / AUTH_DIR)
