"""What every benchmark shares: sample statistics, the machine's description, test modules."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
NOT_AVAILABLE = "not available yet"

# A WASI command module whose _start returns at once: the "trivial task".
TRIVIAL_WAT = '(module (memory (export "memory") 1) (func (export "_start")))'


def unique_trivial_wat(tag: int | str) -> str:
    """A trivial module no cache has seen: its bytes (and so its hash) differ by `tag`."""
    return (
        '(module (memory (export "memory") 1) '
        f'(data (i32.const 0) "spear-bench-{tag}-{time.time_ns()}") (func (export "_start")))'
    )


def sleeper_wat(nap_ms: int, naps: int) -> str:
    """A module that writes one byte to stdout, then sleeps `naps` x `nap_ms` (WASI poll_oneoff).

    The byte tells the benchmark the agent is up; sleeping in short naps keeps it
    cancellable (the epoch check runs between host calls).
    """
    ns = nap_ms * 1_000_000
    return f"""
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 200: {{ptr=300, len=1}}; the byte at 300
  (data (i32.const 300) "+")
  (func (export "_start")
    (local $i i32)
    (i32.store (i32.const 200) (i32.const 300))
    (i32.store (i32.const 204) (i32.const 1))
    (drop (call $write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 208)))
    ;; subscription at 0: userdata 0, tag 0 (clock), clock id 1 (monotonic), timeout, flags 0
    (i64.store (i32.const 0) (i64.const 0))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const {ns}))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (local.set $i (i32.const {naps}))
    (block $done
      (loop $nap
        (br_if $done (i32.eqz (local.get $i)))
        (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br $nap)))))
"""


def summarize(samples_s: list[float]) -> dict[str, Any]:
    """Median, p99 (nearest rank), mean, min and max of durations in seconds, as milliseconds."""
    if not samples_s:
        return {"n": 0}
    xs = sorted(samples_s)
    n = len(xs)

    def rank(q: float) -> float:
        return xs[min(n - 1, max(0, int(-(-q * n // 1)) - 1))]

    mid = n // 2
    median = xs[mid] if n % 2 else (xs[mid - 1] + xs[mid]) / 2
    return {
        "n": n,
        "median_ms": round(median * 1e3, 4),
        "p99_ms": round(rank(0.99) * 1e3, 4),
        "mean_ms": round(sum(xs) / n * 1e3, 4),
        "min_ms": round(xs[0] * 1e3, 4),
        "max_ms": round(xs[-1] * 1e3, 4),
    }


AT_ONCE_ROUNDS = 5  # batches "at once" timed in turn, each side alike: one is ~0.1 s


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median `tasks_per_s` among `rounds` (each a batch timed alone), with
    every round's rate beside it: one batch of 300 lasts ~0.1 s, within the machine's
    noise, so each side runs several and reports its median one."""
    ranked = sorted(rounds, key=lambda r: float(r["tasks_per_s"]))
    return {**ranked[len(ranked) // 2], "rounds_tasks_per_s": [r["tasks_per_s"] for r in rounds]}


def not_available(reason: str) -> dict[str, Any]:
    return {"status": NOT_AVAILABLE, "reason": reason}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def _git_commit() -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    proc = subprocess.run(
        [git, "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def machine() -> dict[str, Any]:
    """The machine and software a result was measured on."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "spear": _version("spear"),
        "spear_commit": _git_commit(),
        "wasmtime": _version("wasmtime"),
        "plyvel": _version("plyvel"),
        "ray": _version("ray"),
    }


def standalone(
    doc: str | None,
    run: Callable[[bool], dict[str, Any]],
    output: Path,
    argv: list[str] | None,
    quick_help: str = "fewer samples",
) -> dict[str, Any]:
    """A workload module run alone (`python -m benchmarks.X [--quick] [--output F]`):
    runs it, writes its results with the machine's description, returns them."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--output", type=Path, default=output)
    args = parser.parse_args(argv)
    result = {"machine": machine(), "quick": args.quick, **run(args.quick)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return result


def write_rounds(result: dict[str, Any], out: Path) -> None:
    """A rounds benchmark's `result` (with its "medians") written to `out` with when,
    how busy and on what it was measured; its medians printed."""
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["load_average"] = os.getloadavg()
    result["machine"] = machine()
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["medians"], indent=2))


def build_c(source: Path, out: Path) -> Path:
    """A C agent built to wasm32-wasi with clang, against the spear SDK header; raises
    RuntimeError (one line) if clang is missing or the build fails."""
    clang = shutil.which("clang")
    if clang is None:
        raise RuntimeError("clang is not installed (scripts/quickstart.sh installs it)")
    cmd = [clang, "--target=wasm32-wasi", "-O2", "-I", str(ROOT / "sdk" / "c")]
    proc = subprocess.run([*cmd, "-o", str(out), str(source)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building {source.name} failed: {proc.stderr.strip()[:300]}")
    return out


def build_hello(directory: Path) -> Path:
    """examples/hello/hello.c built to wasm32-wasi (see `build_c`)."""
    return build_c(ROOT / "examples" / "hello" / "hello.c", directory / "hello.wasm")
