"""The committed generated code is exactly what `nox -s protos` makes from protos/."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from typing import TYPE_CHECKING

import pytest
from conftest import ROOT

if TYPE_CHECKING:
    from pathlib import Path


def _load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "tools" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    gen = _load_generator()
    fresh = tmp_path / "_gen"
    gen.generate(fresh)
    committed = gen.GENERATED
    assert _files(fresh) == _files(committed), "run `nox -s protos` and commit the result"
    stale = [
        name for name in sorted(_files(fresh))
        if not filecmp.cmp(fresh / name, committed / name, shallow=False)
    ]  # fmt: skip
    assert not stale, f"stale generated files {stale}: run `nox -s protos` and commit them"


def test_every_proto_is_generated() -> None:
    gen = _load_generator()
    protos = [p.relative_to(gen.PROTOS) for p in gen.proto_files()]
    assert any(p.name == "spearlet.proto" for p in protos)
    for proto in protos:
        package = gen.GENERATED.joinpath(*proto.parent.parts) / "__init__.py"
        assert package.is_file(), proto
        assert proto.as_posix() in package.read_text().split("\n", 3)[1], proto  # "# sources:"
