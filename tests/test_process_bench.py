"""benchmarks/process_bench.py runs end to end and returns the runner's shape (tiny counts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import process_bench

if TYPE_CHECKING:
    import pytest


def test_process_bench_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        process_bench, "counts", lambda quick: {"cold": 2, "warm": 3, "throughput": 3}
    )
    result = process_bench.run(quick=True)
    latency = result["latency"]
    assert set(latency) == {
        "spear_process_cold",
        "spear_process_warm",
        "spear_process_reuse",
        "spear_process_exec",
    }
    for variant in ("spear_process_cold", "spear_process_warm", "spear_process_reuse"):
        assert latency[variant]["task"]["n"] in (2, 3)
        assert latency[variant]["task (imports SDK)"]["median_ms"] > 0
        assert result["throughput"][variant]["tasks"]["failed"] == 0
    assert result["baseline"]["python -c pass"]["n"] == 2
