"""Generate the gRPC code for every .proto under protos/ into src/spear/transport/_gen/.

betterproto2 messages with grpclib stubs (async client and server), plus one serialized
FileDescriptorSet (`descriptors.binpb`) that server reflection serves. Run through
`nox -s protos`; tests/transport/test_generated.py fails when the committed output is stale.
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
        proc = subprocess.run(cmd, cwd=PROTOS, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"protoc failed:\n{proc.stderr}")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp, out)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else GENERATED)
    for path in sorted(GENERATED.rglob("*")):
        if path.is_file():
            sys.stdout.write(f"{path.relative_to(ROOT)}\n")
