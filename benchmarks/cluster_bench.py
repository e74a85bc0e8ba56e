"""Distributed mode: task latency, throughput and placement on 3 real SPEARlets (tasks
placed locally vs forwarded to another node), and the SMS under the heartbeats of 200
simulated nodes, on LevelDB and on etcd. `python -m benchmarks` runs Ray on three nodes
beside it (`ray_bench.cluster`).

`python -m benchmarks.cluster_bench [--quick]` writes benchmarks/results/cluster.json;
`run(quick)` is what `python -m benchmarks` calls. Everything runs on this machine's
loopback: the SMS, the SPEARlets and etcd are real processes.

- placement: `Client.submit` of a trivial WASM task to node-1, until node-1 answers (the
  task is placed: started there, or forwarded and adopted by node-2). "forwarded" tasks
  carry a label only node-2 has, so node-1 always asks the SMS and forwards.
- run: submit and wait for the task to finish, through node-1.
- throughput: N tasks submitted one after another through node-1, until all have
  finished.
- call: `client.call` (CallTask) through node-1, one at a time: beside Ray's
  `ray.get(f.remote())` on three nodes; with the CPU every process of the cluster (and
  the client) spent per task (`cpu_ms_per_task`, as for at_once).
- at_once: N tasks in one SubmitTasks call through node-1, answered when all have
  finished: beside Ray's `ray.get([f.remote() for ...])` on three nodes; each side runs
  `AT_ONCE_ROUNDS` such batches in turn and reports its median one (a batch of 300 lasts
  ~0.1 s: one alone was within the machine's noise).
- node-port peers: the forwarded call and at_once again on a cluster whose members
  forward on each other's node port (`peer_transport = "node-port"`) instead of the
  members' port, in the same run (`spear_3_spearlets_node_port_peers`; named
  `..._grpclib_peers` in results from when the node port was grpclib's).
- heartbeats: 200 simulated nodes register with a real SMS process, then heartbeat in a
  closed loop for a few seconds (the SMS's capacity: heartbeats/s and latency), then at
  the nominal rate of one per node per second (latency under the normal load).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import AT_ONCE_ROUNDS, ROOT, TRIVIAL_WAT, median_round, standalone, summarize

RESULT_FILE = ROOT / "benchmarks" / "results" / "cluster.json"
MiB = 1024 * 1024


# How this benchmark calls the cluster: the launcher's certificate (set once it starts).
_CREDENTIALS: list[Any] = [None]


def sample_counts(quick: bool) -> dict[str, int]:
    if quick:
        return {"latency_n": 30, "throughput_n": 60, "nodes": 200, "closed_s": 2, "nominal_s": 3}
    return {"latency_n": 200, "throughput_n": 300, "nodes": 200, "closed_s": 5, "nominal_s": 10}


# -- placement and throughput on 3 SPEARlets ----------------------------------------------


async def _latencies(address: str, module: str, n: int, labels: Any) -> dict[str, Any]:
    from spear.core.models import FunctionSpec
    from spear.node.client import Client

    spec = FunctionSpec(module, labels=labels)
    place: list[float] = []
    run: list[float] = []
    nodes: dict[str, int] = {}
    async with Client(address, credentials=_CREDENTIALS[0]) as client:
        await client.run(spec)  # warm: upload, compile, connections
        for _ in range(n):
            t0 = time.perf_counter()
            handle = await client.submit(spec)
            place.append(time.perf_counter() - t0)
            task = await handle.wait()
            run.append(time.perf_counter() - t0)
            nodes[task.node or "?"] = nodes.get(task.node or "?", 0) + 1
            assert task.state.value == "COMPLETED", task
    return {"placement": summarize(place), "submit_to_finish": summarize(run), "ran_on": nodes}


async def _throughput(address: str, module: str, n: int, labels: Any) -> dict[str, Any]:
    from spear.core.models import FunctionSpec
    from spear.node.client import Client

    spec = FunctionSpec(module, labels=labels)
    async with Client(address, credentials=_CREDENTIALS[0]) as client:
        await client.run(spec)
        t0 = time.perf_counter()
        handles = []
        for _ in range(n):
            handles.append(await client.submit(spec))
        placed = time.perf_counter() - t0
        for handle in handles:
            await handle.wait()
        total = time.perf_counter() - t0
    return {
        "tasks": n,
        "placed_per_s": round(n / placed, 1),
        "tasks_per_s": round(n / total, 1),
        "seconds": round(total, 3),
    }


async def _calls(address: str, module: str, n: int, labels: Any) -> dict[str, Any]:
    """`n` trivial tasks one at a time through `address`: `client.call` (CallTask), the task
    and its result in one call: Ray's `ray.get(f.remote())`."""
    from spear.core.models import FunctionSpec
    from spear.node.client import Client

    spec = FunctionSpec(module, labels=labels)
    samples: list[float] = []
    async with Client(address, credentials=_CREDENTIALS[0]) as client:
        await client.call(spec)
        for _ in range(n):
            t0 = time.perf_counter()
            result = await client.call(spec)
            samples.append(time.perf_counter() - t0)
            assert result.task.state.value == "COMPLETED", result.task
    return summarize(samples)


async def _at_once(address: str, module: str, n: int, labels: Any) -> dict[str, Any]:
    """`n` trivial tasks submitted at once through `address` in one call (SubmitTasks),
    answered when all have finished: Ray's `ray.get([f.remote() for ...])`."""
    from spear.core.models import FunctionSpec, Task
    from spear.node.client import Client

    spec = FunctionSpec(module, labels=labels)
    async with Client(address, credentials=_CREDENTIALS[0]) as client:
        await client.call(spec)
        t0 = time.perf_counter()
        done = await client.submit_many([spec] * n, wait=True)
        elapsed = time.perf_counter() - t0
    finished = [t for t in done if isinstance(t, Task) and t.state.value == "COMPLETED"]
    assert len(finished) == n, done[:3]
    return {
        "tasks": n,
        "seconds": round(elapsed, 4),
        "tasks_per_s": round(n / elapsed, 1),
        "nodes_used": len({t.node for t in finished}),
    }


FAR = (("bench", "far"),)  # the label only node-2 has: "forwarded" tasks ask for it


def trivial_module(directory: Path) -> Path:
    import wasmtime

    module = directory / "trivial.wasm"
    module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
    return module


def three_spearlets(directory: Path, etcd: bool, peer_transport: str = "grpc.aio") -> Any:
    """A LocalCluster (not started) of 3 SPEARlets forwarding over `peer_transport`,
    node-2 labelled `FAR`; this benchmark calls it with the launcher's certificate."""
    from spear.node.local_cluster import LocalCluster

    transport = {"peer_transport": peer_transport}
    cluster = LocalCluster(
        directory / f"cluster-{'etcd' if etcd else 'leveldb'}-{peer_transport}",
        nodes=3,
        etcd=etcd,
        node_settings={
            "node-1": transport,
            "node-2": {"labels": dict(FAR), **transport},
            "node-3": transport,
        },
    )
    _CREDENTIALS[0] = cluster.credentials()
    return cluster


def _spearlets(
    directory: Path,
    counts: dict[str, int],
    etcd: bool,
    *,
    peer_transport: str = "grpc.aio",
    wheres: tuple[str, ...] = ("local_first", "forwarded"),
) -> dict[str, Any]:
    """The workloads through node-1 of 3 SPEARlets that forward to each other over
    `peer_transport` (the setting: "grpc.aio", the default, or "node-port")."""
    module = trivial_module(directory)
    cluster = three_spearlets(directory, etcd, peer_transport)
    with cluster:
        n1 = cluster.member("node-1").address
        pids = [m.pid for m in cluster.members] + ([cluster.sms.pid] if cluster.sms else [])
        out: dict[str, Any] = {}
        for name, labels in (("local_first", ()), ("forwarded", FAR)):
            if name not in wheres:
                continue
            lat = anyio.run(_latencies, n1, str(module), counts["latency_n"], labels)
            thr = anyio.run(_throughput, n1, str(module), counts["throughput_n"], labels)
            before = cpu_s(pids)
            call = anyio.run(_calls, n1, str(module), counts["latency_n"], labels)
            call["cpu_ms_per_task"] = round((cpu_s(pids) - before) / call["n"] * 1000, 3)
            before = cpu_s(pids)
            rounds = [
                anyio.run(_at_once, n1, str(module), counts["throughput_n"], labels)
                for _ in range(AT_ONCE_ROUNDS)  # (as Ray's side: the median batch)
            ]
            spent = cpu_s(pids) - before
            at_once = median_round(rounds)
            at_once["cpu_ms_per_task"] = round(spent / sum(r["tasks"] for r in rounds) * 1000, 3)
            out[name] = {**lat, "throughput": thr, "call": call, "at_once": at_once}
    return out


def cpu_s(pids: list[int]) -> float:
    """CPU seconds spent so far by the cluster's processes and this one (the client): per
    task, steadier than wall time on a machine shared with other work."""
    import resource

    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    own = resource.getrusage(resource.RUSAGE_SELF)
    return total + own.ru_utime + own.ru_stime


# -- the SMS under heartbeats -------------------------------------------------------------


async def _heartbeats(
    address: str, nodes: int, closed_s: float, nominal_s: float, ca_dir: Path
) -> Any:
    from spear.core.cluster import AgentInfo, NodeRecord
    from spear.core.models import Resources

    # Each simulated node speaks for itself with its own certificate from the cluster's CA.
    from spear.transport import tls
    from spear.transport.channels import Credentials
    from spear.transport.sms_client import SmsClient

    def member(i: int) -> Any:
        directory = ca_dir.parent / "sims" / f"sim-{i:03d}"
        if not tls.TlsFiles(directory).present:
            tls.issue(ca_dir, f"sim-{i:03d}", directory)
        return Credentials(tls=tls.TlsFiles(directory))

    channels = [SmsClient(address, timeout_s=30, credentials=member(i)) for i in range(nodes)]
    records = [
        NodeRecord(
            name=f"sim-{i:03d}",
            address=f"127.0.0.2:{10000 + i}",
            capacity=Resources(4000, 8192 * MiB),
            free=Resources(4000, 8192 * MiB),
            agents=(AgentInfo("wasm", "bench"),),
            incarnation=f"sim-{i}",
        )
        for i in range(nodes)
    ]
    try:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i, rec in enumerate(records):
                tg.start_soon(channels[i % len(channels)].register, rec)
        register_s = time.perf_counter() - t0

        async def beat(i: int, samples: list[float], until: float, period: float) -> None:
            client = channels[i % len(channels)]
            rec = records[i]
            next_at = time.perf_counter() + (period * i / nodes if period else 0)
            while True:
                if period:
                    await anyio.sleep(max(0.0, next_at - time.perf_counter()))
                    next_at += period
                if time.perf_counter() >= until:
                    return
                s = time.perf_counter()
                known = await client.heartbeat(rec.name, rec.incarnation, rec.free, 1, 0)
                samples.append(time.perf_counter() - s)
                assert known is not None

        result: dict[str, Any] = {"nodes": nodes, "register_all_s": round(register_s, 3)}
        modes = (("closed_loop", closed_s, 0.0), ("nominal_1hz", nominal_s, 1.0))
        for mode, seconds, period in modes:
            samples: list[float] = []
            start = time.perf_counter()
            until = start + seconds
            async with anyio.create_task_group() as tg:
                for i in range(nodes):
                    tg.start_soon(beat, i, samples, until, period)
            elapsed = time.perf_counter() - start
            result[mode] = {
                "heartbeats": len(samples),
                "heartbeats_per_s": round(len(samples) / elapsed, 1),
                "latency": summarize(samples),
            }
        return result
    finally:
        for client in channels:
            await client.aclose()


def _sms_load(directory: Path, counts: dict[str, int], etcd: bool) -> dict[str, Any]:
    from spear.node.local_cluster import LocalCluster

    # An SMS process alone (no SPEARlets); long timeouts so no simulated node is swept.
    cluster = LocalCluster(
        directory / ("sms-etcd" if etcd else "sms-leveldb"),
        nodes=0,
        etcd=etcd,
        timings={"heartbeat_s": 1.0, "unhealthy_after_s": 60.0, "dead_after_s": 120.0},
    )
    with cluster:
        assert cluster.sms is not None
        return anyio.run(  # type: ignore[no-any-return]
            _heartbeats,
            cluster.sms.address,
            counts["nodes"],
            counts["closed_s"],
            counts["nominal_s"],
            cluster.ca_dir,
        )


def run(quick: bool) -> dict[str, Any]:
    """Measure; `cluster.spear_3_spearlets` is the headline, the rest raw detail."""
    counts = sample_counts(quick)
    with tempfile.TemporaryDirectory(prefix="spear-clusterbench-") as tmp:
        directory = Path(tmp)
        spearlets = {
            "leveldb": _spearlets(directory, counts, etcd=False),
            # The same forwarded workloads, the members forwarding on the node port (issue
            # 17: the members' port of ForwardTasks beside the node port, in one run).
            "leveldb_node_port": _spearlets(
                directory, counts, etcd=False, peer_transport="node-port", wheres=("forwarded",)
            ),
            "etcd": _spearlets(directory, counts, etcd=True),
        }
        sms = {
            "leveldb": _sms_load(directory, counts, etcd=False),
            "etcd": _sms_load(directory, counts, etcd=True),
        }
    local = spearlets["leveldb"]["local_first"]
    forwarded = spearlets["leveldb"]["forwarded"]
    headline = {
        # Beside Ray on three nodes (ray_bench.cluster): one at a time, and all at once.
        "task_local": local["call"],
        "task_forwarded": forwarded["call"],
        "tasks_local": local["at_once"],
        "tasks_forwarded": forwarded["at_once"],
        # spear's own: placement (submit answered), sequential submits, the SMS.
        "placement_local_median_ms": local["placement"].get("median_ms"),
        "placement_forwarded_median_ms": forwarded["placement"].get("median_ms"),
        "throughput_local_tasks_per_s": local["throughput"]["tasks_per_s"],
        "throughput_forwarded_tasks_per_s": forwarded["throughput"]["tasks_per_s"],
        "sms_heartbeats_per_s_leveldb": sms["leveldb"]["closed_loop"]["heartbeats_per_s"],
        "sms_heartbeats_per_s_etcd": sms["etcd"]["closed_loop"]["heartbeats_per_s"],
    }
    node_port = spearlets["leveldb_node_port"]["forwarded"]
    return {
        "cluster": {
            "spear_3_spearlets": headline,
            "spear_3_spearlets_node_port_peers": {
                "task_forwarded": node_port["call"],
                "tasks_forwarded": node_port["at_once"],
            },
        },
        "spearlets": spearlets,
        "sms_heartbeats": sms,
        "counts": counts,
    }


def main(argv: list[str] | None = None) -> int:
    result = standalone(__doc__, run, RESULT_FILE, argv)
    print(json.dumps(result["cluster"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
