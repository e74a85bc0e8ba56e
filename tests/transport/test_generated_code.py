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
        package = gen.GENERATED.joinpath(*proto.parent.parts) / "__init__.py"
        assert package.is_file(), proto
        assert proto.as_posix() in package.read_text().split("\n", 3)[1], proto  # "# sources:"
