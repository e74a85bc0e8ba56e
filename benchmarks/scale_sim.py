"""Past this machine, by simulation (issue 17 item 5): the real SMS logic and placement
policy over simulated nodes and a simulated clock.

`python -m benchmarks.scale_sim [--quick] [--nodes 1000,10000] [--tasks N] [--budget S]`
writes benchmarks/results/scale.json; the method and the numbers are in docs/scale.md.

Real: `MetadataServer` (core/sms.py) on a real LevelDB, with its liveness leases,
checkpoints and sweeps; `find_nodes` answering every placement query; `report_tasks`
taking every task's RUNNING and end reports; `rank_candidates` (core/scheduler.py)
picking among the candidates. Simulated: the nodes (4 CPU, 8 GiB each; their free
resources kept here), the clock (the SMS's `clock` is the simulation's), the tasks
(250-1000m CPU, durations exponential around 2 s), their arrival (Poisson, sized to keep
the cluster about 70% busy, each submitted to a node drawn at random) and the wire
(nothing: a call costs what the SMS logic costs, no gRPC). A node that can run a task
runs it (local first); otherwise the SMS is asked, the candidates ranked, and the first
whose true free room fits takes it (a stale view is refused and the next tried);
otherwise it waits in its node's queue, first in first out, and is placed again the next
tick. Each node heartbeats once per simulated second.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import ROOT, machine, summarize

RESULT_FILE = ROOT / "benchmarks" / "results" / "scale.json"
GiB = 1024**3
TICK_S = 0.05  # simulated seconds per step
NODE_CPU = 4000
NEEDS = (250, 500, 1000)
MEAN_DURATION_S = 2.0
UTILIZATION = 0.7


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def _simulate(n_nodes: int, max_tasks: int, budget_s: float, seed: int) -> dict[str, Any]:
    from spear.core.cluster import AgentInfo, ClusterTimings, NodeRecord, PlacementQuery
    from spear.core.models import FunctionSpec, Resources, Task, TaskState
    from spear.core.scheduler import rank_candidates
    from spear.core.sms import MetadataServer
    from spear.store.leveldb import LevelDBKV

    rng = random.Random(seed)
    clock = Clock()
    spent: dict[str, float] = {}
    calls: dict[str, int] = {}

    async def timed(kind: str, call: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await call
        finally:
            spent[kind] = spent.get(kind, 0.0) + time.perf_counter() - t0
            calls[kind] = calls.get(kind, 0) + 1

    with tempfile.TemporaryDirectory(prefix="spear-scalesim-") as tmp:
        kv = LevelDBKV.open(str(Path(tmp) / "sms.ldb"))
        async with kv:
            sms = MetadataServer(kv, ClusterTimings(1.0, 3.0, 10.0), clock)
            names = [f"n{i:05d}" for i in range(n_nodes)]
            free = {name: NODE_CPU for name in names}
            spec_of = {need: FunctionSpec("m.wasm", resources=Resources(need, 0)) for need in NEEDS}
            t0 = time.perf_counter()
            for name in names:
                await sms.register(
                    NodeRecord(
                        name=name,
                        address=f"sim:{name}",
                        capacity=Resources(NODE_CPU, 8 * GiB),
                        free=Resources(NODE_CPU, 8 * GiB),
                        agents=(AgentInfo("wasm", "sim"),),
                        incarnation=f"{name}-1",
                    )
                )
            register_s = time.perf_counter() - t0
            mean_need = sum(NEEDS) / len(NEEDS)
            rate = UTILIZATION * n_nodes * NODE_CPU / (mean_need * MEAN_DURATION_S)
            queues: dict[str, deque[tuple[int, float]]] = {}
            ending: list[tuple[float, str, int, str]] = []  # (end, node, need, task id)
            reports: list[Any] = []
            ran_on = dict.fromkeys(names, 0)
            placement: list[float] = []
            waited: list[float] = []
            how = {"local": 0, "forwarded": 0, "stale_refusals": 0, "queued": 0}
            submitted = done = 0
            seq = 0
            start_wall = time.perf_counter()
            sim_start = clock.now
            beats_per_tick = max(1, round(n_nodes * TICK_S))

            def start(node: str, need: int, arrived: float) -> None:
                nonlocal seq
                seq += 1
                free[node] -= need
                ran_on[node] += 1
                waited.append(clock.now - arrived)
                task_id = f"t{seq:08d}"
                duration = rng.expovariate(1 / MEAN_DURATION_S)
                heapq.heappush(ending, (clock.now + duration, node, need, task_id))
                task = Task(
                    id=task_id,
                    spec=spec_of[need],
                    created_at=arrived,
                    node=node,
                    history=(("PENDING", arrived), ("RUNNING", clock.now)),
                )
                reports.append(task)

            async def place(receiver: str, need: int, arrived: float) -> bool:
                if free[receiver] >= need:
                    how["local"] += 1
                    start(receiver, need, arrived)
                    return True
                t = time.perf_counter()
                query = PlacementQuery(need=Resources(need, 0), runtime="wasm", exclude=(receiver,))
                found = await timed("find_nodes", sms.find_nodes(query))
                for candidate in rank_candidates(found.candidates):
                    if free[candidate.node.name] >= need:
                        placement.append(time.perf_counter() - t)
                        how["forwarded"] += 1
                        start(candidate.node.name, need, arrived)
                        return True
                    how["stale_refusals"] += 1
                placement.append(time.perf_counter() - t)
                return False

            tick = 0
            while done < max_tasks and time.perf_counter() - start_wall < budget_s:
                tick += 1
                clock.now += TICK_S
                # Ends.
                while ending and ending[0][0] <= clock.now:
                    end, node, need, task_id = heapq.heappop(ending)
                    free[node] += need
                    done += 1
                    task = Task(
                        id=task_id,
                        spec=spec_of[need],
                        created_at=end,
                        node=node,
                        history=(("PENDING", end), ("RUNNING", end), ("COMPLETED", end)),
                        state=TaskState.COMPLETED,
                    )
                    reports.append(task)
                # Queued tasks first (FIFO per node), then new arrivals.
                for receiver in list(queues):
                    queue = queues[receiver]
                    while queue and await place(receiver, queue[0][0], queue[0][1]):
                        queue.popleft()
                    if not queue:
                        del queues[receiver]
                arrivals = _poisson(rng, rate * TICK_S)
                for _ in range(arrivals):
                    submitted += 1
                    receiver = names[rng.randrange(n_nodes)]
                    need = NEEDS[rng.randrange(len(NEEDS))]
                    if receiver in queues or not await place(receiver, need, clock.now):
                        how["queued"] += 1
                        queues.setdefault(receiver, deque()).append((need, clock.now))
                # Heartbeats: every node once per simulated second, spread over the ticks.
                first = (tick * beats_per_tick) % n_nodes
                for k in range(beats_per_tick):
                    name = names[(first + k) % n_nodes]
                    running = 0
                    await timed(
                        "heartbeat",
                        sms.heartbeat(
                            name, f"{name}-1", Resources(free[name], 8 * GiB), running, 0
                        ),
                    )
                # Reports, batched per tick (as SPEARlets batch them).
                if reports:
                    batch, reports = reports, []
                    await timed("report_tasks", sms.report_tasks(batch))
                if tick % round(0.5 / TICK_S) == 0:  # the leader's loop, twice a second
                    await timed("checkpoint", sms.checkpoint())
                    await timed("sweep", sms.sweep())
            wall = time.perf_counter() - start_wall
            simulated = clock.now - sim_start
    counts = list(ran_on.values())
    mean = statistics.fmean(counts)
    sms_s = sum(spent.values())
    return {
        "nodes": n_nodes,
        "tasks_submitted": submitted,
        "tasks_finished": done,
        "simulated_s": round(simulated, 2),
        "wall_s": round(wall, 2),
        "register_all_s": round(register_s, 2),
        "arrival_rate_per_s": round(rate, 1),
        "placed": how,
        "placement_latency": summarize(placement),
        "queue_wait_simulated": summarize(waited),
        "sms": {
            "busy_s_per_simulated_s": round(sms_s / simulated, 3) if simulated else None,
            "calls_per_simulated_s": {k: round(v / simulated, 1) for k, v in calls.items()},
            "mean_ms_per_call": {k: round(spent[k] / calls[k] * 1e3, 4) for k in calls},
        },
        "spread": {
            "tasks_per_node_mean": round(mean, 2),
            "cv": round(statistics.pstdev(counts) / mean, 4) if mean else None,
            "min": min(counts),
            "max": max(counts),
        },
    }


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (normal approximation for large means, which is all we need)."""
    if mean > 50:
        return max(0, round(rng.gauss(mean, mean**0.5)))
    count, threshold, product = 0, pow(2.718281828459045, -mean), rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


def run(sizes: list[int], max_tasks: int, budget_s: float) -> dict[str, Any]:
    points = []
    for n in sizes:
        point = anyio.run(_simulate, n, max_tasks, budget_s, 17)
        print(json.dumps(point), file=sys.stderr)
        points.append(point)
    return {"points": points, "max_tasks": max_tasks, "budget_s_per_point": budget_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short budget")
    parser.add_argument("--nodes", default=None, help="comma-separated cluster sizes")
    parser.add_argument("--tasks", type=int, default=1_000_000, help="stop a size after these")
    parser.add_argument("--budget", type=float, default=120.0, help="wall seconds per size")
    parser.add_argument("--output", type=Path, default=RESULT_FILE)
    args = parser.parse_args(argv)
    default = "100,1000" if args.quick else "1000,2500,5000,10000"
    sizes = [int(x) for x in (args.nodes or default).split(",")]
    budget = 10.0 if args.quick else args.budget
    result = {"machine": machine(), "quick": args.quick, **run(sizes, args.tasks, budget)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
