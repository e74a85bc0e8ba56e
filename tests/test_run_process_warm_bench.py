"""benchmarks/run_process_warm.py runs end to end and returns its shape (tiny counts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import run_process_warm

if TYPE_CHECKING:
    import pytest


def test_run_process_warm_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_process_warm, "counts", lambda quick: {"per_round": 1, "rounds": 2})
    result = run_process_warm.run(quick=True)
    variants = result["variants"]
    assert set(variants) == {"join+thread", "join+loop", "spare+thread", "spare+loop"}
    for value in variants.values():
        assert value["task"]["n"] == 2
        assert value["node_cpu_ms_per_task"] > 0
    from spear.runtimes.process import loop_watch

    assert loop_watch.LOOP_WINDOW_S == 0.05  # (put back)
