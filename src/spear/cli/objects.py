"""`spear obj ...`: the object store's commands.

`put|get|ls|rm|pin|unpin|ref|unref` reach a node daemon or the data dir through the
NodeAPI (as the task commands in tasks.py do); `gc` works on the local data dir.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from spear.cli._common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    NodeOpt,
    emit_json,
    load_settings,
    on_local_node,
    on_node,
    printable,
)
from spear.errors import InvalidArgument, NotFound

obj_app = typer.Typer(help="The node's object store: put, get, ls, rm, pin, unpin, ref, unref.")


def _print_object(info: Any, as_json: bool) -> None:
    if as_json:
        emit_json(info.to_json())
    else:
        pin = " pinned" if info.pinned else ""
        key = printable(info.key)
        at = f" on {','.join(info.locations)}" if getattr(info, "locations", ()) else ""
        line = f"{key} version {info.version} {info.size} bytes {info.refs} refs{pin}{at}\n"
        sys.stdout.write(line)


@obj_app.command("put", help="Store FILE (or stdin with -) under KEY.")
def obj_put(
    key: str,
    file: Annotated[str, typer.Argument(help="A file, or - for stdin.")] = "-",
    expected_version: Annotated[
        int | None,
        typer.Option(
            "--if-version",
            "--expected-version",
            help="Write only if the object is at this version (0: only if it does not exist).",
        ),
    ] = None,
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)
    source = None if file == "-" else Path(file)
    # A pipe or a device (`<(cmd)`, /dev/stdin) is read through, as stdin is: only a
    # regular file has the size the node's own file path needs.
    regular = source is not None and source.is_file()
    if source is not None and not regular:
        if source.is_dir():
            raise InvalidArgument(f"{file} is a directory: give a file, or - for stdin")
        if not source.exists():
            raise NotFound(f"no such file: {file}")

    async def put(api: Any) -> Any:
        if regular and not api.in_process:  # (the file itself, where it can)
            assert source is not None
            return await api.put_object_file(key, source, expected_version=expected_version)
        try:
            data = sys.stdin.buffer.read() if source is None else source.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read {file}: {exc.strerror}") from None
        return await api.put_object(key, data, expected_version=expected_version)

    _print_object(on_node(settings, node, put), as_json)


@obj_app.command("get", help="Print the object KEY (or write it to -o FILE).")
def obj_get(
    key: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write it here.")] = None,
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)

    async def get(api: Any) -> Any:
        # (a daemon's: its object socket on this host, else its transfer service, else gRPC)
        return await api.get_object(key)

    data, info = on_node(settings, node, get)
    if as_json:
        emit_json({**info.to_json(), "data": data.decode("utf-8", errors="replace")})
    elif output is not None:
        output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


@obj_app.command("ls", help="List objects (whose key starts with PREFIX).")
def obj_ls(
    prefix: Annotated[str, typer.Argument()] = "",
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)
    found = on_node(settings, node, lambda api: api.list_objects(prefix))
    if as_json:
        emit_json([o.to_json() for o in found])
        return
    for info in found:
        _print_object(info, False)


@obj_app.command("rm", help="Delete the object KEY.")
def obj_rm(
    key: str,
    force: Annotated[
        bool, typer.Option("--force", help="Delete it even if it is pinned or referenced.")
    ] = False,
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)
    deleted = on_node(settings, node, lambda api: api.delete_object(key, force=force))
    if not deleted:  # (with --json too: the error is the JSON, and the exit code 66)
        raise NotFound(f"no such object: {key}")
    if as_json:
        emit_json({"key": key, "deleted": True})


def _object_op(name: str, help: str) -> None:
    def command(
        key: str,
        node: NodeOpt = None,
        data_dir: DataDirOpt = None,
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        settings = load_settings(data_dir, config)
        method = {
            "pin": "pin_object",
            "unpin": "unpin_object",
            "ref": "add_object_ref",
            "unref": "remove_object_ref",
        }[name]
        info = on_node(settings, node, lambda api: getattr(api, method)(key))
        if name == "unref" and info.refs == 0 and not info.pinned:
            # The last reference gone and no pin: the store deleted the object (say so,
            # rather than show the object as if it were still there).
            if as_json:
                emit_json({**info.to_json(), "deleted": True})
            else:
                sys.stdout.write(f"{printable(key)}: last reference removed; deleted\n")
            return
        _print_object(info, as_json)

    obj_app.command(name, help=help)(command)


_object_op("pin", "Pin KEY: it is never collected.")
_object_op("unpin", "Unpin KEY.")
_object_op("ref", "Add a reference to KEY.")
_object_op("unref", "Remove a reference from KEY.")


@obj_app.command(
    "gc",
    help="Collect objects with no references and no pin that have been idle longer than "
    "the grace period (setting object_gc_grace_s), and orphaned value files.",
)
def obj_gc(
    grace: Annotated[
        float | None,
        typer.Option("--grace", help="Idle SECONDS before collection (default: the setting)."),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)
    deleted: list[str] = on_local_node(settings, lambda node: node.objects.collect(grace))
    if as_json:
        emit_json({"collected": deleted})
        return
    for key in deleted:
        sys.stdout.write(f"{key}\n")
