"""`spear vec ...`: the vector store's commands (docs/toolkit.md).

They ask the node daemon named by `--node` (HOST:PORT, or several comma-separated to fail
over between), else the daemon of the data dir, over spear.v1.SpearletVectors (on a
cluster, that node forwards to the collection's home); with no daemon, they open the data
dir's collections in this process. Either way in the namespace of the credentials
(`SPEAR_NAMESPACE`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from spear.cli._common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    NodeOpt,
    emit_json,
    load_settings,
    read_address_file,
)
from spear.errors import InvalidArgument, Unavailable

if TYPE_CHECKING:
    from spear.config import Settings

# Records a request: a message stays well below gRPC's size limit (384 floats as JSON
# are ~8 KB a record).
UPSERT_BATCH = 500

vec_app = typer.Typer(help="Vector collections: create, ls, upsert, query, rm, count, drop.")


def _request(
    data_dir: Path | None, config: Path | None, node: str | None, request: dict[str, Any]
) -> Any:
    return _requests(data_dir, config, node, [request])[0]


def _requests(
    data_dir: Path | None, config: Path | None, node: str | None, requests: list[dict[str, Any]]
) -> list[Any]:
    """The answers to `requests`, in order, from the node `--node` names, else the data
    dir's daemon, else the data dir itself."""
    settings = load_settings(data_dir, config)
    found = node or read_address_file(settings.data_dir)
    if found is not None:
        try:
            return _ask_daemon(settings, found, requests)
        except _Unreachable as exc:
            if node is not None:  # (one found in the data dir may be a killed daemon's)
                raise exc.error from None
    from spear.toolkit.vectors import VectorStore

    store = VectorStore(settings.data_dir / "vectors")
    try:
        return [store.request(r, settings.namespace or "default") for r in requests]
    finally:
        store.close()


class _Unreachable(Exception):
    """No node named could be reached (not: a node answered with an error)."""

    def __init__(self, error: Unavailable) -> None:
        self.error = error


def _ask_daemon(settings: Settings, addresses: str, requests: list[dict[str, Any]]) -> list[Any]:
    """`requests` answered by the first of `addresses` that can be reached."""
    import anyio

    from spear.node.vector_peers import call_vectors, vectors_stub
    from spear.transport._status import received_error_code
    from spear.transport.aio_client import AioChannel
    from spear.transport.channels import Credentials

    credentials = Credentials.for_settings(settings)

    async def ask(address: str) -> list[Any]:
        channel = AioChannel.to(address, credentials)
        try:
            stub = vectors_stub(channel)
            return [await call_vectors(stub, address, r) for r in requests]
        except Unavailable as exc:
            if received_error_code.get() is not None:  # the node's own answer
                raise
            raise _Unreachable(exc) from None
        finally:
            await channel.aclose()

    candidates = [a.strip() for a in addresses.split(",") if a.strip()]
    for n, address in enumerate(candidates):
        try:
            return anyio.run(ask, address)
        except _Unreachable:
            if n == len(candidates) - 1:
                raise
    raise InvalidArgument(f"--node names no address: {addresses!r}")


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidArgument(f"{what} is not valid JSON") from None


@vec_app.command("create", help="Make a collection of DIM-dimensional vectors.")
def vec_create(
    name: str,
    dim: Annotated[int, typer.Option("--dim", help="The vectors' dimension.")],
    metric: Annotated[str, typer.Option(help="cos, ip or l2sq.")] = "cos",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    node: NodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    info = _request(
        data_dir, config, node, {"op": "create", "collection": name, "dim": dim, "metric": metric}
    )
    if as_json:
        emit_json(info)
    else:
        sys.stdout.write(f"{info['name']} dim {info['dim']} {info['metric']}\n")


@vec_app.command("ls", help="List the collections.")
def vec_ls(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    node: NodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    infos = _request(data_dir, config, node, {"op": "list"})
    if as_json:
        emit_json(infos)
        return
    for info in infos:
        where = f" on {info['node']}" if info.get("node") else ""
        if "unavailable" in info:
            sys.stdout.write(f"{info['name']}{where} unavailable: {info['unavailable']}\n")
        else:
            line = f"{info['name']} dim {info['dim']} {info['metric']} {info['count']}{where}"
            sys.stdout.write(line + "\n")


@vec_app.command("upsert", help="Insert or replace records from FILE (JSON lines, - stdin).")
def vec_upsert(
    name: str,
    file: Annotated[
        str, typer.Argument(help='{"id", "vector", "metadata"?, "text"?} a line')
    ] = "-",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    node: NodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {file}: {exc.strerror}") from None
    records = [
        _json_arg(line, f"line {n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()
    ]
    batches = [
        {"op": "upsert", "collection": name, "records": records[i : i + UPSERT_BATCH]}
        for i in range(0, len(records), UPSERT_BATCH)
    ] or [{"op": "upsert", "collection": name, "records": []}]
    count = sum(_requests(data_dir, config, node, batches))
    if as_json:
        emit_json({"upserted": count})
    else:
        sys.stdout.write(f"{count} record{'' if count == 1 else 's'}\n")


@vec_app.command("query", help="The K nearest records to a vector.")
def vec_query(
    name: str,
    vector: Annotated[str, typer.Option(help="The query vector, a JSON list.")],
    k: Annotated[int, typer.Option("-k", help="How many.")] = 10,
    where: Annotated[
        str | None, typer.Option("--filter", help='Metadata filter, JSON: {"lang": "en"}')
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    node: NodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    request = {
        "op": "query",
        "collection": name,
        "vector": _json_arg(vector, "--vector"),
        "k": k,
        "filter": None if where is None else _json_arg(where, "--filter"),
    }
    hits = _request(data_dir, config, node, request)
    if as_json:
        emit_json(hits)
        return
    for hit in hits:
        text = (hit["text"] or "").replace("\n", " ")[:60]
        sys.stdout.write(
            f"{hit['id']}\t{hit['distance']:.4f}\t{json.dumps(hit['metadata'])}\t{text}\n"
        )


@vec_app.command("rm", help="Delete records by id.")
def vec_rm(
    name: str,
    ids: list[str],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    node: NodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    gone = _request(data_dir, config, node, {"op": "delete", "collection": name, "ids": ids})
    if as_json:
        emit_json({"deleted": gone})
    else:
        sys.stdout.write(f"{gone} deleted\n")


@vec_app.command("count", help="How many records a collection holds.")
def vec_count(
    name: str,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    node: NodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    count = _request(data_dir, config, node, {"op": "count", "collection": name})
    if as_json:
        emit_json({"count": count})
    else:
        sys.stdout.write(f"{count}\n")


@vec_app.command("drop", help="Delete a whole collection.")
def vec_drop(
    name: str,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    node: NodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    _request(data_dir, config, node, {"op": "drop", "collection": name})
    if as_json:
        emit_json({"dropped": name})
