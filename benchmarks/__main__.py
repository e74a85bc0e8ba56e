"""`python -m benchmarks [--quick] [--only NAME]`: spear and Ray, interleaved, in one run.

spear's in-process node lives on an event-loop thread (an anyio blocking portal); Ray's
blocking calls run on the main thread between spear's rounds, so both see the same
machine at the same time. Results go to `benchmarks/results/<name>.json`, `<name>.md`
(the README table) and `<name>.png`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import local_bench, ray_bench, report
from benchmarks.common import ROOT, TRIVIAL_WAT, machine, not_available, summarize

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from anyio.from_thread import BlockingPortal

    from spear import LocalNode

WORKLOADS = (
    "run_process",
    "latency",
    "throughput",
    "grpc",
    "process",
    "objects",
    "cold_start",
    "density",
    "cluster",
    "models",
)
# Workloads other engineers' modules measure: name -> (module, the variants it owns).
EXTERNAL = {
    "grpc": (
        "grpc_bench",
        {"latency": "spear_wasm_grpc", "throughput": "spear_wasm_grpc", "objects": "spear_grpc"},
    ),
    "process": (
        "process_bench",
        {"latency": "spear_process_warm", "throughput": "spear_process_warm"},
    ),
    "objects": ("objects_bench", {"objects": "spear_inprocess"}),
    "cluster": ("cluster_bench", {"cluster": "spear_3_spearlets"}),
    "models": ("models_bench", {"models": "backend_seam"}),
}
RESULTS = ROOT / "benchmarks" / "results"


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.scale = local_bench.Scale(self.quick)
        if args.samples is not None:
            s = args.samples
            self.scale.rounds = 1
            self.scale.latency_n = self.scale.ray_latency_n = s
            self.scale.throughput_n = max(s, 1)
            self.scale.cold_n = self.scale.density_n = self.scale.ray_actors = s
            self.scale.process_cold_n = self.scale.process_warm_n = s
            self.scale.object_n = dict.fromkeys(self.scale.object_n, s)
        self.workloads: dict[str, Any] = {}
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}  # what other modules measured beyond the workloads
        self.ray_version: str | None = None
        self.ray_reason: str | None = "--no-ray" if args.no_ray else None
        self.ray_started = False

    # -- Ray, started once, lazily ------------------------------------------------------

    def ray(self) -> bool:
        if self.ray_reason is not None:
            return False
        if not self.ray_started:
            _log("starting Ray (ray.init(num_cpus=2))")
            try:
                self.ray_version = ray_bench.start(num_cpus=2)
            except ImportError:
                self.ray_reason = "ray is not installed (pip install -e '.[bench]')"
                return False
            self.ray_started = True
        return True

    def ray_or_reason(self, fn: Callable[[], Any]) -> Any:
        if not self.ray():
            return not_available(f"Ray not run: {self.ray_reason}")
        try:
            return fn()
        except Exception as exc:
            traceback.print_exc()
            return not_available(f"Ray side failed: {type(exc).__name__}: {exc}")

    # -- the run ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import anyio.from_thread

        from spear import LocalNode

        selected = self.args.only or list(WORKLOADS)
        started = time.time()
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        with (
            tempfile.TemporaryDirectory(prefix="spear-bench-") as tmp,
            anyio.from_thread.start_blocking_portal() as portal,
        ):
            directory = Path(tmp)
            module = local_bench.write_module(directory, "trivial", TRIVIAL_WAT)
            node_cm = portal.wrap_async_context_manager(LocalNode(directory / "home"))
            with node_cm as node, contextlib.ExitStack() as stack:
                if self.args.metrics:  # what `spear serve` runs beside the node
                    stack.enter_context(portal.wrap_async_context_manager(_web(node)))
                ctx = _Context(portal, node, directory, module)
                for name in WORKLOADS:
                    if name not in selected:
                        continue
                    _log(f"workload {name}")
                    try:
                        getattr(self, f"w_{name}")(ctx)
                    except Exception as exc:
                        traceback.print_exc()
                        self.workloads.setdefault(name, {})["error"] = not_available(
                            f"the workload failed: {type(exc).__name__}: {exc}"
                        )
        if self.ray_started:
            ray_bench.stop()
        results: dict[str, Any] = {
            "name": self.args.name,
            "quick": self.quick,
            "started_at": _iso(started),
            "finished_at": _iso(time.time()),
            "duration_s": round(time.perf_counter() - t0, 1),
            "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "ray_init": "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)",
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "workloads": self.workloads,
            "extra": self.extra,
            "notes": self.notes,
        }
        results["ratios"] = report.ratios(self.workloads)
        results["issue2"] = self.issue2()
        return results

    def issue2(self) -> dict[str, Any]:
        w = self.workloads
        found = {
            "spear run hello.wasm, whole process, cold (first compile)": w.get("run_process", {})
            .get("spear_cli", {})
            .get("spear run (cold)"),
            "spear run hello.wasm, whole process, warm (cached, through the runner)": w.get(
                "run_process", {}
            )
            .get("spear_cli", {})
            .get("spear run (warm)"),
            "spear run hello.wasm, whole process, warm (cached, own process)": w.get(
                "run_process", {}
            )
            .get("spear_cli", {})
            .get("spear run (warm, own process)"),
            "wasmtime run hello.wasm (the wasmtime CLI, native, for scale)": w.get(
                "run_process", {}
            )
            .get("spear_cli", {})
            .get("wasmtime run (the wasmtime CLI, native)"),
            "spear tasks, whole process, through the runner": w.get("run_process", {})
            .get("spear_cli", {})
            .get("spear tasks (runner)"),
            "spear tasks, whole process, own process": w.get("run_process", {})
            .get("spear_cli", {})
            .get("spear tasks (own process)"),
            "python -c pass (interpreter start alone, for scale)": w.get("run_process", {})
            .get("spear_cli", {})
            .get("python -c pass"),
            "node.run() trivial module in process, cold (never-seen module)": w.get(
                "cold_start", {}
            )
            .get("spear_wasm_inprocess", {})
            .get("first run"),
            "node.run() trivial module in process, warm (cached)": w.get("latency", {})
            .get("spear_wasm_inprocess", {})
            .get("task"),
        }
        measurements = {k: v for k, v in found.items() if v is not None}
        warm = measurements.get("node.run() trivial module in process, warm (cached)")
        met = None
        if isinstance(warm, dict) and "median_ms" in warm:
            met = warm["median_ms"] < 1.0
        return {"measurements": measurements, "target": "warm median < 1 ms", "target_met": met}

    # -- workloads ----------------------------------------------------------------------

    def w_run_process(self, ctx: _Context) -> None:
        s = self.scale
        self.workloads["run_process"] = {
            "spear_cli": local_bench.spear_run_process(
                ctx.directory, s.process_cold_n, s.process_warm_n
            )
        }

    def w_latency(self, ctx: _Context) -> None:
        s = self.scale
        spear: list[float] = []
        ray: list[float] = []
        ray_result: Any = None
        for _ in range(s.rounds):
            spear += ctx.portal.call(local_bench.latency, ctx.node, ctx.module, s.latency_n)
            ray_result = self.ray_or_reason(lambda: ray_bench.latency(s.ray_latency_n))
            if isinstance(ray_result, list):
                ray += ray_result
        w = self.workloads.setdefault("latency", {})
        w["spear_wasm_inprocess"] = {"task": summarize(spear)}
        w["ray_remote_function"] = {"task": summarize(ray)} if ray else ray_result

    def w_throughput(self, ctx: _Context) -> None:
        s = self.scale
        runs: dict[str, list[dict[str, Any]]] = {"gather": [], "submit": [], "many": [], "ray": []}
        ray_result: Any = None
        for _ in range(s.throughput_repeats):
            runs["gather"].append(
                ctx.portal.call(local_bench.throughput_gather, ctx.node, ctx.module, s.throughput_n)
            )
            runs["submit"].append(
                ctx.portal.call(local_bench.throughput_submit, ctx.node, ctx.module, s.throughput_n)
            )
            runs["many"].append(
                ctx.portal.call(local_bench.throughput_many, ctx.node, ctx.module, s.throughput_n)
            )
            ray_result = self.ray_or_reason(lambda: ray_bench.throughput(s.throughput_n))
            if isinstance(ray_result, dict) and "status" not in ray_result:
                runs["ray"].append(ray_result)
        w = self.workloads.setdefault("throughput", {})
        w["spear_wasm_inprocess"] = {"tasks": _median_run(runs["gather"])}
        w["spear_wasm_inprocess_submit"] = {"tasks": _median_run(runs["submit"])}
        w["spear_wasm_inprocess_many"] = {"tasks": _median_run(runs["many"])}
        w["ray_remote_function"] = (
            {"tasks": _median_run(runs["ray"])} if runs["ray"] else ray_result
        )

    def w_objects(self, ctx: _Context) -> None:
        self.external("objects")
        result = self.ray_or_reason(lambda: ray_bench.objects(self.scale.object_n))
        self.workloads.setdefault("objects", {})["ray_put_get"] = result

    def w_cold_start(self, ctx: _Context) -> None:
        s = self.scale
        spear: list[float] = []
        fresh: list[float] = []
        actors: list[float] = []
        fresh_r: Any = None
        actor_r: Any = None
        rounds = max(1, min(s.rounds, s.cold_n))
        per = max(1, s.cold_n // rounds)
        for _ in range(rounds):
            spear += ctx.portal.call(local_bench.cold_start, ctx.node, ctx.directory, per)
            fresh_r = self.ray_or_reason(lambda: ray_bench.cold_start(per))
            if isinstance(fresh_r, list):
                fresh += fresh_r
            actor_r = self.ray_or_reason(lambda: ray_bench.actor_start(max(1, per // 3)))
            if isinstance(actor_r, list):
                actors += actor_r
        w = self.workloads.setdefault("cold_start", {})
        w["spear_wasm_inprocess"] = {"first run": summarize(spear)}
        w["ray_new_function"] = {"first run": summarize(fresh)} if fresh else fresh_r
        w["ray_new_actor"] = {"first run": summarize(actors)} if actors else actor_r

    def w_density(self, ctx: _Context) -> None:
        s = self.scale
        spear = ctx.portal.call(local_bench.density, ctx.directory, s.density_n)
        ray = self.ray_or_reason(lambda: ray_bench.density(s.ray_actors))
        w = self.workloads.setdefault("density", {})
        w["spear_wasm_inprocess"] = {"sleeping agents": spear}
        w["ray_actors"] = ray if "status" in ray else {"sleeping agents": ray}

    def w_grpc(self, ctx: _Context) -> None:
        self.external("grpc")

    def w_process(self, ctx: _Context) -> None:
        self.external("process")

    def w_cluster(self, ctx: _Context) -> None:
        from benchmarks import cluster_bench

        self.external("cluster")
        counts = cluster_bench.sample_counts(self.quick)
        ray = self.ray_or_reason(
            lambda: ray_bench.cluster(counts["latency_n"], counts["throughput_n"])
        )
        self.ray_started = False  # (the cluster is gone; a later workload starts Ray again)
        self.workloads.setdefault("cluster", {})["ray_3_nodes"] = ray

    def w_models(self, ctx: _Context) -> None:
        self.external("models")

    def external(self, name: str) -> None:
        """Run another engineer's `benchmarks/<module>.py` and merge what it measured."""
        modname, owned = EXTERNAL[name]
        reason: str | None = None
        result: Any = None
        try:
            mod = importlib.import_module(f"benchmarks.{modname}")
        except ModuleNotFoundError as exc:
            if exc.name == f"benchmarks.{modname}":
                reason = f"benchmarks/{modname}.py does not exist yet"
            else:
                reason = f"benchmarks/{modname}.py cannot be imported: {exc}"
        else:
            _log(f"  {modname}.run(quick={self.quick})")
            try:
                result = mod.run(self.quick)
            except Exception as exc:
                traceback.print_exc()
                reason = f"benchmarks/{modname}.py failed: {type(exc).__name__}: {exc}"
        if reason is not None:
            for workload, variant in owned.items():
                self.workloads.setdefault(workload, {})[variant] = not_available(reason)
            return
        if not isinstance(result, dict):
            self.notes.append(f"{modname}.run returned {type(result).__name__}, not a dict")
            return
        for key, value in result.items():
            if key in WORKLOADS and isinstance(value, dict):
                self.workloads.setdefault(key, {}).update(value)
            else:
                self.extra.setdefault(modname, {})[key] = value


class _Context:
    def __init__(
        self, portal: BlockingPortal, node: LocalNode, directory: Path, module: Path
    ) -> None:
        self.portal = portal
        self.node = node
        self.directory = directory
        self.module = module


def _web(node: LocalNode) -> Any:
    """The node's HTTP server as `spear serve` runs it: metrics hook, /metrics, dashboard."""
    import dataclasses

    from spear import web
    from spear.node.inprocess import InProcessNode

    settings = dataclasses.replace(node.settings, http_listen="127.0.0.1:0")
    return web.serving(InProcessNode(node), settings)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        return not_available("no run")
    rates = [r["tasks_per_s"] for r in runs]
    best = min(runs, key=lambda r: abs(r["tasks_per_s"] - statistics.median(rates)))
    return {**best, "runs": rates}


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="spear and Ray on the same workloads, interleaved, in one run.",
    )
    p.add_argument("--quick", action="store_true", help="fewer samples (under 5 minutes)")
    p.add_argument(
        "--only",
        action="append",
        choices=WORKLOADS,
        metavar="NAME",
        help=f"run only this workload (repeatable): {', '.join(WORKLOADS)}",
    )
    p.add_argument("--name", help="results file name (default: quick or full)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--no-ray", action="store_true", help="measure spear only")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    p.add_argument("--samples", type=int, help="override every sample count (smoke runs)")
    p.add_argument(
        "--metrics",
        action="store_true",
        help="serve the node's dashboard and /metrics meanwhile (their cost: docs/dashboard.md)",
    )
    args = p.parse_args(argv)
    if args.samples is not None and args.samples < 1:
        p.error("--samples must be at least 1")
    if args.name is None:
        args.name = "quick" if args.quick else "full"
    return args


@contextlib.contextmanager
def _quiet_ray() -> Iterator[None]:
    # Ray's import prints deprecation notes to the terminal; they say nothing about us.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runner = Runner(args)
    with _quiet_ray():
        results = runner.run()
    out: Path = args.out
    json_path = out / f"{args.name}.json"
    report.write_json(json_path, results)
    (out / f"{args.name}.md").write_text(report.markdown(results))
    written = [json_path, out / f"{args.name}.md"]
    if not args.no_chart:
        why = report.chart(out / f"{args.name}.png", results)
        if why is None:
            written.append(out / f"{args.name}.png")
        else:
            _log(f"no chart: {why}")
    print(report.markdown(results))
    for path in written:
        _log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
