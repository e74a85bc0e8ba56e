#!/usr/bin/env python3
"""Runtime adapter for the public WASI test suite (WebAssembly/wasi-testsuite).

    python3 test-runner/wasi_test_runner.py -r /path/to/spear/tools/wasi_testsuite_adapter.py \
        -t tests/c/testsuite/ tests/rust/testsuite/ tests/assemblyscript/testsuite/

The runner calls this script with --version, or with --test-file, --arg, --env and --dir;
it translates them into one `spear run` and passes the exit code through. Tasks go to
$SPEAR_HOME if set, else to a temporary data dir per call.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--version", action="store_true")
    parser.add_argument("--test-file")
    parser.add_argument("--arg", action="append", default=[])
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--dir", action="append", default=[])
    args = parser.parse_args()
    spear = [sys.executable, "-m", "spear"]
    if args.version:
        out = subprocess.run([*spear, "version"], capture_output=True, text=True, check=True)
        fields = out.stdout.split()
        sys.stdout.write(f"spear {fields[1]}\n")
        return 0
    if not args.test_file:
        parser.error("--test-file is required")
    command = [*spear, "run"]
    for env in args.env:
        command += ["--env", env]
    for directory in args.dir:
        command += ["--dir", directory]
    command += [args.test_file, "--", *args.arg]
    if os.environ.get("SPEAR_HOME"):
        return subprocess.run(command).returncode
    with tempfile.TemporaryDirectory(prefix="spear-wasi-") as home:
        return subprocess.run(command, env={**os.environ, "SPEAR_HOME": home}).returncode


if __name__ == "__main__":
    sys.exit(main())
