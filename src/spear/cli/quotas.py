"""`spear quota set|ls|rm`: per-namespace quotas on a node (docs/security.md).

Like the tokens, they act on the data dir's quota file directly (owner-only, seen by a
running node within a second), so they need no running node.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from spear.cli._common import ConfigOpt, DataDirOpt, JsonOpt, emit_json, load_settings

if TYPE_CHECKING:
    from spear.node.quotas import Quota, QuotaFile

quota_app = typer.Typer(
    help="Per-namespace quotas: unfinished tasks at once, bytes of objects, bytes of logs.",
    no_args_is_help=True,
)


def _quotas(data_dir: DataDirOpt, config: ConfigOpt) -> QuotaFile:
    from spear.node.quotas import QuotaFile
    from spear.transport.auth import AUTH_DIR

    return QuotaFile(load_settings(data_dir, config).data_dir / AUTH_DIR)


@quota_app.command("set", help="Set a namespace's quotas (an unset one is no limit).")
def set_quota(
    namespace: Annotated[str, typer.Argument(help="The namespace.")],
    tasks: Annotated[
        int | None, typer.Option("--tasks", help="Unfinished tasks at once on this node.")
    ] = None,
    object_bytes: Annotated[
        str | None, typer.Option("--object-bytes", help="Bytes of objects kept (e.g. 512M).")
    ] = None,
    log_bytes: Annotated[
        str | None,
        typer.Option("--log-bytes", help="Bytes of task logs kept; then no new task (e.g. 1G)."),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from spear.config import parse_size
    from spear.node.quotas import Quota

    size = None if object_bytes is None else parse_size(object_bytes)
    logs = None if log_bytes is None else parse_size(log_bytes)
    quota = Quota(namespace, tasks=tasks, object_bytes=size, log_bytes=logs)
    _quotas(data_dir, config).set(quota)
    if as_json:
        emit_json(quota.to_json())
    else:
        sys.stdout.write(_line(quota))


def _line(quota: Quota) -> str:
    tasks = "-" if quota.tasks is None else str(quota.tasks)
    size = "-" if quota.object_bytes is None else str(quota.object_bytes)
    logs = "-" if quota.log_bytes is None else str(quota.log_bytes)
    return f"{quota.namespace:<24}{tasks:<8}{size:<16}{logs}\n"


@quota_app.command("ls", help="List the namespaces' quotas.")
def list_quotas(
    data_dir: DataDirOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    found = _quotas(data_dir, config).all()
    if as_json:
        emit_json([q.to_json() for q in found])
        return
    sys.stdout.write(f"{'NAMESPACE':<24}{'TASKS':<8}{'OBJECT BYTES':<16}LOG BYTES\n")
    for quota in found:
        sys.stdout.write(_line(quota))


@quota_app.command("rm", help="Remove a namespace's quotas (no limit).")
def remove(
    namespace: Annotated[str, typer.Argument(help="The namespace.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    gone = _quotas(data_dir, config).remove(namespace)
    if as_json:
        emit_json(gone.to_json())
    else:
        sys.stdout.write(f"removed the quotas of {gone.namespace}\n")
