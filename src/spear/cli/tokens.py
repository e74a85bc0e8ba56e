"""`spear token create|ls|rm`: the tokens a node accepts (docs/security.md).

They act on the data dir's token file directly (owner-only, read by the node within a
second of a change), so they need no running node and no credential but file access.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from spear.cli._common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    emit_json,
    load_settings,
)

token_app = typer.Typer(
    help="Tokens this node accepts: create one per user or program, with a role.",
    no_args_is_help=True,
)


@token_app.command("create", help="Make a token; it is printed once and never stored.")
def create(
    name: Annotated[str, typer.Argument(help="Who it is for (shown in `ls` and the log).")],
    role: Annotated[str, typer.Option("--role", help="reader, submitter or admin.")] = "submitter",
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            help="The one namespace it may act in (default: 'default'; an admin's: any).",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from spear.transport.auth import Role, TokenStore

    settings = load_settings(data_dir, config)
    token = TokenStore(settings.data_dir).issue(name, Role.parse(role), namespace)
    if as_json:
        emit_json({"name": name, "role": role.lower(), "namespace": namespace, "token": token})
    else:
        sys.stdout.write(token + "\n")


@token_app.command("ls", help="List the tokens (never their secrets).")
def list_tokens(
    data_dir: DataDirOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    from spear.transport.auth import TokenStore

    settings = load_settings(data_dir, config)
    found = TokenStore(settings.data_dir).tokens()
    if as_json:
        emit_json([t.to_json() for t in found])
        return
    sys.stdout.write(f"{'ID':<10}{'ROLE':<11}{'NAMESPACE':<16}{'CREATED':<21}NAME\n")
    for t in found:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.created_at))
        space = t.namespace or "*"
        sys.stdout.write(f"{t.id:<10}{t.role.name.lower():<11}{space:<16}{created:<21}{t.name}\n")


@token_app.command("rm", help="Revoke a token by id, or every token with this name.")
def remove(
    which: Annotated[str, typer.Argument(help="A token's id or name.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from spear.transport.auth import TokenStore

    settings = load_settings(data_dir, config)
    gone = TokenStore(settings.data_dir).revoke(which)
    if as_json:
        emit_json([t.to_json() for t in gone])
    else:
        for t in gone:
            sys.stdout.write(f"revoked {t.id} ({t.name})\n")
