"""spear beside Ray on the same workloads: `python -m benchmarks [--quick] [--only NAME]`.

Install the extra first: `pip install -e '.[bench]'` (Ray, matplotlib, psutil).

Results shape, shared by every module here (and by `benchmarks/<x>_bench.py` modules
other parts of spear contribute, each exposing `run(quick: bool) -> dict`):

    {workload: {variant: {metric: values}}}

- workload: `latency`, `throughput`, `objects`, `cold_start`, `density`, `cluster`;
- variant: `spear_...` for spear (`spear_wasm_inprocess`, `spear_wasm_grpc`,
  `spear_process_cold`, `spear_process_warm`, `spear_inprocess`, `spear_grpc`, ...) or
  `ray_...` for Ray;
- metric: `task` (latency), `tasks` (throughput), `put 1KiB` / `get 64MiB` (objects),
  `first run` (cold start), `sleeping agents` (density);
- values: `common.summarize(seconds)` (`median_ms`, `p99_ms`, ...) for timings,
  `{"tasks_per_s": ...}` for throughput, `{"per_GiB": ...}` for density.

A spear variant is compared with the workload's Ray variant on every metric both have
(`report.ratios`). A workload that cannot run yet is recorded as
`{"status": "not available yet", "reason": ...}`, never as a number.
"""
