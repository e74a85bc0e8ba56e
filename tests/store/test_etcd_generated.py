"""The etcd stubs (store/_etcd_gen/) are what `nox -s protos` makes from the vendored
protos, and the vendoring strips exactly the options it means to."""

from __future__ import annotations

import filecmp
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "gen_etcd_protos", ROOT / "tools" / "gen_etcd_protos.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_etcd_protos"] = module
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_etcd_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    gen = _generator()
    fresh = tmp_path / "_etcd_gen"
    gen.generate(fresh)
    assert _files(fresh) == _files(gen.GENERATED), "run `nox -s protos` and commit the result"
    stale = [
        name
        for name in sorted(_files(fresh))
        if not filecmp.cmp(fresh / name, gen.GENERATED / name, shallow=False)
    ]
    assert not stale, f"stale generated files {stale}: run `nox -s protos` and commit them"


def test_strip_options_removes_gogoproto_and_http_annotations() -> None:
    gen = _generator()
    text = """syntax = "proto3";
package etcdserverpb;

import "gogoproto/gogo.proto";
import "etcd/mvcc/mvccpb/kv.proto";

// for grpc-gateway
import "google/api/annotations.proto";

option (gogoproto.marshaler_all) = true;

service Lease {
  rpc LeaseRevoke(LeaseRevokeRequest) returns (LeaseRevokeResponse) {
      option (google.api.http) = {
        post: "/v3/lease/revoke"
        body: "*"
        additional_bindings {
            post: "/v3/kv/lease/revoke"
            body: "*"
        }
    };
  }
}

message Member {
  uint64 ID = 1 [(gogoproto.nullable) = false];
}
"""
    stripped = gen.strip_options(text)
    assert "gogoproto" not in stripped and "google" not in stripped
    assert 'import "etcd/mvcc/mvccpb/kv.proto";' in stripped
    assert "rpc LeaseRevoke(LeaseRevokeRequest) returns (LeaseRevokeResponse) {" in stripped
    assert "uint64 ID = 1;" in stripped
    with pytest.raises(SystemExit, match="options left"):
        gen.strip_options("option (gogoproto.nullable_all) = { odd: 1 };\n// gogoproto\n")


def test_the_stubs_import_without_touching_the_process() -> None:
    """Importing spear's etcd client changes no sys.path and no other package's names."""
    code = (
        "import sys; before = list(sys.path); "
        "import spear.store.etcd, spear.store.etcd_election; "
        "assert sys.path == before, sys.path; "
        "assert 'etcd' not in sys.modules and 'google.api' not in sys.modules; "
        "assert 'grpc' not in sys.modules, 'grpcio is not needed at run time'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
