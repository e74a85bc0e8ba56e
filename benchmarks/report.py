"""Results: ratios spear/Ray, the JSON file, a markdown table and a PNG chart."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

# Per workload: the Ray variant spear's variants are compared with.
RAY_REFERENCE = {
    "latency": "ray_remote_function",
    "throughput": "ray_remote_function",
    "objects": "ray_put_get",
    "cold_start": "ray_new_function",
    "density": "ray_actors",
    "cluster": "ray_3_nodes",
}
# The values a ratio is taken of, and whether a smaller one is better.
COMPARED = {"median_ms": True, "p99_ms": True, "tasks_per_s": False, "per_GiB": False}


def _measured(value: Any) -> bool:
    return isinstance(value, dict) and "status" not in value


def ratios(workloads: dict[str, Any]) -> dict[str, Any]:
    """spear/Ray for every metric a spear variant shares with the workload's Ray reference."""
    out: dict[str, Any] = {}
    for name, variants in workloads.items():
        ref_name = RAY_REFERENCE.get(name)
        if not isinstance(variants, dict) or ref_name not in variants:
            continue
        ref = variants[ref_name]
        if not _measured(ref):
            continue
        for variant, metrics in variants.items():
            if not variant.startswith("spear") or not _measured(metrics):
                continue
            for metric, values in metrics.items():
                theirs = ref.get(metric)
                if not (_measured(values) and _measured(theirs)):
                    continue
                for key, lower_better in COMPARED.items():
                    a, b = values.get(key), theirs.get(key)
                    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
                        continue
                    ratio = a / b
                    better = ratio < 1 if lower_better else ratio > 1
                    factor = (1 / ratio if lower_better else ratio) if ratio else math.inf
                    out.setdefault(name, []).append(
                        {
                            "spear": variant,
                            "ray": ref_name,
                            "metric": metric,
                            "value": key,
                            "spear_value": a,
                            "ray_value": b,
                            "spear_over_ray": float(f"{ratio:.6g}"),
                            "spear_better": better,
                            "spear_advantage": float(f"{factor:.6g}"),
                        }
                    )
    return out


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write `results` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(results, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_LABELS = {"median_ms": "median", "p99_ms": "p99", "tasks_per_s": "tasks/s", "per_GiB": "per GiB"}


def _fmt(key: str, value: float) -> str:
    if key in ("tasks_per_s", "per_GiB"):
        return f"{value:,.0f}" + (" tasks/s" if key == "tasks_per_s" else " /GiB")
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def markdown(results: dict[str, Any]) -> str:
    """The README table: each spear figure beside Ray's, and the ratio spear/Ray."""
    m = results["machine"]
    mem = (m.get("memory_bytes") or 0) / 1024**3
    lines = [
        f"Measured {results['finished_at']} ({'--quick' if results['quick'] else 'full'} run, "
        f"{results['duration_s']:.0f} s) on {m['cpu_model']}, {m['cores']} cores, "
        f"{mem:.0f} GiB; Python {m['python']}, wasmtime {m['wasmtime']}, Ray {m['ray']}, "
        f"spear {m.get('spear_commit') or m.get('spear')}; load average "
        f"{results['load_average']['before'][0]:.1f} before, "
        f"{results['load_average']['after'][0]:.1f} after (the machine is shared).",
        "",
        "| workload | metric | spear | spear variant | Ray | spear/Ray |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results["ratios"].items():
        for r in rows:
            if r["value"] == "p99_ms" and r["metric"] not in ("task",):
                continue
            adv = r["spear_advantage"]
            who = f"spear {adv:.3g}x better" if r["spear_better"] else f"Ray {1 / adv:.3g}x better"
            verdict = f"{r['spear_over_ray']:.3g} ({who})"
            metric = f"{r['metric']} ({_LABELS[r['value']]})"
            lines.append(
                f"| {name} | {metric} | {_fmt(r['value'], r['spear_value'])} | {r['spear']} | "
                f"{_fmt(r['value'], r['ray_value'])} | {verdict} |"
            )
    missing = [
        f"- {name} / {variant}: {v['reason']}"
        for name, variants in results["workloads"].items()
        if isinstance(variants, dict)
        for variant, v in variants.items()
        if isinstance(v, dict) and "status" in v
    ]
    others = [
        f"- {name} / {variant}: "
        + ", ".join(f"{k} {v:,.4g}" for k, v in values.items() if isinstance(v, int | float))
        for name, variants in results["workloads"].items()
        if isinstance(variants, dict)
        for variant, values in variants.items()
        if _measured(values) and any(isinstance(v, int | float) for v in values.values())
    ]
    if others:
        lines += ["", "More figures (no Ray counterpart):", *others]
    if missing:
        lines += ["", "Not measured in this run:", *missing]
    issue2 = results.get("issue2")
    if issue2:
        lines += ["", "Local mode (issue 2):", ""]
        lines += ["| measurement | median | p99 |", "|---|---|---|"]
        for label, s in issue2.get("measurements", {}).items():
            if _measured(s) and "median_ms" in s:
                lines.append(f"| {label} | {s['median_ms']:.3f} ms | {s['p99_ms']:.3f} ms |")
        lines.append("")
        lines.append(f"Target (warm in-process median < 1 ms): {issue2.get('target_met')}")
    return "\n".join(lines) + "\n"


def chart(path: Path, results: dict[str, Any]) -> str | None:
    """A PNG with one panel per workload; returns why not if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    panels = [
        (
            "latency",
            "task",
            "median_ms",
            "trivial task, one at a time (median ms, lower is better)",
        ),
        ("throughput", "tasks", "tasks_per_s", "10,000 trivial tasks at once (tasks/s)"),
        ("cold_start", "first run", "median_ms", "never-seen module/function (median ms)"),
        ("density", "sleeping agents", "per_GiB", "sleeping agents per GiB (log)"),
        ("objects", None, "median_ms", "objects put/get (median ms, log, lower is better)"),
    ]
    heights = [3.2, 3.2, 2.6, 2.2, 4.5]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(10, sum(heights)), gridspec_kw={"height_ratios": heights}
    )
    workloads = results["workloads"]
    for ax, (name, metric, key, title) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=10)
        variants = workloads.get(name, {})
        if metric is None:
            _grouped(ax, variants, key)
            continue
        labels, values, colors = [], [], []
        for variant, metrics in variants.items():
            vals = metrics.get(metric) if _measured(metrics) else None
            if _measured(vals) and isinstance(vals.get(key), int | float):
                labels.append(variant)
                values.append(vals[key])
                colors.append(_color(variant))
        if not values:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        if name == "density" or (max(values) / max(min(values), 1e-9) > 30):
            ax.set_xscale("log")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,.3g}", va="center", fontsize=7)
    fig.suptitle("spear (blue) vs Ray (red), " + results["machine"]["cpu_model"], fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def _color(variant: str) -> str:
    return "#d62728" if variant.startswith("ray") else "#1f77b4"


def _grouped(ax: Any, variants: dict[str, Any], key: str) -> None:
    """One group of bars per metric Ray measured too (put 1KiB ... get 64MiB)."""
    ray = next((v for n, v in variants.items() if n.startswith("ray") and _measured(v)), {})
    metrics = [m for m, v in ray.items() if _measured(v) and key in v]
    shown = [
        (n, v)
        for n, v in variants.items()
        if _measured(v) and any(_measured(v.get(m)) and key in v[m] for m in metrics)
    ]
    if not metrics or not shown:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        return
    width = 0.8 / len(shown)
    blues = ["#1f77b4", "#6baed6", "#08519c", "#9ecae1", "#3182bd"]
    for i, (name, values) in enumerate(shown):
        xs = [j + i * width for j in range(len(metrics))]
        ys = [values[m][key] if _measured(values.get(m)) else 0 for m in metrics]
        color = _color(name) if name.startswith("ray") else blues[i % len(blues)]
        ax.bar(xs, ys, width, label=name, color=color)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics, fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
