"""Distributed mode from the command line: the SMS daemon, a SPEARlet joining a cluster,
`spear nodes`.

    spear serve --role sms [--listen HOST:PORT] [--kv leveldb:PATH | --kv etcd://HOST:PORT,...]
    spear serve --role spearlet --sms HOST:PORT
    spear nodes [--sms HOST:PORT] [--json]

`spear serve` itself lives in cli_serve.py; it calls `serve_sms` and `joined_cluster` here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import typer
from loguru import logger

from spear.cli.app import ConfigOpt, DataDirOpt, JsonOpt, app
from spear.config import Settings
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from spear.core.cluster import NodeRecord
    from spear.core.node import Spearlet
    from spear.core.node_controller import NodeController
    from spear.node.inprocess import InProcessNode
    from spear.store.kv import KV

SMS_ADDRESS_FILE = "sms.addr"


# -- the SMS --------------------------------------------------------------------------


async def open_sms_kv(spec: str | None, data_dir: Path) -> KV:
    """`leveldb:PATH`, `etcd://HOST:PORT[,...]`, or None: LevelDB at DATA/sms.ldb."""
    if spec is None or spec.startswith("leveldb:"):
        from spear.node.assembly import prepare_data_dir
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


async def serve_sms(settings: Settings, kv_spec: str | None) -> None:
    """Run the metadata server until SIGINT/SIGTERM; prints its bound address first."""
    from spear.core.cluster import ClusterTimings
    from spear.core.sms import MetadataServer
    from spear.transport.sms_server import SmsServer

    timings = ClusterTimings.from_extra(settings.extra)
    kv = await open_sms_kv(kv_spec, settings.data_dir)
    async with kv:
        sms = MetadataServer(kv, timings)
        server = SmsServer(sms)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            address = await server.start(settings.listen)
            addr_path = settings.data_dir / SMS_ADDRESS_FILE
            try:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                addr_path.write_text(address + "\n")
                sys.stdout.write(address + "\n")
                sys.stdout.flush()
                logger.info("SMS serving on {} (pid {})", address, os.getpid())
                from spear import web

                async with web.serving_sms(sms, settings, address), anyio.create_task_group() as tg:
                    tg.start_soon(sms.run_sweeper)
                    async for _ in signals:
                        break
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(OSError):
                        if addr_path.read_text().strip() == address:
                            addr_path.unlink()
                    await server.close()
    logger.info("SMS stopped")


# -- a SPEARlet in a cluster ------------------------------------------------------------


def node_name_for(settings: Settings) -> str:
    """The cluster-wide name: `node_name` if set, else host name + a digest of the data dir."""
    if settings.node_name != "local":
        return settings.node_name
    import hashlib

    digest = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


def node_labels(settings: Settings) -> tuple[tuple[str, str], ...]:
    """Labels from the settings file's `[labels]` table (or `labels = {k = "v"}`)."""
    raw = settings.extra.get("labels", {})
    if not isinstance(raw, dict):
        raise InvalidArgument("setting labels must be a table of name = value")
    return tuple(sorted((str(k), str(v)) for k, v in raw.items()))


def describe_node(node: Spearlet, address: str) -> NodeRecord:
    from spear.core.cluster import AgentInfo, NodeRecord
    from spear.runtimes.wasm.agent import wasmtime_version

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


def make_node_api(node: Spearlet, max_message_bytes: int = 0) -> InProcessNode:
    """The NodeAPI a daemon serves: a ClusterNode (scheduling, proxying) with `--sms`."""
    from spear.node.inprocess import InProcessNode

    settings = node.settings
    if not settings.sms:
        return InProcessNode(node, max_message_bytes=max_message_bytes)
    from spear.core.cluster import ClusterTimings
    from spear.core.scheduler import Scheduler
    from spear.node.assembly import build_cluster
    from spear.node.cluster import ClusterNode
    from spear.node.peer import Peers

    timings = ClusterTimings.from_extra(settings.extra)
    cluster = build_cluster(settings)
    assert cluster is not None
    peers = Peers(node.name)
    scheduler = Scheduler(node, cluster, peers.forward, node_labels(settings), timings.heartbeat_s)
    return ClusterNode(node, cluster, scheduler, peers, max_message_bytes=max_message_bytes)


def peer_services(api: InProcessNode) -> list[Any]:
    """The SpearletPeer service (forwarded tasks) for a ClusterNode; nothing in local mode."""
    from spear.node.cluster import ClusterNode

    if not isinstance(api, ClusterNode):
        return []
    from spear.core.artifacts import ArtifactStore
    from spear.node.peer import PeerService

    settings = api.node.settings
    artifacts = ArtifactStore(settings.data_dir / "artifacts", settings.object_max_bytes)
    return [PeerService(api.scheduler, artifacts)]


@contextlib.asynccontextmanager
async def joined_cluster(api: InProcessNode, address: str) -> AsyncIterator[NodeController | None]:
    """While inside, the node behind `api` (serving on `address`) is a cluster member:
    registered, heartbeating, reporting each task change, placing queued tasks.
    Nothing happens for a local-mode node."""
    from spear.core.cluster import ClusterTimings
    from spear.core.node_controller import NodeController
    from spear.core.task_reports import TaskReporter
    from spear.node.cluster import ClusterNode

    if not isinstance(api, ClusterNode):
        yield None
        return
    node, cluster = api.node, api.cluster
    timings = ClusterTimings.from_extra(node.settings.extra)

    def load() -> Any:
        return node.controller.free, node.controller.running_count, api.scheduler.queued

    controller = NodeController(cluster, lambda: describe_node(node, address), load, timings)
    reporter = TaskReporter(cluster, node.kv, node.tasks_store)
    controller.on_registered = reporter.resync
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(reporter.run)
            await tg.start(api.scheduler.run)
            await tg.start(controller.run)
            try:
                yield controller
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await controller.leave()
    finally:
        await api.peers.aclose()
        await cluster.aclose()


# -- spear nodes ---------------------------------------------------------------------------


def _cluster_nodes(settings: Settings, node: str | None) -> list[NodeRecord]:
    """Ask the SMS (--sms, SPEAR_SMS, DATA/sms.addr) or a SPEARlet (--node, SPEAR_NODE,
    DATA/spearlet.addr), in that order."""
    from spear.cli.serve import read_address_file

    sms = settings.sms
    if sms is None and node is None:
        try:
            sms = (settings.data_dir / SMS_ADDRESS_FILE).read_text().strip() or None
        except OSError:
            node = read_address_file(settings.data_dir)
    if sms is None and node is None:
        raise InvalidArgument(
            "no cluster to ask: pass --sms HOST:PORT or --node HOST:PORT (or set SPEAR_SMS)"
        )

    async def fetch() -> list[NodeRecord]:
        if sms is not None:
            from spear.transport.sms_client import SmsClient

            async with SmsClient(sms, timeout_s=10) as client:
                return await client.nodes()
        from spear.node.peer import Peers

        assert node is not None
        peers = Peers("cli")
        try:
            return await peers.cluster_nodes(node)
        finally:
            await peers.aclose()

    return anyio.run(fetch)


@app.command(help="List the nodes of the cluster (from the SMS, or through any SPEARlet).")
def nodes(
    sms: Annotated[
        str | None, typer.Option("--sms", help="Metadata server HOST:PORT [env: SPEAR_SMS].")
    ] = None,
    node: Annotated[
        str | None,
        typer.Option("--node", envvar="SPEAR_NODE", help="Any SPEARlet's HOST:PORT."),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = Settings.load(config_file=config, data_dir=data_dir, sms=sms)
    found = _cluster_nodes(settings, node if sms is None else None)
    if as_json:
        sys.stdout.write(json.dumps([n.to_json() for n in found], indent=2) + "\n")
        return
    rows = [("NAME", "HEALTH", "ADDRESS", "RUNNING", "FREE CPU", "FREE MEM", "SEEN", "LABELS")]
    now = time.time()
    for n in found:
        rows.append(
            (
                n.name,
                n.health.value,
                n.address,
                str(n.running_tasks),
                f"{n.free.cpu_millis}m",
                f"{n.free.memory_bytes // (1024 * 1024)}Mi",
                f"{max(0.0, now - n.last_heartbeat):.1f}s ago",
                ",".join(f"{k}={v}" for k, v in n.labels),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        sys.stdout.write("\n")


# -- spear cluster up / down ------------------------------------------------------------

cluster_app = typer.Typer(
    help="A development cluster on this machine: SMS + N SPEARlets on loopback.",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")


def _default_base() -> Path:
    return Path(os.environ.get("SPEAR_CLUSTER_DIR", "/tmp/spear-cluster"))


@cluster_app.command("up", help="Start an SMS and N SPEARlets; prints their addresses.")
def cluster_up(
    nodes: Annotated[int, typer.Option("--nodes", help="How many SPEARlets.")] = 3,
    etcd: Annotated[bool, typer.Option("--etcd", help="Keep the SMS's state in etcd.")] = False,
    base: Annotated[Path | None, typer.Option("--dir", help="State directory.")] = None,
    as_json: JsonOpt = False,
) -> None:
    from spear.node.local_cluster import STATE_FILE, LocalCluster

    if nodes < 1:
        raise InvalidArgument("--nodes must be at least 1")
    root = base or _default_base()
    if (root / STATE_FILE).exists():
        raise InvalidArgument(f"a cluster is already up under {root} (spear cluster down)")
    cluster = LocalCluster(root, nodes=nodes, etcd=etcd)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    assert cluster.sms is not None
    info = {
        "sms": cluster.sms.address,
        "etcd": cluster.etcd_process.url if cluster.etcd_process else None,
        "nodes": {m.name: m.address for m in cluster.members},
        "dir": str(root),
    }
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    sys.stdout.write(f"sms     {cluster.sms.address}\n")
    if info["etcd"]:
        sys.stdout.write(f"etcd    {info['etcd']}\n")
    for m in cluster.members:
        sys.stdout.write(f"{m.name:<7} {m.address}\n")
    sys.stdout.write(
        f"export SPEAR_SMS={cluster.sms.address} SPEAR_NODE={cluster.members[0].address}\n"
    )


@cluster_app.command("down", help="Stop the cluster `spear cluster up` started.")
def cluster_down(
    base: Annotated[Path | None, typer.Option("--dir", help="State directory.")] = None,
) -> None:
    from spear.node.local_cluster import stop_saved

    count = stop_saved(base or _default_base())
    sys.stdout.write(f"stopped {count} process(es)\n")
