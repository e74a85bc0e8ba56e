"""Ray's side of each workload, on a local Ray started with `ray.init(num_cpus=2)`.

Blocking calls, made from a thread with no event loop. `ray` is imported only when a
function here runs, so the package imports (and its tests run) without Ray installed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.common import AT_ONCE_ROUNDS, median_round, summarize

GIB = 1024**3

_remote: dict[str, Any] = {}


def start(num_cpus: int = 2) -> str:
    """Start a local Ray; returns its version. Raises ImportError if Ray is not installed."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)

    @ray.remote
    def trivial() -> None:
        return None

    @ray.remote(num_cpus=0)
    class Sleeper:
        def ping(self) -> int:
            return os.getpid()

    _remote["trivial"] = trivial
    _remote["Sleeper"] = Sleeper
    # The first calls start worker processes; that is not what we measure.
    ray.get([trivial.remote() for _ in range(2 * num_cpus)])
    return str(ray.__version__)


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def latency(n: int, fn: Any = None) -> list[float]:
    """`n` trivial remote functions (`fn`, the started Ray's by default) one at a time:
    `ray.get(f.remote())`, in seconds."""
    import ray

    trivial = fn or _remote["trivial"]
    ray.get(trivial.remote())
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        ray.get(trivial.remote())
        samples.append(time.perf_counter() - t0)
    return samples


def throughput(n: int, fn: Any = None) -> dict[str, Any]:
    """`n` trivial remote functions (`fn`, the started Ray's by default) submitted at
    once, then `ray.get` of them all."""
    import ray

    trivial = fn or _remote["trivial"]
    t0 = time.perf_counter()
    ray.get([trivial.remote() for _ in range(n)])
    elapsed = time.perf_counter() - t0
    return {
        "tasks": n,
        "seconds": round(elapsed, 4),
        "tasks_per_s": round(n / elapsed, 1),
        "failed": 0,
    }


def objects(counts: dict[str, int]) -> dict[str, Any]:
    """`ray.put` and `ray.get` of bytes of each size (1KiB, 1MiB, 64MiB)."""
    import ray

    out: dict[str, Any] = {}
    for label, n in counts.items():
        size = _size(label)
        payload = os.urandom(size)
        puts, gets = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            ref = ray.put(payload)
            puts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            value = ray.get(ref)
            gets.append(time.perf_counter() - t0)
            if len(value) != size:
                raise RuntimeError(f"ray.get returned {len(value)} bytes, not {size}")
            del ref, value
        out[f"put {label}"] = summarize(puts)
        out[f"get {label}"] = summarize(gets)
    return out


def _size(label: str) -> int:
    units = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
    return int(label[:-3]) * units[label[-3:]]


def cold_start(n: int) -> list[float]:
    """First call of a remote function Ray has never seen (exported, imported by a worker)."""
    import ray

    samples = []
    for i in range(n):

        def fresh(i: int = i) -> int:
            return i

        fn = ray.remote(fresh)
        t0 = time.perf_counter()
        ray.get(fn.remote())
        samples.append(time.perf_counter() - t0)
    return samples


def actor_start(n: int) -> list[float]:
    """Creating an actor and getting its first method's answer (a new worker process)."""
    import ray

    sleeper = _remote["Sleeper"]
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        actor = sleeper.remote()
        ray.get(actor.ping.remote())
        samples.append(time.perf_counter() - t0)
        ray.kill(actor)
    return samples


def density(n: int) -> dict[str, Any]:
    """`n` idle actors (each a worker process): their summed PSS, extrapolated to 1 GiB."""
    import psutil
    import ray

    sleeper = _remote["Sleeper"]
    actors = [sleeper.remote() for _ in range(n)]
    pids = ray.get([a.ping.remote() for a in actors])
    total = 0
    for pid in set(pids):
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    for actor in actors:
        ray.kill(actor)
    per_actor = max(1, total / max(1, len(set(pids))))
    return {
        "agents": n,
        "processes": len(set(pids)),
        "pss_total_bytes": total,
        "bytes_per_agent": round(per_actor),
        "per_GiB": int(GIB // per_actor),
        "method": "summed PSS of the actors' worker processes (raylet and GCS not counted)",
    }


def cluster(latency_n: int, throughput_n: int, num_cpus: int = 2) -> dict[str, Any]:
    """Ray on three nodes of this machine, beside spear's three SPEARlets (cluster_bench).

    `ray.cluster_utils.Cluster`: a head and two more raylets, `num_cpus` each; the second
    node carries a custom resource `far`, as spear's node-2 carries the label its
    "forwarded" tasks ask for. From a driver on the head: trivial tasks one at a time
    (`ray.get(f.remote())`) and `throughput_n` at once (`ray.get([f.remote() ...])`,
    the median of `AT_ONCE_ROUNDS` such batches),
    placed by Ray's scheduler ("local") or sent to the `far` node ("forwarded"). The
    single-node Ray started by `start()` is stopped first; call `start()` again after.
    """
    import ray
    from ray.cluster_utils import Cluster

    stop()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": num_cpus})
    try:
        nodes.add_node(num_cpus=num_cpus, resources={"far": 10_000})
        nodes.add_node(num_cpus=num_cpus)
        ray.init(address=nodes.address, log_to_driver=False)
        nodes.wait_for_nodes()

        @ray.remote
        def trivial() -> str:
            return str(ray.get_runtime_context().get_node_id())

        out: dict[str, Any] = {"nodes": len(ray.nodes())}
        for where, fn in (("local", trivial), ("forwarded", trivial.options(resources={"far": 1}))):
            warm = set(ray.get([fn.remote() for _ in range(4 * num_cpus)]))  # warm workers
            out[f"task_{where}"] = summarize(latency(latency_n, fn))
            rounds = [throughput(throughput_n, fn) for _ in range(AT_ONCE_ROUNDS)]
            out[f"tasks_{where}"] = {**median_round(rounds), "warmup_nodes": len(warm)}
        return out
    finally:
        ray.shutdown()
        nodes.shutdown()
