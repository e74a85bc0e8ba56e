"""The SMS at scale and through failover (issues 16 and 17), real processes on loopback.

`python -m benchmarks.sms_bench [--quick] [--baseline SRC]` writes
benchmarks/results/sms.json.

- scale: N simulated nodes (each its own certificate and connection, as a SPEARlet)
  register with a fresh SMS process, then heartbeat at the nominal 1 Hz each, spread
  evenly, for a few seconds; the latency each heartbeat saw (p50/p99), the rate achieved
  and the CPU the SMS (and etcd) used per heartbeat. N climbs 200, 1,000, 2,000,
  stopping once fewer than a fifth of the heartbeats are answered within the window; a step is
  within target with p99 under 50 ms and 95% answered. On LevelDB and on etcd.
  With `--baseline SRC` (a spear source tree, e.g. the main branch's `src`) the same
  runs are made against that tree's SMS in the same run: the peer.
- failover: three SMS on one etcd and two SPEARlets given all three addresses; the
  leader is SIGKILLed, and we time until another SMS accepts a write (a new leader
  serving) and until both SPEARlets have heartbeated it; the killed SMS is restarted and
  the round repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import ROOT, machine, summarize

RESULT_FILE = ROOT / "benchmarks" / "results" / "sms.json"
MiB = 1024 * 1024
TARGET_P99_MS = 50.0
# Long silences so no simulated node is swept while the load generator lags.
_PATIENT = {"heartbeat_s": 1.0, "unhealthy_after_s": 60.0, "dead_after_s": 120.0}


def _counts(quick: bool) -> dict[str, Any]:
    if quick:
        return {"steps": [200, 1000], "seconds": 4, "rounds": 2}
    return {"steps": [200, 1000, 2000], "seconds": 6, "rounds": 5}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- scale ------------------------------------------------------------------------------


def _records(first: int, count: int) -> list[Any]:
    from spear.core.cluster import AgentInfo, NodeRecord
    from spear.core.models import Resources

    return [
        NodeRecord(
            name=f"sim-{i:05d}",
            address=f"127.0.0.2:{10000 + i % 50000}",
            capacity=Resources(4000, 8192 * MiB),
            free=Resources(4000, 8192 * MiB),
            agents=(AgentInfo("wasm", "bench"),),
            incarnation=f"sim-{i}",
        )
        for i in range(first, first + count)
    ]


def _credentials(ca_dir: Path, i: int) -> Any:
    from spear.transport import tls
    from spear.transport.channels import Credentials

    directory = ca_dir.parent / "sims" / f"sim-{i:05d}"
    if not tls.TlsFiles(directory).present:
        tls.issue(ca_dir, f"sim-{i:05d}", directory)
    return Credentials(tls=tls.TlsFiles(directory))


async def _load_part(
    address: str, ca_dir: Path, first: int, count: int, total: int, seconds: float, pipe: Any
) -> dict[str, Any]:
    """Nodes first..first+count of `total`: register, say so, wait for the start time,
    then heartbeat at 1 Hz each (node i at offset i/total in each second)."""
    from spear.errors import SpearError
    from spear.transport.sms_client import SmsClient

    records = _records(first, count)
    clients = [
        SmsClient(address, timeout_s=10, credentials=_credentials(ca_dir, first + k))
        for k in range(count)
    ]
    try:
        limit = anyio.Semaphore(50)

        async def register(k: int) -> None:
            async with limit:
                for attempt in range(10):  # a starved SMS may time a registration out
                    try:
                        await clients[k].register(records[k])
                        return
                    except SpearError:
                        if attempt == 9:
                            raise

        async with anyio.create_task_group() as tg:
            for k in range(count):
                tg.start_soon(register, k)
        pipe.send("registered")
        start = await anyio.to_thread.run_sync(pipe.recv)  # wall-clock start, from the parent
        until = start + seconds
        samples: list[float] = []
        late: list[float] = []
        in_window = failed = 0

        async def beat(k: int) -> None:
            nonlocal in_window, failed
            client, rec = clients[k], records[k]
            next_at = start + (first + k) / total
            while next_at < until:
                await anyio.sleep(max(0.0, next_at - time.time()))
                sent = time.time()
                late.append(sent - next_at)
                next_at += 1.0
                try:
                    known = await client.heartbeat(rec.name, rec.incarnation, rec.free, 1, 0)
                except SpearError:  # refused (an SMS that lost its lease), or timed out
                    failed += 1
                    continue
                done = time.time()
                samples.append(done - sent)
                in_window += done <= until
                assert known is not None

        own0 = resource.getrusage(resource.RUSAGE_SELF)
        async with anyio.create_task_group() as tg:
            for k in range(count):
                tg.start_soon(beat, k)
        own1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
        return {
            "samples": samples,
            "late": late,
            "in_window": in_window,
            "failed": failed,
            "cpu_s": cpu,
        }
    finally:
        for client in clients:
            await client.aclose()


def _worker(address: str, ca_dir: Path, first: int, count: int, total: int, seconds: float,
            pipe: Any) -> None:  # fmt: skip
    result = anyio.run(_load_part, address, ca_dir, first, count, total, seconds, pipe)
    pipe.send(result)


def _load(
    address: str, nodes: int, seconds: float, ca_dir: Path, pid: int, etcd_pid: int | None
) -> Any:
    """`nodes` simulated nodes in several processes (one per 250 nodes, at most 4), so the
    load generator's own event loop is not what is measured."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parts = max(1, min(4, nodes // 250))
    sizes = [nodes // parts + (1 if i < nodes % parts else 0) for i in range(parts)]
    pipes, procs, first = [], [], 0
    t0 = time.perf_counter()
    for size in sizes:
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=_worker, args=(address, ca_dir, first, size, nodes, seconds, theirs)
        )
        proc.start()
        pipes.append(mine)
        procs.append(proc)
        first += size
    try:
        for pipe in pipes:
            assert pipe.recv() == "registered"
        register_s = time.perf_counter() - t0
        start = time.time() + 1.0
        cpu0 = _cpu_s(pid)
        etcd0 = _cpu_s(etcd_pid) if etcd_pid else 0.0
        for pipe in pipes:
            pipe.send(start)
        results = [pipe.recv() for pipe in pipes]
        elapsed = time.time() - start
        cpu1 = _cpu_s(pid)
        etcd1 = _cpu_s(etcd_pid) if etcd_pid else 0.0
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    samples = [x for r in results for x in r["samples"]]
    late = [x for r in results for x in r["late"]]
    in_window = sum(r["in_window"] for r in results)
    expected = nodes * seconds
    return {
        "nodes": nodes,
        "generator_processes": parts,
        "register_all_s": round(register_s, 3),
        "heartbeats": len(samples),
        "failed": sum(r["failed"] for r in results),
        "answered_in_window_per_s": round(in_window / seconds, 1),
        "delivered": round(in_window / expected, 3),
        "latency": summarize(samples),
        "sent_late_p99_ms": summarize(late).get("p99_ms"),
        "sms_cpu_cores": round((cpu1 - cpu0) / elapsed, 3),
        # CPU per heartbeat: what contention for the cores changes least.
        "sms_cpu_ms_per_heartbeat": round((cpu1 - cpu0) * 1e3 / max(1, len(samples)), 4),
        "etcd_cpu_ms_per_heartbeat": (
            round((etcd1 - etcd0) * 1e3 / max(1, len(samples)), 4) if etcd_pid else None
        ),
        "load_generator_cpu_cores": round(sum(r["cpu_s"] for r in results) / elapsed, 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _sms_at(
    directory: Path, ca: Path, etcd: bool, nodes: int, seconds: float, src: Path | None
) -> Any:
    from spear.node.local_cluster import LocalCluster

    cluster = LocalCluster(
        directory / f"sms-{'etcd' if etcd else 'leveldb'}-{nodes}-{'peer' if src else 'this'}",
        nodes=0,
        etcd=etcd,
        timings=_PATIENT,
        ca=ca,
    )
    saved = os.environ.get("PYTHONPATH")
    if src is not None:  # the peer's SMS: the same command from another source tree
        os.environ["PYTHONPATH"] = str(src)
    try:
        cluster.start()
    finally:
        if src is not None:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
    try:
        assert cluster.sms is not None
        etcd_pid = cluster.etcd_process.proc.pid if cluster.etcd_process else None
        return _load(cluster.sms.address, nodes, seconds, ca, cluster.sms.pid, etcd_pid)
    finally:
        cluster.stop()


def _broken(step: dict[str, Any]) -> bool:
    p99 = step["latency"].get("p99_ms") or 1e9
    return bool(p99 > TARGET_P99_MS or step["delivered"] < 0.95)


def _scale(directory: Path, counts: dict[str, Any], src: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for store in ("leveldb", "etcd"):
        steps = []
        for nodes in counts["steps"]:
            step = _sms_at(
                directory, directory / "ca", store == "etcd", nodes, counts["seconds"], src
            )
            steps.append(step)
            print(
                f"  {store} {'peer' if src else 'this'} {nodes}: p50 "
                f"{step['latency'].get('median_ms')} p99 {step['latency'].get('p99_ms')} ms, "
                f"delivered {step['delivered']}, SMS {step['sms_cpu_cores']} cores, "
                f"{step['sms_cpu_ms_per_heartbeat']} ms CPU a heartbeat (etcd "
                f"{step['etcd_cpu_ms_per_heartbeat']}), load {step['load_average_1m']}",
                file=sys.stderr,
            )
            if step["delivered"] < 0.2:  # collapsed: larger steps would only queue more
                break
        held = [s["nodes"] for s in steps if not _broken(s)]
        out[store] = {"steps": steps, "largest_within_target": max(held) if held else 0}
    return out


# -- failover ---------------------------------------------------------------------------


async def _accepts_write(address: str, credentials: Any) -> bool:
    """Whether the SMS at `address` itself takes a write (a heartbeat of no node)."""
    from spear.errors import SpearError
    from spear.transport._gen.pb import sms_pb2
    from spear.transport._status import client_errors
    from spear.transport.aio_client import AioChannel
    from spear.transport.services import Stub
    from spear.transport.sms_client import SERVICE

    channel = AioChannel.to(address, credentials)
    try:
        with client_errors(f"SMS {address}"):
            await Stub(channel, SERVICE).heartbeat(
                sms_pb2.HeartbeatRequest(name="launcher", incarnation="x"), timeout=2
            )
        return True
    except SpearError:
        return False
    finally:
        await channel.aclose()


def _failover(directory: Path, counts: dict[str, Any], ttl_s: int) -> dict[str, Any]:
    from spear.node.ha_cluster import HaCluster
    from spear.transport.sms_client import SmsClient

    cluster = HaCluster(
        directory / f"ha-ttl{ttl_s}",
        nodes=2,
        timings={"sms_lease_ttl_s": ttl_s},
        ca=directory / "ca",
    )
    credentials = cluster.credentials()
    serving: list[float] = []
    following: list[float] = []
    with cluster:
        for _ in range(counts["rounds"]):
            deadline = time.monotonic() + 30
            while len(leaders := list(cluster.leaders())) != 1:
                assert time.monotonic() < deadline, "no leader"
                time.sleep(0.02)
            (leader,) = leaders
            others = [m for m in cluster.all_sms if m is not leader]
            killed_wall, killed = time.time(), time.perf_counter()
            os.kill(leader.pid, signal.SIGKILL)
            assert leader.proc is not None
            leader.proc.wait()
            new = None
            while new is None:
                assert time.perf_counter() - killed < 30, "no new leader"
                for m in others:
                    if anyio.run(_accepts_write, m.address, credentials):
                        new = m
                        break
            serving.append(time.perf_counter() - killed)

            async def followed(address: str, since: float = killed_wall) -> bool:
                async with SmsClient(address, timeout_s=5, credentials=credentials) as c:
                    nodes = await c.nodes(live_only=True)
                return len(nodes) == 2 and all(n.last_heartbeat > since for n in nodes)

            while not anyio.run(followed, new.address):
                assert time.perf_counter() - killed < 30, "the nodes did not follow"
                time.sleep(0.02)
            following.append(time.perf_counter() - killed)
            # Bring the killed SMS back on its address, as a follower.
            if leader is cluster.sms:
                cluster.start_sms(listen=leader.address)
            else:
                cluster.start_standby(int(leader.name.rsplit("-", 1)[1]))
    return {
        "lease_ttl_s": ttl_s,
        "rounds": len(serving),
        "new_leader_serving": summarize(serving),
        "both_nodes_heartbeating_it": summarize(following),
    }


def run(quick: bool, baseline: Path | None = None) -> dict[str, Any]:
    counts = _counts(quick)
    with tempfile.TemporaryDirectory(prefix="spear-smsbench-") as tmp:
        directory = Path(tmp)
        failover = {f"ttl_{t}s": _failover(directory, counts, t) for t in (2, 3)}
        scale = {"this": _scale(directory, counts, None)}
        if baseline is not None:
            scale["peer"] = _scale(directory, counts, baseline)
    headline: dict[str, Any] = {
        "failover_new_leader_serving_median_s": {
            k: v["new_leader_serving"].get("median_ms", 0) / 1e3 for k, v in failover.items()
        },
    }
    for who, stores in scale.items():
        for store, data in stores.items():
            by_n = {s["nodes"]: s["latency"] for s in data["steps"]}
            headline[f"{who}_{store}"] = {
                "p50_p99_ms_at": {
                    n: [lat.get("median_ms"), lat.get("p99_ms")] for n, lat in by_n.items()
                },
                "largest_within_50ms_p99": data["largest_within_target"],
                "sms_cpu_ms_per_heartbeat_at": {
                    s["nodes"]: s["sms_cpu_ms_per_heartbeat"] for s in data["steps"]
                },
                "etcd_cpu_ms_per_heartbeat_at": {
                    s["nodes"]: s["etcd_cpu_ms_per_heartbeat"] for s in data["steps"]
                },
            }
    return {
        "sms": headline,
        "failover": failover,
        "scale": scale,
        "counts": counts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--output", type=Path, default=RESULT_FILE)
    parser.add_argument(
        "--baseline", type=Path, default=None, help="a spear source tree whose SMS is the peer"
    )
    args = parser.parse_args(argv)
    peer: dict[str, Any] = {}
    if args.baseline is not None:
        commit = subprocess.run(
            ["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        peer = {"peer_src": str(args.baseline), "peer_commit": commit}
    result = {"machine": machine(), "quick": args.quick, **peer, **run(args.quick, args.baseline)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    print(json.dumps(result["sms"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
