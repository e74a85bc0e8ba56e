"""Object-store commands that work on the local data dir: `spear obj gc`.

(`spear obj put|get|ls|rm|pin|unpin|ref|unref` live in cli_client.py: they reach a node
daemon or the data dir through the NodeAPI.)
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from spear.cli import ConfigOpt, DataDirOpt, JsonOpt, _emit_json, _run_on_node, _settings
from spear.cli_client import obj_app


@obj_app.command(
    "gc",
    help="Collect objects with no references and no pin that have been idle longer than "
    "the grace period (setting object_gc_grace_s), and orphaned value files.",
)
def obj_gc(
    grace: Annotated[
        float | None,
        typer.Option("--grace", help="Idle SECONDS before collection [default: the setting]."),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = _settings(data_dir, config)
    deleted: list[str] = _run_on_node(settings, lambda node: node.objects.collect(grace))
    if as_json:
        _emit_json({"collected": deleted})
        return
    for key in deleted:
        sys.stdout.write(f"{key}\n")
