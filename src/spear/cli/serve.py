"""`spear serve`: a node as a daemon (seed §7.1).

    spear serve --role spearlet [--listen HOST:PORT] [--data-dir DIR]

Prints the address it bound on stdout once it serves (port 0 picks a free port) and writes
it to DATA/spearlet.addr, where client commands on the same data dir find it. The first
SIGINT/SIGTERM drains: no new tasks, running ones get `--drain-timeout` seconds to finish,
then the rest are stopped and marked; a second signal skips the wait.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Annotated

import anyio
import typer
from loguru import logger

from spear.cli.app import ConfigOpt, DataDirOpt, JsonOpt, app
from spear.config import Settings, parse_size
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from spear.core.tasks import TasksFinished
    from spear.node.inprocess import InProcessNode
    from spear.node.server import SpearletServer

ADDRESS_FILE = "spearlet.addr"
_REPORT_INTERVAL_S = 60.0


def address_file(data_dir: Path) -> Path:
    return data_dir / ADDRESS_FILE


@app.command(
    help="Run a node as a daemon serving the gRPC API. Prints its address once ready; "
    "SIGINT/SIGTERM drain it (a second signal stops at once)."
)
def serve(
    role: Annotated[str, typer.Option("--role", help="What to run: spearlet or sms.")] = "spearlet",
    kv: Annotated[
        str | None,
        typer.Option("--kv", help="SMS store: leveldb:PATH or etcd://HOST:PORT[,...]."),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option("--listen", help="HOST:PORT to serve on; port 0 picks a free port."),
    ] = None,
    sms: Annotated[
        str | None, typer.Option("--sms", help="Metadata server HOST:PORT (distributed mode).")
    ] = None,
    http: Annotated[
        str | None,
        typer.Option("--http", help="HOST:PORT of the dashboard and /metrics, or off."),
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="Seconds running tasks get to finish.")
    ] = 30.0,
    max_message: Annotated[
        str, typer.Option("--max-message-size", help="Largest gRPC message, e.g. 4M.")
    ] = "4M",
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING, ERROR.")
    ] = None,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="text or json (one object a line).")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    if log_level is not None and log_level.upper() not in (
        "TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL",
    ):  # fmt: skip
        raise InvalidArgument(f"--log-level: unknown level {log_level!r}")
    settings = Settings.load(
        config_file=config,
        data_dir=data_dir,
        listen=listen,
        sms=sms,
        http_listen=http,
        log_level=log_level,
        log_format=log_format,
    )
    if drain_timeout < 0:
        raise InvalidArgument("--drain-timeout must not be negative")
    max_message_bytes = parse_size(max_message)
    if max_message_bytes < 64 * 1024:
        raise InvalidArgument("--max-message-size must be at least 64K")
    from spear import _logging
    from spear.transport.serving import parse_listen

    parse_listen(settings.listen)  # a bad address fails before the data dir is opened
    from spear.web import check_http_listen

    check_http_listen(settings.http_listen)
    _logging.configure(settings)
    if role == "sms":  # distributed mode: cli_cluster.py
        from spear.cli.cluster import serve_sms

        anyio.run(serve_sms, settings, kv)
        return
    if role != "spearlet":
        raise InvalidArgument(f"--role: unknown role {role!r} (one of: spearlet, sms)")
    if kv is not None:
        raise InvalidArgument("--kv is for --role sms")
    anyio.run(_serve_spearlet, settings, drain_timeout, max_message_bytes, as_json)


async def _serve_spearlet(
    settings: Settings, drain_s: float, max_message_bytes: int, as_json: bool = False
) -> None:
    from spear.node.assembly import build_local_node
    from spear.node.server import serve_spearlet

    if settings.sms:  # distributed mode: a cluster-wide node name (cli_cluster.py)
        import dataclasses

        from spear.cli.cluster import node_name_for

        settings = dataclasses.replace(settings, node_name=node_name_for(settings))
    node = build_local_node(settings, hold_kv=True)
    node.controller.add_finished_hook(_log_finished)
    async with node:
        from spear.cli.cluster import joined_cluster, make_node_api, peer_services

        api = make_node_api(node)  # an InProcessNode; with --sms one that schedules/proxies
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            server = await serve_spearlet(
                api,
                settings.listen,
                max_message_bytes=max_message_bytes,
                extra_services=peer_services(api),
            )
            assert server.address is not None
            addr_path = address_file(settings.data_dir)
            try:
                _write_atomically(addr_path, server.address + "\n")
                _announce(server.address, node.name, settings, as_json)
                logger.info(
                    "node {} serving on {} (data dir {}, pid {})",
                    node.name, server.address, settings.data_dir, os.getpid(),
                )  # fmt: skip
                from spear import web

                async with web.serving(api, settings), joined_cluster(api, server.address):
                    await _run_until_signalled(api, server, signals, drain_s)
            finally:
                with anyio.CancelScope(shield=True):
                    _remove_if_ours(addr_path, server.address)
                    await server.close()
        # (Outside any scope of ours: the node's task group must close where it opened.)
        await node.shutdown("the node shut down before the task finished")


async def _run_until_signalled(
    api: InProcessNode, server: SpearletServer, signals: AsyncIterator[int], drain_s: float
) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_report_resources, api)
        async for signum in signals:
            logger.info("{}: draining (up to {}s for running tasks)", signal.Signals(signum).name,
                        drain_s)  # fmt: skip
            break
        tg.cancel_scope.cancel()
    server.set_serving(False)
    async with anyio.create_task_group() as tg:

        async def force() -> None:
            async for signum in signals:
                logger.warning("{} again: stopping without waiting", signal.Signals(signum).name)
                tg.cancel_scope.cancel()
                return

        tg.start_soon(force)
        await api.drain(drain_s)
        tg.cancel_scope.cancel()


async def _log_finished(finished: TasksFinished) -> None:
    for task in finished.tasks:
        logger.info(
            "task {} {} (exit code {}){}",
            task.id, task.state.value, task.exit_code, f": {task.reason}" if task.reason else "",
        )  # fmt: skip


async def _report_resources(api: InProcessNode) -> None:
    """The system log's resource report: capacity, free and running tasks, periodically."""
    while True:
        info = await api.node_info()
        logger.info(
            "resources: {} running, free {}m CPU / {} bytes of {}m / {} bytes",
            info.running_tasks, info.free.cpu_millis, info.free.memory_bytes,
            info.capacity.cpu_millis, info.capacity.memory_bytes,
        )  # fmt: skip
        await anyio.sleep(_REPORT_INTERVAL_S)


def _announce(address: str, name: str, settings: Settings, as_json: bool) -> None:
    """The one line on stdout that says the node serves: its address (or JSON about it)."""
    if as_json:
        info = {"address": address, "node": name, "pid": os.getpid(),
                "data_dir": str(settings.data_dir)}  # fmt: skip
        sys.stdout.write(json.dumps(info) + "\n")
    else:
        sys.stdout.write(address + "\n")
    sys.stdout.flush()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _remove_if_ours(path: Path, address: str) -> None:
    try:
        if path.read_text().strip() == address:
            path.unlink()
    except OSError:
        pass


def read_address_file(data_dir: Path) -> str | None:
    """The address a daemon on this data dir wrote, if any."""
    try:
        text = address_file(data_dir).read_text().strip()
    except OSError:
        return None
    return text or None
