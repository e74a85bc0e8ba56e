"""What the command modules share: options, settings, JSON output, error lines, and the
one way to reach a node (`connect`). Command modules import this and lower layers only;
app.py builds the typer app from them."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from spear.config import Settings
    from spear.core.models import Task
    from spear.core.node import Spearlet
    from spear.node.api import NodeAPI
    from spear.tracing.base import Tracing

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="SPEAR_HOME",
        help="Data directory: tasks, logs, objects, caches (default: $XDG_DATA_HOME/spear).",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="SPEAR_CONFIG",
        help="The settings file (TOML) to read instead of $XDG_CONFIG_HOME/spear/config.toml "
        "and DATA/config.toml.",
    ),
]


class _Output:
    json = False  # --json was given: an error is reported as JSON on stdout too


def _json_given(value: bool) -> bool:
    _Output.json = _Output.json or value
    return value


JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", callback=_json_given, help="Print one JSON document for machines (see README)."
    ),
]


def json_requested() -> bool:
    return _Output.json


NodeOpt = Annotated[
    str | None,
    typer.Option(
        "--node",
        envvar="SPEAR_NODE",
        help="A node daemon's HOST:PORT, or several comma-separated to fail over between "
        "(default: this data dir's).",
    ),
]


def choice(*values: str, case_sensitive: bool = True) -> Any:
    """A click type taking one of `values` (help lists them; the parser checks them)."""
    import click

    return click.Choice(values, case_sensitive=case_sensitive)


# Where a daemon (`spear serve`) writes the address it bound, for commands on its data dir.
ADDRESS_FILE = "spearlet.addr"
SMS_ADDRESS_FILE = "sms.addr"


def load_settings(data_dir: Path | None, config: Path | None, **flags: Any) -> Settings:
    from spear.config import Settings

    settings = Settings.load(config_file=config, data_dir=data_dir, **flags)
    from spear import _logging

    _logging.configure(settings)
    return settings


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def printable(text: str) -> str:
    """`text` for a terminal: control characters (an escape sequence in an object key, a
    newline) written as escapes, so what is printed is what is stored, and inert."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def report_unsuccessful(task: Task) -> None:
    """One line on stderr for an ending that is not the guest's own exit status."""
    from spear.core.models import TaskState

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
        from spear.errors import Unavailable
        from spear.node.client import Client  # (only then: it loads gRPC)
        from spear.node.failover import DEFAULT_RETRIES
        from spear.transport.channels import Credentials

        # (A daemon found in the data dir is probed once: it may be gone, and then this
        # process is the node. One named with --node is retried and failed over.)
        client = Client(
            address,
            credentials=Credentials.for_settings(settings),
            retries=0 if node is None else DEFAULT_RETRIES,
            tracing=client_tracing(settings),
        )
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
            if client.tracing is not None:  # the submit's span exported before exiting
                client.tracing.shutdown()
        if address is not None:
            return
    from spear.node.assembly import build_local_node
    from spear.node.inprocess import InProcessNode
    from spear.node.namespaced import NamespacedNode

    async with build_local_node(settings, hold_kv=False) as local:
        # The data dir as a client of its daemon would see it: one namespace, results/
        # written only by the node.
        yield NamespacedNode(InProcessNode(local), settings.namespace or "default")


def client_tracing(settings: Settings) -> Tracing | None:
    """The CLI's tracer (docs/observability.md): None, importing nothing, unless set."""
    if not settings.trace_otlp_endpoint:
        return None
    from spear.tracing.setup import build_tracing

    return build_tracing(settings.trace_otlp_endpoint, "spear-cli")


def on_node(settings: Settings, node: str | None, fn: Callable[[NodeAPI], Awaitable[Any]]) -> Any:
    """Run `fn` on the node `connect` picks."""
    import anyio

    async def main() -> Any:
        async with connect(settings, node) as api:
            return await fn(api)

    return anyio.run(main)


def on_local_node(
    settings: Settings, fn: Callable[[Spearlet], Awaitable[Any]], *, hold: bool = False
) -> Any:
    """Run `fn` on the data dir's node in this process (for what only it can do: gc)."""
    import anyio

    from spear.node.assembly import build_local_node

    async def main() -> Any:
        async with build_local_node(settings, hold_kv=hold) as node:
            return await fn(node)

    return anyio.run(main)


class Progress:
    """A spinner on stderr while a wait lasts longer than a moment, on a terminal only.

    A thread draws it, so it serves synchronous waits (`cluster up`) and async ones alike;
    `done()` clears it early (when the wait is over before the block is).
    """

    DELAY_S = 0.3  # waits shorter than this show nothing

    def __init__(self, label: str | Callable[[], str], enabled: bool = True) -> None:
        self._label = label if callable(label) else (lambda: label)
        self._on = enabled and sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self._on:
            self._thread = threading.Thread(target=self._spin, name="spear-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()

    def done(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None

    def _spin(self) -> None:
        start = time.monotonic()
        if self._stop.wait(self.DELAY_S):
            return
        for frame in itertools.cycle("|/-\\"):
            sys.stderr.write(f"\r{frame} {self._label()} {time.monotonic() - start:.1f}s\x1b[K")
            sys.stderr.flush()
            if self._stop.wait(0.1):
                break
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
