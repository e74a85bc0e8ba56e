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

from spear._logging import logger
from spear.cli._common import (
    SMS_ADDRESS_FILE,
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    address_file,
    choice,
)
from spear.config import LOG_FORMATS, LOG_LEVELS, Settings, parse_size
from spear.core.models import TaskState
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from spear.core.tasks import TasksFinished
    from spear.node.cluster import ClusterNode
    from spear.node.inprocess import InProcessNode
    from spear.node.server import SpearletServer

_REPORT_INTERVAL_S = 60.0

app = typer.Typer()


@app.command(
    help="Run a node as a daemon serving the gRPC API. Prints its address once ready; "
    "SIGINT/SIGTERM drain it (a second signal stops at once)."
)
def serve(
    role: Annotated[
        str,
        typer.Option(
            "--role",
            click_type=choice("spearlet", "sms"),
            help="What to run: a SPEARlet (a node that runs tasks) or the SMS (the cluster's "
            "metadata server).",
        ),
    ] = "spearlet",
    kv: Annotated[
        str | None,
        typer.Option("--kv", help="SMS store: leveldb:PATH or etcd://HOST:PORT[,...]."),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            envvar="SPEAR_LISTEN",
            help="HOST:PORT to serve on; port 0 picks a free port (default: 127.0.0.1:7070).",
        ),
    ] = None,
    sms: Annotated[
        str | None,
        typer.Option(
            "--sms",
            envvar="SPEAR_SMS",
            help="The SMS's HOST:PORT[,HOST:PORT...] (several SMS: it follows their leader).",
        ),
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
        str | None,
        typer.Option(
            "--log-level",
            envvar="SPEAR_LOG_LEVEL",
            click_type=choice(*LOG_LEVELS, case_sensitive=False),
            help="The system log's level (default: INFO).",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            envvar="SPEAR_LOG_FORMAT",
            click_type=choice(*LOG_FORMATS),
            help="text, or json (one object a line).",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Allow listening beyond loopback without TLS (docs/security.md).",
        ),
    ] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = Settings.load(
        config_file=config,
        data_dir=data_dir,
        listen=listen,
        sms=sms,
        http_listen=http,
        log_level=log_level,
        log_format=log_format,
        insecure=insecure or None,
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
    # The system log goes to DATA/logs/spear.log and to stderr (journald, a container's
    # log), in colour only on a terminal and without NO_COLOR (no-color.org).
    color = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    _logging.configure(settings, console=True, color=color)
    if role == "sms":  # distributed mode
        anyio.run(_serve_sms, settings, kv)
        return
    if kv is not None:
        raise InvalidArgument("--kv is for --role sms")
    anyio.run(_serve_spearlet, settings, drain_timeout, max_message_bytes, as_json)


async def _serve_spearlet(
    settings: Settings, drain_s: float, max_message_bytes: int, as_json: bool = False
) -> None:
    from spear.node.assembly import serving_node

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with serving_node(
            settings, max_message_bytes=max_message_bytes, on_finished=_log_finished
        ) as served:
            address, name = served.address, served.api.node.name
            addr_path = address_file(settings.data_dir)
            try:
                _write_atomically(addr_path, address + "\n")
                _announce(address, name, settings, as_json)
                logger.info(
                    "node {} serving on {} (data dir {}, pid {})",
                    name, address, settings.data_dir, os.getpid(),
                )  # fmt: skip
                from spear import web

                slots = getattr(served.server.service, "slots", None)  # quotas shared
                async with web.serving(served.api, settings, slots):
                    await _run_until_signalled(served.api, served.server, signals, drain_s)
            finally:
                _remove_if_ours(addr_path, address)


async def _run_until_signalled(
    api: InProcessNode | ClusterNode,
    server: SpearletServer,
    signals: AsyncIterator[int],
    drain_s: float,
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
    """The system log's line of each finished task; of a wave of several (a batch), the
    completed ones at debug level under one count at info (a line is ~16 us: a tenth of a
    short task's CPU), the others each at info."""
    tasks = finished.tasks
    several = len(tasks) > 1
    completed = 0
    for task in tasks:
        ok = task.state is TaskState.COMPLETED
        completed += ok
        (logger.debug if several and ok else logger.info)(
            "task {} {} (exit code {}){}",
            task.id, task.state.value, task.exit_code, f": {task.reason}" if task.reason else "",
        )  # fmt: skip
    if several:
        logger.info("{} tasks finished, {} completed", len(tasks), completed)


async def _report_resources(api: InProcessNode | ClusterNode) -> None:
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
        sys.stdout.write(json.dumps(info, sort_keys=True) + "\n")
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


async def _serve_sms(settings: Settings, kv_spec: str | None) -> None:
    """Run the metadata server until SIGINT/SIGTERM; prints its bound address first."""
    import contextlib

    from spear.node.assembly import serving_sms

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with serving_sms(settings, kv_spec) as served:
            address = served.address
            addr_path = settings.data_dir / SMS_ADDRESS_FILE
            try:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                addr_path.write_text(address + "\n")
                sys.stdout.write(address + "\n")
                sys.stdout.flush()
                logger.info("SMS serving on {} (pid {})", address, os.getpid())
                from spear import web

                async with web.serving_sms(served.metadata, settings, address):
                    async for _ in signals:
                        break
            finally:
                with contextlib.suppress(OSError):
                    if addr_path.read_text().strip() == address:
                        addr_path.unlink()
    logger.info("SMS stopped")
