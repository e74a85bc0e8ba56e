"""The committed generated code is exactly what `nox -s protos` makes from protos/."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from conftest import assert_same_tree, load_tool

if TYPE_CHECKING:
    from pathlib import Path


def _load_generator() -> Any:
    return load_tool("gen_protos")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    gen = _load_generator()
    fresh = tmp_path / "_gen"
    gen.generate(fresh)
    assert_same_tree(fresh, gen.GENERATED)


def test_every_proto_is_generated() -> None:
    gen = _load_generator()
    protos = [p.relative_to(gen.PROTOS) for p in gen.proto_files()]
    assert any(p.name == "spearlet.proto" for p in protos)
    for proto in protos:
        module = gen.GENERATED / "pb" / f"{proto.stem}_pb2.py"
        assert module.is_file(), proto
        assert f"source: {proto.as_posix()}" in module.read_text(), proto


def test_services_come_from_the_generated_descriptors() -> None:
    """Each service of the protos is served and called through transport/services.py:
    every RPC has a Python name, its cardinality and its two message classes."""
    from spear.transport._gen.pb import peer_pb2, sms_pb2, spearlet_pb2, vectors_pb2
    from spear.transport.services import Cardinality, methods

    by_route = {
        m.route: m
        for module in (spearlet_pb2, sms_pb2, peer_pb2, vectors_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in methods(service)
    }
    run = by_route["/spear.v1.Spearlet/RunTask"]
    assert (run.name, run.cardinality) == ("run_task", Cardinality.UNARY_STREAM)
    assert (run.request, run.reply) == (spearlet_pb2.SubmitTaskRequest, spearlet_pb2.ResultChunk)
    call = by_route["/spear.v1.Spearlet/CallTask"]
    assert (call.name, call.cardinality) == ("call_task", Cardinality.UNARY_UNARY)
    assert (call.request, call.reply) == (run.request, run.reply)
    upload = by_route["/spear.v1.Spearlet/UploadArtifact"]
    assert (upload.name, upload.cardinality) == ("upload_artifact", Cardinality.STREAM_UNARY)
    exchange = by_route["/spear.v1.Spearlet/ExchangeStream"]
    assert exchange.cardinality == Cardinality.STREAM_STREAM
    commits = by_route["/spear.v1.MetadataServer/CommitObjects"]
    assert (commits.name, commits.reply) == ("commit_objects", sms_pb2.CommitObjectsResponse)
    assert by_route["/spear.v1.SpearletPeer/ListClusterNodes"].name == "list_cluster_nodes"
