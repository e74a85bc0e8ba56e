"""`python -m benchmarks.http_triggers [--quick]`: a trivial WASM agent behind an HTTP
route, beside the floor of the same HTTP stack answering without an agent, and beside
Ray Serve's trivial deployment, interleaved in one run, driven by `wrk` (apt-get install
wrk) over keep-alive connections on loopback.

- `spear_route_request`: `spear serve` (a real daemon) with a public route in request
  mode (`--mode request`) whose agent (WAT, no toolchain) writes `Content-Type:
  text/plain`, a blank line and `ok`: each request runs the guest in the node's process
  (cached module, pooled instance, inline on the loop), answered through the CGI
  convention, with only an in-memory record of it.
- `spear_route`: the same route in task mode (the default): each request is a task
  (recorded, run, its log and result stored).
- `spear_route_tmpfs`: the same with the node's data dir on /dev/shm: each task's stdout
  is a log file and its result an object (a directory, files and an fsync'd write per
  request), which this machine's disk makes the largest part of a request.
- `stack_floor`: the same server (uvicorn + Starlette + the node app's middleware, on a
  node's event loop) with a catch-all route that answers `ok` itself: no task.
- `ray_serve`: Ray Serve's HTTP proxy and a one-replica deployment returning "ok".

Results: benchmarks/results/http_triggers.json; docs/benchmarks.md#http-triggers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import ROOT, standalone

if TYPE_CHECKING:
    from collections.abc import Iterator

OUTPUT = ROOT / "benchmarks" / "results" / "http_triggers.json"
CONNECTIONS = 8
_PIDS: dict[str, int] = {}  # a spear target's URL: its server's process (CPU per request)
# The agent: "Content-Type: text/plain\n\nok\n" to stdout, through WASI fd_write.
TINY_HTTP_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\\n\\nok\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 29))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
    env["SPEAR_HOME"] = str(data_dir)
    env["XDG_CONFIG_HOME"] = str(data_dir.with_name("xdg"))
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.returncode}")
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text().strip()
            if text:
                return text
        time.sleep(0.05)
    raise RuntimeError(f"no {path} within {timeout} s")


@contextlib.contextmanager
def spear_route(tmp: Path, mode: str = "task") -> Iterator[str]:
    """A `spear serve` daemon with the trivial agent at /tiny (in `mode`); yields its URL."""
    import wasmtime

    data_dir = tmp / f"node-{mode}"
    module = tmp / "tiny_http.wasm"
    module.write_bytes(wasmtime.wat2wasm(TINY_HTTP_WAT))
    env = _env(data_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "spear", "serve", "--listen", "127.0.0.1:0", "--log-level",
         "WARNING"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = _wait_file(data_dir / "spearlet.http", proc)
        subprocess.run(
            [sys.executable, "-m", "spear", "route", "add", "/tiny", str(module), "--public",
             "--concurrency", "64", "--mode", mode], env=env, check=True, capture_output=True,
        )  # fmt: skip
        _PIDS[url + "/tiny"] = proc.pid
        yield url + "/tiny"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@contextlib.contextmanager
def stack_floor(tmp: Path) -> Iterator[str]:
    """This module run as `--floor DATA_DIR`: the same stack, answering without an agent."""
    data_dir = tmp / "floor"
    data_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.http_triggers", "--floor", str(data_dir)],
        env=_env(data_dir), cwd=ROOT,
    )  # fmt: skip
    try:
        url = _wait_file(data_dir / "spearlet.http", proc) + "/tiny"
        _PIDS[url] = proc.pid
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def serve_floor(data_dir: Path) -> None:
    """The floor server: a LocalNode's event loop serving the node app (`_serve`: the
    dashboard, /metrics, the middleware) plus a catch-all ASGI route answering `ok`."""
    import anyio

    from spear import LocalNode
    from spear.node.inprocess import InProcessNode
    from spear.web._server import _serve
    from spear.web._sources import NodeSource
    from spear.web.metrics import Exposition, NodeCollector

    class Ok:  # (a class: Starlette calls it as an ASGI app, as it calls the triggers)
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"3"),
                                    (b"x-request-id", b"0123456789abcdef")]})  # fmt: skip
            await send({"type": "http.response.body", "body": b"ok\n"})

    async def main() -> None:
        from starlette.routing import Route

        async with LocalNode(data_dir) as node:
            import dataclasses

            settings = dataclasses.replace(node.settings, http_listen="127.0.0.1:0")
            api = InProcessNode(node)
            source, exposition = NodeSource(api), Exposition(NodeCollector(api))
            routes = [Route("/{path:path}", Ok())]
            async with _serve(source, exposition, settings, "spearlet", routes):
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        return

    anyio.run(main)


@contextlib.contextmanager
def ray_serve() -> Iterator[str]:
    import socket

    import ray
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})

        @serve.deployment(num_replicas=1, max_ongoing_requests=64)
        class Tiny:
            async def __call__(self, request: Any) -> str:
                return "ok\n"

        serve.run(Tiny.bind(), route_prefix="/tiny")  # type: ignore[attr-defined]
        yield f"http://127.0.0.1:{port}/tiny"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def _cpu_seconds(pid: int) -> float:
    """The CPU time (user and system, all threads) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: int, connections: int = CONNECTIONS) -> dict[str, Any]:
    """One `wrk` run (one thread, keep-alive): requests/s, p50 and p99 in ms, errors, and
    for a spear target the CPU its server process spent per request (steadier than
    requests/s on a shared machine: the other work there slows a run, not its CPU)."""
    pid = _PIDS.get(url)
    cpu_before = _cpu_seconds(pid) if pid is not None else 0.0
    proc = subprocess.run(
        ["nice", "-n", "10", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         url], capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = proc.stdout
    cpu = _cpu_seconds(pid) - cpu_before if pid is not None else None
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m is not None, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "requests_per_s": rps,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else None,
        "cpu_us_per_request": None if cpu is None or not done else round(cpu * 1e6 / done, 1),
    }


def _check(url: str) -> None:
    import httpx

    r = httpx.get(url, timeout=30)
    if r.status_code != 200 or r.text != "ok\n":
        raise RuntimeError(f"{url} answered {r.status_code} {r.text[:80]!r}")


def run(quick: bool) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    seconds, rounds = (3, 2) if quick else (8, 5)
    samples: dict[str, list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="spear-http-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        urls = {
            "spear_route_request": stack.enter_context(spear_route(Path(tmp), "request")),
            "spear_route": stack.enter_context(spear_route(Path(tmp))),
            "stack_floor": stack.enter_context(stack_floor(Path(tmp))),
        }
        if Path("/dev/shm").is_dir():  # the same node with its data dir in memory
            shm = Path(stack.enter_context(tempfile.TemporaryDirectory(dir="/dev/shm")))
            urls["spear_route_tmpfs"] = stack.enter_context(spear_route(shm))
        try:
            urls["ray_serve"] = stack.enter_context(ray_serve())
        except ImportError as exc:
            print(f"Ray Serve not available: {exc}", file=sys.stderr)
        for url in urls.values():
            _check(url)
            wrk(url, 1)  # warm: compiled module, connections, Ray's replica
        for r in range(rounds):  # interleaved: each round runs every target once
            for name in list(urls) if r % 2 == 0 else list(urls)[::-1]:
                result = wrk(urls[name], seconds)
                samples.setdefault(name, []).append(result)
                print(f"round {r} {name}: {json.dumps(result)}", file=sys.stderr)
    best = {name: max(runs, key=lambda x: x["requests_per_s"]) for name, runs in samples.items()}
    summary: dict[str, Any] = {
        name: {
            "requests_per_s": sorted(x["requests_per_s"] for x in runs)[len(runs) // 2],
            "p50_ms": sorted(x["p50_ms"] for x in runs)[len(runs) // 2],
            "p99_ms": sorted(x["p99_ms"] for x in runs)[len(runs) // 2],
            "cpu_us_per_request": _median([x.get("cpu_us_per_request") for x in runs]),
        }
        for name, runs in samples.items()
    }
    floor = summary["stack_floor"]["requests_per_s"]
    request = summary["spear_route_request"]["requests_per_s"]
    ratios = {
        "request_mode_over_floor": request / floor,
        "task_mode_over_floor": summary["spear_route"]["requests_per_s"] / floor,
    }
    cpu_floor = summary["stack_floor"]["cpu_us_per_request"]
    cpu_request = summary["spear_route_request"]["cpu_us_per_request"]
    if cpu_floor and cpu_request:  # (the floor's CPU per request over request mode's)
        ratios["request_mode_over_floor_cpu"] = cpu_floor / cpu_request
    if "ray_serve" in summary:
        ray = summary["ray_serve"]["requests_per_s"]
        ratios["request_mode_over_ray_serve"] = request / ray
        ratios["task_mode_over_ray_serve"] = summary["spear_route"]["requests_per_s"] / ray
    return {
        "workload": "http_triggers",
        "client": f"wrk -t1 -c{CONNECTIONS} -d{seconds}s, keep-alive, loopback",
        "rounds": rounds,
        "median": summary,
        "best": best,
        "ratios": ratios,
        "samples": samples,
    }


def _median(values: list[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return known[len(known) // 2] if known else None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--floor"]:
        serve_floor(Path(argv[1]))
        return
    result = standalone(__doc__, run, OUTPUT, argv)
    for name, row in result["median"].items():
        cpu = row["cpu_us_per_request"]
        print(f"{name:20} {row['requests_per_s']:9.0f} req/s  p50 {row['p50_ms']:7.2f} ms"
              f"  p99 {row['p99_ms']:7.2f} ms"
              + ("" if cpu is None else f"  {cpu:6.1f} us CPU/request"))  # fmt: skip
    print(json.dumps(result["ratios"]))


if __name__ == "__main__":
    main()
