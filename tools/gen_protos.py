"""Generate the gRPC code for every .proto under protos/ into src/spear/transport/_gen/.

betterproto2 messages with grpclib stubs (async client and server), plus one serialized
FileDescriptorSet (`descriptors.binpb`) that server reflection serves; and protobuf's own
messages (`pb/spearlet_pb2.py` and `pb/sms_pb2.py`, with their stubs `.pyi`) for the calls
where encoding costs count (RunTask, SubmitTasks, ForwardTasks, ReportTasks, CommitObject):
protobuf's C implementation is ten to a hundred times faster.
Run through `nox -s protos`; tests/transport/test_generated_code.py fails when the
committed output is stale.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED = ROOT / "src" / "spear" / "transport" / "_gen"
DESCRIPTORS = "descriptors.binpb"
OPTIONS = "client_generation=async,server_generation=async"
# Compiled with protobuf's own generator as well, flat into pb/ (an import of another of
# them is rewritten to name it there: see `_flat_imports`).
PROTOBUF_FILES = (
    "spear/v1/spearlet.proto",
    "spear/v1/sms.proto",
    "spear/v1/peer.proto",
    "spear/v1/vectors.proto",
)
_PB_PACKAGE = "spear.transport._gen.pb"


def proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def generate(out: Path) -> None:
    """Write the generated package for every proto file to `out` (replacing its contents)."""
    files = proto_files()
    if not files:
        raise SystemExit(f"no .proto files under {PROTOS}")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
            f"--python_betterproto2_out={tmp}", f"--python_betterproto2_opt={OPTIONS}",
            f"--descriptor_set_out={Path(tmp) / DESCRIPTORS}", "--include_imports",
            *(str(f.relative_to(PROTOS)) for f in files),
        ]  # fmt: skip
        pb = Path(tmp) / "pb"
        pb.mkdir()
        protobuf_cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
            f"--python_out={pb}", f"--pyi_out={pb}", *PROTOBUF_FILES,
        ]  # fmt: skip
        for command in (cmd, protobuf_cmd):
            proc = subprocess.run(command, cwd=PROTOS, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"protoc failed:\n{proc.stderr}")
        for made in list(pb.rglob("*_pb2.py*")):  # flat: pb/spearlet_pb2.py
            made.write_text(_flat_imports(made.read_text()))
            made.rename(pb / made.name)
        shutil.rmtree(pb / "spear")
        doc = '"""protobuf\'s messages for spear.v1 (see gen_protos.py)."""\n'
        (pb / "__init__.py").write_text(doc)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp, out)


def _flat_imports(source: str) -> str:
    """protoc writes `from spear.v1 import spearlet_pb2` for an imported proto, a package
    that does not exist here (`spear` is ours): name the flat module in pb/ instead."""
    return source.replace("from spear.v1 import ", f"from {_PB_PACKAGE} import ")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else GENERATED)
    for path in sorted(GENERATED.rglob("*")):
        if path.is_file():
            sys.stdout.write(f"{path.relative_to(ROOT)}\n")
