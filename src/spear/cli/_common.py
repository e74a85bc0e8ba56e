"""What the command modules share: options, settings, JSON output, error lines, and the
one way to reach a node (`connect`). Command modules import this and lower layers only;
app.py builds the typer app from them."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import typer

from spear.config import Settings
from spear.core.models import Task, TaskState
from spear.errors import Unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from spear.core.node import Spearlet
    from spear.node.api import NodeAPI

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $SPEAR_HOME, else XDG data dir)."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings file (TOML).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
NodeOpt = Annotated[
    str | None,
    typer.Option(
        "--node", envvar="SPEAR_NODE", help="A node daemon's HOST:PORT (default: this data dir's)."
    ),
]

# Where a daemon (`spear serve`) writes the address it bound, for commands on its data dir.
ADDRESS_FILE = "spearlet.addr"
SMS_ADDRESS_FILE = "sms.addr"


def load_settings(data_dir: Path | None, config: Path | None, **flags: Any) -> Settings:
    settings = Settings.load(config_file=config, data_dir=data_dir, **flags)
    from spear import _logging

    _logging.configure(settings)
    return settings


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def report_unsuccessful(task: Task) -> None:
    """One line on stderr for an ending that is not the guest's own exit status."""
    if (
        task.state is not TaskState.COMPLETED
        and task.reason
        and not task.reason.startswith("exit status")
    ):
        sys.stderr.write(f"spear: task {task.id} {task.state.value.lower()}: {task.reason}\n")


def write_through(stream: Any) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


def address_file(data_dir: Path) -> Path:
    return data_dir / ADDRESS_FILE


def read_address_file(data_dir: Path) -> str | None:
    """The address a daemon on this data dir wrote, if any."""
    try:
        text = address_file(data_dir).read_text().strip()
    except OSError:
        return None
    return text or None


@contextlib.asynccontextmanager
async def connect(settings: Settings, node: str | None) -> AsyncIterator[NodeAPI]:
    """The node to talk to, chosen once: `node` (HOST:PORT), else the daemon holding this
    data dir (DATA/spearlet.addr), else the data dir itself in this process."""
    address = node or read_address_file(settings.data_dir)
    if address is not None:
        from spear.node.client import Client  # (only then: it loads gRPC)

        client = Client(address)
        try:
            if node is None:  # found in the data dir: it may be stale (a killed daemon)
                try:
                    await client.node_info()
                except Unavailable:
                    address = None
            if address is not None:
                yield client
        finally:
            await client.aclose()
        if address is not None:
            return
    from spear.node.assembly import build_local_node
    from spear.node.inprocess import InProcessNode

    async with build_local_node(settings, hold_kv=False) as local:
        yield InProcessNode(local)


def on_node(settings: Settings, node: str | None, fn: Callable[[NodeAPI], Awaitable[Any]]) -> Any:
    """Run `fn` on the node `connect` picks."""

    async def main() -> Any:
        async with connect(settings, node) as api:
            return await fn(api)

    return anyio.run(main)


def on_local_node(
    settings: Settings, fn: Callable[[Spearlet], Awaitable[Any]], *, hold: bool = False
) -> Any:
    """Run `fn` on the data dir's node in this process (for what only it can do: gc)."""
    from spear.node.assembly import build_local_node

    async def main() -> Any:
        async with build_local_node(settings, hold_kv=hold) as node:
            return await fn(node)

    return anyio.run(main)
