"""Generate spear's etcd client stubs (src/spear/store/_etcd_gen/) from etcd's own API protos.

Two steps:

- `vendor`: copy the API protos spear uses (KV, Watch, Lease, Cluster, Maintenance, Auth
  from rpc.proto; the v3election service) out of Debian's `golang-etcd-server-dev`
  (etcd 3.4, the same version as the `etcd-server` the tests run) into tools/etcd_protos/,
  stripping the gogoproto and google.api options: they only steer Go code generation and
  the HTTP gateway, and need protos that are not in the package. Run it when Debian's etcd
  moves: `python tools/gen_etcd_protos.py vendor [ETCD_SOURCE_DIR]`.
- `generate` (the default, run by `nox -s protos`): betterproto2 messages with grpclib
  async stubs from the vendored protos, so etcd speaks over the same gRPC stack as the rest
  of spear. tests/store/test_etcd_generated.py fails when the committed output is stale.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDORED = ROOT / "tools" / "etcd_protos"
GENERATED = ROOT / "src" / "spear" / "store" / "_etcd_gen"
DEBIAN_SOURCE = Path("/usr/share/gocode/src/go.etcd.io/etcd")
OPTIONS = "client_generation=async,server_generation=none"
# Import paths as etcd's own protos spell them ("etcd/mvcc/mvccpb/kv.proto").
API_PROTOS = (
    "etcd/mvcc/mvccpb/kv.proto",
    "etcd/auth/authpb/auth.proto",
    "etcd/etcdserver/etcdserverpb/rpc.proto",
    "etcd/etcdserver/api/v3election/v3electionpb/v3election.proto",
)
_HEADER = (
    "// Vendored from etcd {version} (Apache-2.0) by tools/gen_etcd_protos.py: gogoproto and\n"
    "// google.api options stripped, nothing else changed.\n"
)

_IMPORT = re.compile(r'^\s*import\s+"(gogoproto/gogo|google/api/annotations)\.proto";\s*\n', re.M)
_FILE_OPTION = re.compile(r"^\s*option\s+\(gogoproto\.[^)]*\)\s*=\s*[^;]*;\s*\n", re.M)
_HTTP_OPTION = re.compile(r"option\s+\(google\.api\.http\)\s*=\s*\{")
_FIELD_OPTION = re.compile(r"\s*\[\s*\(gogoproto\.[^\]]*\]")


def strip_options(text: str) -> str:
    """etcd's proto text without gogoproto and google.api options (and their imports)."""
    text = _IMPORT.sub("", text).replace("// for grpc-gateway\n", "")
    text = _FILE_OPTION.sub("", text)
    while match := _HTTP_OPTION.search(text):  # its value nests braces: count them
        depth, end = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        end = text.index(";", end) + 1
        text = text[: match.start()].rstrip(" ") + text[end:].lstrip(" ")
    text = _FIELD_OPTION.sub("", text)
    left = [m for m in ("gogoproto", "google.api") if m in text]
    if left:
        raise SystemExit(f"options left after stripping: {left}; update strip_options")
    return text


def vendor(source: Path = DEBIAN_SOURCE, version: str = "3.4") -> None:
    """Copy etcd's API protos from `source` (a checkout of go.etcd.io/etcd), stripped."""
    if not source.is_dir():
        raise SystemExit(f"no etcd source at {source} (apt-get install golang-etcd-server-dev)")
    if VENDORED.exists():
        shutil.rmtree(VENDORED)
    for name in API_PROTOS:
        target = VENDORED / name
        target.parent.mkdir(parents=True, exist_ok=True)
        original = (source / name.removeprefix("etcd/")).read_text()
        target.write_text(_HEADER.format(version=version) + strip_options(original))


def generate(out: Path = GENERATED) -> None:
    """Write the generated package for the vendored protos to `out` (replacing it)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{VENDORED}",
            f"--python_betterproto2_out={tmp}", f"--python_betterproto2_opt={OPTIONS}",
            *API_PROTOS,
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=VENDORED, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"protoc failed:\n{proc.stderr}")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp, out)


def _debian_version() -> str:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "golang-etcd-server-dev"],
        capture_output=True,
        text=True,
    )
    return proc.stdout.split("-")[0] if proc.returncode == 0 and proc.stdout else "3.4"


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["vendor"]:
        vendor(Path(args[1]) if len(args) > 1 else DEBIAN_SOURCE, _debian_version())
        args = []
    generate(Path(args[0]) if args else GENERATED)
    for path in sorted(GENERATED.rglob("*")):
        if path.is_file():
            sys.stdout.write(f"{path.relative_to(ROOT)}\n")
