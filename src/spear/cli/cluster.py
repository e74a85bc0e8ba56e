"""Distributed mode from the command line: `spear nodes`, `spear cluster up|down`.

    spear nodes [--sms HOST:PORT] [--json]
    spear cluster up [--nodes N] [--etcd] [--etcd-members 1|3|5]

`spear serve --role sms|spearlet --sms HOST:PORT` lives in serve.py; what it assembles
(the SMS, a cluster member) is built in spear.node.assembly.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import typer

from spear.cli._common import (
    SMS_ADDRESS_FILE,
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    Progress,
    emit_json,
    read_address_file,
)
from spear.config import Settings
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from spear.core.cluster import NodeRecord

app = typer.Typer()

# -- spear nodes ---------------------------------------------------------------------------


def _cluster_nodes(settings: Settings, node: str | None) -> list[NodeRecord]:
    """Ask the SMS (--sms, SPEAR_SMS, DATA/sms.addr) or a SPEARlet (--node, SPEAR_NODE,
    DATA/spearlet.addr), in that order."""
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
        from spear.transport.channels import Credentials

        credentials = Credentials.for_settings(settings)
        if sms is not None:
            from spear.transport.sms_client import SmsClient

            async with SmsClient(sms, timeout_s=10, credentials=credentials) as client:
                return await client.nodes()
        from spear.node.peer import Peers

        assert node is not None
        peers = Peers("cli", credentials=credentials)
        try:
            return await peers.cluster_nodes(node)
        finally:
            await peers.aclose()

    return anyio.run(fetch)


@app.command(help="List the nodes of the cluster (from the SMS, or through any SPEARlet).")
def nodes(
    sms: Annotated[
        str | None, typer.Option("--sms", envvar="SPEAR_SMS", help="The SMS's HOST:PORT.")
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
        emit_json([n.to_json() for n in found])
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


def _default_base() -> Path:
    """The user's own (a shared /tmp path would mix users' clusters): DATA/cluster."""
    from spear.config import default_data_dir

    return default_data_dir(os.environ) / "cluster"


DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        envvar="SPEAR_CLUSTER_DIR",
        help="The cluster's state directory (default: the data dir's cluster/).",
    ),
]


@cluster_app.command("up", help="Start an SMS and N SPEARlets; prints their addresses.")
def cluster_up(
    nodes: Annotated[int, typer.Option("--nodes", help="How many SPEARlets.")] = 3,
    etcd: Annotated[bool, typer.Option("--etcd", help="Keep the SMS's state in etcd.")] = False,
    etcd_members: Annotated[
        int | None,
        typer.Option(
            "--etcd-members",
            help="With etcd: how many members, 1, 3 or 5, on etcd's fixed local ports "
            "(default 1; implies --etcd). Its data is kept under the cluster's dir.",
        ),
    ] = None,
    base: DirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from spear.node.local_cluster import STATE_FILE, LocalCluster

    if nodes < 1:
        raise InvalidArgument("--nodes must be at least 1")
    root = base or _default_base()
    if (root / STATE_FILE).exists():
        raise InvalidArgument(f"a cluster is already up under {root} (spear cluster down)")
    if etcd_members is not None and etcd_members not in (1, 3, 5):
        raise InvalidArgument("--etcd-members must be 1, 3 or 5")
    etcd = etcd or etcd_members is not None
    cluster = LocalCluster(
        root, nodes=nodes, etcd=etcd, etcd_members=(etcd_members or 1) if etcd else 0
    )
    try:
        with Progress(f"starting an SMS and {nodes} SPEARlet(s) under {root}", not as_json):
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
        emit_json(info)
        return
    sys.stdout.write(f"sms     {cluster.sms.address}\n")
    if info["etcd"]:
        sys.stdout.write(f"etcd    {info['etcd']}\n")
    for m in cluster.members:
        sys.stdout.write(f"{m.name:<7} {m.address}\n")
    # node-1's data dir: the CLI then finds its address, its certificate and the CA.
    sys.stdout.write(
        f"export SPEAR_HOME={cluster.members[0].data_dir} SPEAR_SMS={cluster.sms.address}\n"
    )


@cluster_app.command("down", help="Stop the cluster `spear cluster up` started.")
def cluster_down(base: DirOpt = None, as_json: JsonOpt = False) -> None:
    from spear.node.local_cluster import stop_saved

    count = stop_saved(base or _default_base())
    if as_json:
        emit_json({"stopped": count})
    else:
        sys.stdout.write(f"stopped {count} process(es)\n")


@cluster_app.command("init", help="Make the cluster's CA and this data dir's certificate.")
def cluster_init(
    name: Annotated[
        str | None, typer.Option("--name", help="This member's name (default: node_name).")
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="A name or address members reach it by (repeatable)."),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """CA in DATA/tls (ca.key stays here: issue every member's certificate from here)."""
    from spear.transport import tls

    settings = Settings.load(config_file=config, data_dir=data_dir)
    directory = settings.tls_files_dir
    member = name or settings.node_name
    tls.create_ca(directory)
    tls.issue(directory, member, directory, hosts=_hosts(host))
    if as_json:
        emit_json({"tls_dir": str(directory), "name": member})
    else:
        sys.stdout.write(f"cluster CA and certificate of {member} in {directory}\n")


@cluster_app.command("cert", help="Issue a member's certificate from this data dir's CA.")
def cluster_cert(
    name: Annotated[str, typer.Argument(help="The member's node name (or 'sms').")],
    out: Annotated[Path, typer.Option("--out", help="Where to write it (its DATA/tls).")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="A name or address members reach it by (repeatable)."),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from spear.transport import tls

    settings = Settings.load(config_file=config, data_dir=data_dir)
    tls.issue(settings.tls_files_dir, name, out, hosts=_hosts(host))
    if as_json:
        emit_json({"tls_dir": str(out), "name": name})
    else:
        sys.stdout.write(f"certificate for {name} in {out}\n")


def _hosts(given: list[str] | None) -> tuple[str, ...]:
    return ("127.0.0.1", "localhost", "::1", *(given or ()))
