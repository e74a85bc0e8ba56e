"""Two versions of spear side by side (`batch_cpu`, `results_cpu`): each version's `src/`
runs a measuring script in a process of its own (PYTHONPATH), in rounds that alternate
which version goes first, and the results file keeps every round and each figure's
median."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import ROOT

if TYPE_CHECKING:
    from collections.abc import Callable


def measure_in(src: str, script: str, *args: str, timeout_s: float = 900) -> dict[str, Any]:
    """Run `script` (python -c) with version `src` first on the path; the JSON object its
    last line of output prints."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(src).resolve()), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout_s,
    )
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def alternate(
    before: str, after: str, rounds: int, measure: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """`measure(src)` of each version `rounds` times, alternating which goes first; every
    round, and each figure's median (a dict of figures: each one's)."""
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for i in range(rounds):
        order = [("before", before), ("after", after)]
        for name, src in order if i % 2 == 0 else order[::-1]:
            runs[name].append(measure(src))
            print(name, json.dumps(runs[name][-1]), flush=True)
    medians = {name: _medians(found) for name, found in runs.items()}
    return {"before": before, "after": after, "rounds": rounds, "medians": medians, "runs": runs}


def _medians(found: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, first in found[0].items():
        if isinstance(first, dict):
            out[key] = {k: statistics.median(r[key][k] for r in found) for k in first}
        else:
            out[key] = statistics.median(r[key] for r in found)
    return out


def main(
    argv: list[str] | None,
    doc: str | None,
    result_file: Path,
    counts: dict[str, int],
    run: Callable[[str, str, int, dict[str, int]], dict[str, Any]],
) -> int:
    """The command line of a two-version benchmark (`doc`: its module's docstring):
    BEFORE_SRC AFTER_SRC, --rounds, one flag per count (its default), --out; writes the
    results file and prints the medians."""
    import argparse

    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rounds", type=int, default=4)
    for name, default in counts.items():
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--out", type=Path, default=result_file)
    args = p.parse_args(argv)
    chosen = {name: getattr(args, name) for name in counts}
    result = {**run(args.before, args.after, args.rounds, chosen), **chosen}
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["load_average"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["medians"], indent=2))
    return 0
