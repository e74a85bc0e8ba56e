"""`spear delete`: delete finished tasks' records, logs and results (the seed's "destroy").

    spear delete ID...                      # these finished tasks
    spear delete --older-than 7d            # every finished task that ended over 7 days ago
    spear delete --keep 1000                # all but the newest 1000 finished tasks

On the data dir's node or a daemon (`--node`), in the caller's namespace; a running task
is refused (stop it first). A node applies its own policy by itself (`task_retention_s`,
`task_retention_records`: docs/security.md).
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from spear.cli._common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    NodeOpt,
    emit_json,
    load_settings,
    on_node,
)
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from spear.node.api import NodeAPI

app = typer.Typer()

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_age(text: str) -> float:
    """Seconds in `text`: a number with an optional unit s, m, h or d ("7d", "90m")."""
    found = _AGE.fullmatch(text.strip().lower())
    if found is None:
        raise InvalidArgument(f"not an age: {text!r} (a number with s, m, h or d, e.g. 7d)")
    return float(found.group(1)) * _UNIT_S[found.group(2)]


@app.command(
    help="Delete finished tasks: their records, logs and results. Name them, or give "
    "--older-than and/or --keep."
)
def delete(
    task_ids: Annotated[
        list[str] | None, typer.Argument(metavar="[ID]...", help="Finished tasks to delete.")
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Every finished task that ended longer ago (7d, 12h)."),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option("--keep", min=0, help="Every finished task beyond the newest N."),
    ] = None,
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    ids = list(task_ids or ())
    age = None if older_than is None else parse_age(older_than)
    if not ids and age is None and keep is None:
        raise InvalidArgument("name the tasks to delete, or give --older-than or --keep")
    settings = load_settings(data_dir, config)

    async def go(api: NodeAPI) -> list[str]:
        return await api.delete_tasks(ids, older_than_s=age, keep=keep)

    gone: list[str] = on_node(settings, node, go)
    if as_json:
        emit_json({"deleted": gone})
        return
    for task_id in gone:
        sys.stdout.write(f"{task_id}\n")
    sys.stderr.write(f"deleted {len(gone)} task(s)\n")
