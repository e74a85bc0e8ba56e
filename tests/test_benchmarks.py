"""The benchmark runner's plumbing: its CLI, and a real (tiny) spear-only run to JSON.

No timing is asserted: benchmarks write numbers to files, tests only check the files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import report
from benchmarks.common import summarize

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_the_workloads() -> None:
    proc = _bench("--help")
    assert proc.returncode == 0, proc.stderr
    for name in ("--quick", "--only", "latency", "throughput", "density", "cold_start"):
        assert name in proc.stdout


def test_unknown_workload_is_a_usage_error() -> None:
    proc = _bench("--only", "nonsense")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_a_tiny_spear_run_writes_valid_json(tmp_path: Path) -> None:
    proc = _bench(
        "--only",
        "latency",
        "--only",
        "cold_start",
        "--samples",
        "5",
        "--no-ray",
        "--no-chart",
        "--out",
        str(tmp_path),
        "--name",
        "smoke",
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert results["machine"]["cores"] >= 1 and results["machine"]["wasmtime"]
    task = results["workloads"]["latency"]["spear_wasm_inprocess"]["task"]
    assert task["n"] == 5 and 0 < task["median_ms"] <= task["p99_ms"]
    first = results["workloads"]["cold_start"]["spear_wasm_inprocess"]["first run"]
    assert first["n"] == 5
    # Ray was not run, and the results say so instead of showing a number.
    ray = results["workloads"]["latency"]["ray_remote_function"]
    assert ray["status"] == "not available yet" and "--no-ray" in ray["reason"]
    assert results["ratios"] == {}
    assert (
        "node.run() trivial module in process, warm (cached)" in results["issue2"]["measurements"]
    )
    assert (tmp_path / "smoke.md").read_text().startswith("Measured ")


def test_ratios_compare_shared_metrics_with_the_ray_reference() -> None:
    workloads = {
        "latency": {
            "spear_wasm_inprocess": {"task": summarize([0.001, 0.001, 0.002])},
            "spear_wasm_grpc": {"status": "not available yet", "reason": "x"},
            "ray_remote_function": {"task": summarize([0.002, 0.002, 0.004])},
        },
        "throughput": {
            "spear_wasm_inprocess": {"tasks": {"tasks_per_s": 3000.0}},
            "ray_remote_function": {"tasks": {"tasks_per_s": 1000.0}},
        },
    }
    out = report.ratios(workloads)
    median = next(r for r in out["latency"] if r["value"] == "median_ms")
    assert median["spear_over_ray"] == 0.5 and median["spear_better"]
    assert [r["spear"] for r in out["latency"]] == ["spear_wasm_inprocess"] * 2
    (tput,) = out["throughput"]
    assert tput["spear_advantage"] == 3.0 and tput["spear_better"]


def test_summarize_nearest_rank() -> None:
    s = summarize([i / 1000 for i in range(1, 101)])
    assert s["n"] == 100 and s["median_ms"] == 50.5 and s["p99_ms"] == 99.0
    assert summarize([]) == {"n": 0}
