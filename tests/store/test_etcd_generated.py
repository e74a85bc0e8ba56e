"""The etcd stubs (store/_etcd_gen/) are what `nox -s protos` makes from the vendored
protos, and the vendoring strips exactly the options it means to."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from conftest import assert_same_tree, load_tool

if TYPE_CHECKING:
    from pathlib import Path


def _generator() -> Any:
    return load_tool("gen_etcd_protos")


def test_generated_etcd_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    gen = _generator()
    fresh = tmp_path / "_etcd_gen"
    gen.generate(fresh)
    assert_same_tree(fresh, gen.GENERATED)


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
    """Importing spear's etcd client changes no sys.path and no other package's names, and
    loads one gRPC stack: grpc.aio's (issue 17, item 6), not grpclib."""
    code = (
        "import sys; before = list(sys.path); "
        "import spear.store.etcd, spear.store.etcd_election; "
        "assert sys.path == before, sys.path; "
        "assert 'etcd' not in sys.modules and 'google.api' not in sys.modules; "
        "assert 'grpclib' not in sys.modules, 'grpclib is loaded'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
