"""The agent toolkit beside its floors and peers, in one run (docs/toolkit.md):

- vector query p50/p99 at 10k and 100k vectors of 384 dimensions: spear's VectorStore
  (usearch HNSW + metadata + SQLite records) beside usearch alone (the floor) and
  faiss-cpu's HNSW (the library we compared it with), same data, same queries, interleaved;
- a subtask's spawn-to-result, timed inside a parent process agent (a trivial WASM
  child), beside a nested Ray task (`ray.get(g.remote())` timed inside a Ray task);
- an MCP tool call (the test server's `echo`): the SDK's client calling the server
  directly, the node's hub (McpHub.call), and a process agent's `call_tool` (the whole
  host path: agent socket, allow-list, hub, server).

`python -m benchmarks.toolkit_bench [--quick]` writes benchmarks/results/toolkit.json;
with `--mcp-only`, only the MCP rows, to benchmarks/results/toolkit-mcp.json.
Nothing here asserts a timing.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import ROOT, TRIVIAL_WAT, not_available, standalone, summarize

RESULT_FILE = ROOT / "benchmarks" / "results" / "toolkit.json"
MCP_RESULT_FILE = ROOT / "benchmarks" / "results" / "toolkit-mcp.json"
DIM = 384
MCP_SERVER = [sys.executable, str(ROOT / "tests" / "toolkit" / "mcp_test_server.py")]


# -- vectors ----------------------------------------------------------------------------


def vectors(quick: bool) -> dict[str, Any]:
    import numpy as np
    from usearch.index import Index

    from spear.toolkit.vectors import VectorStore

    out: dict[str, Any] = {}
    rng = np.random.default_rng(1)
    for n in (2_000, 10_000) if quick else (10_000, 100_000):
        data = rng.standard_normal((n, DIM)).astype(np.float32)
        queries = rng.standard_normal((200, DIM)).astype(np.float32)
        row: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            store = VectorStore(Path(tmp))
            store.create("bench", DIM)
            t0 = time.perf_counter()
            for start in range(0, n, 1000):
                chunk = data[start : start + 1000]
                store.request(
                    {
                        "op": "upsert",
                        "collection": "bench",
                        "records": [
                            {
                                "id": str(start + i),
                                "vector": v.tolist(),
                                "metadata": {"even": (start + i) % 2 == 0},
                            }
                            for i, v in enumerate(chunk)
                        ],
                    }
                )
            row["spear_build_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            alone = Index(ndim=DIM, metric="cos", dtype="f32")
            alone.add(np.arange(n, dtype=np.uint64), data)
            row["usearch_build_s"] = round(time.perf_counter() - t0, 2)
            faiss_index = None
            try:
                import faiss

                normed = data / np.linalg.norm(data, axis=1, keepdims=True)
                t0 = time.perf_counter()
                faiss_index = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
                faiss_index.hnsw.efConstruction = 128  # usearch's defaults: M 16, 128, 64
                faiss_index.add(normed)
                faiss_index.hnsw.efSearch = 64
                row["faiss_build_s"] = round(time.perf_counter() - t0, 2)
            except ImportError:
                row["faiss"] = not_available("faiss-cpu is not installed")
            normed_all = data / np.linalg.norm(data, axis=1, keepdims=True)
            exact = np.argsort(-(queries @ normed_all.T), axis=1)[:, :10]
            hits = {"usearch_alone": 0, "spear_vector_store": 0, "faiss_hnsw_alone": 0}
            spear, spear_filtered, floor, peer = [], [], [], []
            for qi, q in enumerate(queries):  # interleaved: each query through each, in turn
                truth = set(exact[qi].tolist())
                t0 = time.perf_counter()
                found = alone.search(q, 10)
                floor.append(time.perf_counter() - t0)
                hits["usearch_alone"] += len(truth & {int(k) for k in found.keys})
                t0 = time.perf_counter()
                answer = store.request(
                    {"op": "query", "collection": "bench", "vector": q.tolist(), "k": 10}
                )
                spear.append(time.perf_counter() - t0)
                hits["spear_vector_store"] += len(truth & {int(h["id"]) for h in answer})
                t0 = time.perf_counter()
                store.request(
                    {
                        "op": "query",
                        "collection": "bench",
                        "vector": q.tolist(),
                        "k": 10,
                        "filter": {"even": True},
                    }
                )
                spear_filtered.append(time.perf_counter() - t0)
                if faiss_index is not None:
                    qn = (q / np.linalg.norm(q))[None, :]
                    t0 = time.perf_counter()
                    _, ids = faiss_index.search(qn, 10)
                    peer.append(time.perf_counter() - t0)
                    hits["faiss_hnsw_alone"] += len(truth & set(ids[0].tolist()))
            store.close()
        row["usearch_alone"] = summarize(floor)
        row["spear_vector_store"] = summarize(spear)
        row["spear_vector_store_filter_half"] = summarize(spear_filtered)
        if peer:
            row["faiss_hnsw_alone"] = summarize(peer)
        row["recall_at_10"] = {k: round(v / (10 * len(queries)), 3) for k, v in hits.items()}
        out[f"{n}x{DIM}"] = row
    return out


# -- subtasks ---------------------------------------------------------------------------

PARENT = """
import json, sys, time
from spear import agent
a = agent.Agent()
samples = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    a.spawn(sys.argv[1]).result()
    samples.append(time.perf_counter() - t0)
a.set_result(json.dumps(samples).encode())
"""


async def _spear_subtasks(n: int) -> list[float]:
    import wasmtime

    from spear import FunctionSpec, LocalNode
    from spear.core.models import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        child = Path(tmp) / "child.wasm"
        child.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
        parent = Path(tmp) / "parent.py"
        parent.write_text(PARENT)
        async with LocalNode(Path(tmp) / "home") as node:
            spec = FunctionSpec(str(parent), runtime=Runtime.PROCESS, args=(str(child), str(n)))
            task = await node.run(spec)
            value, _ = await node.objects.get(f"results/{task.id}")
            samples: list[float] = json.loads(bytes(value))[5:]  # (the first ones warm up)
            return samples


def _ray_nested(n: int) -> list[float] | dict[str, Any]:
    try:
        import ray
    except ImportError:
        return not_available("ray is not installed (pip install '.[bench]')")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        def g() -> None:
            return None

        @ray.remote
        def f(count: int) -> list[float]:
            samples = []
            for _ in range(count):
                t0 = time.perf_counter()
                ray.get(g.remote())
                samples.append(time.perf_counter() - t0)
            return samples

        samples: list[float] = ray.get(f.remote(n))[5:]
        return samples
    finally:
        ray.shutdown()


def subtasks(quick: bool) -> dict[str, Any]:
    n = 30 if quick else 200
    spear = anyio.run(_spear_subtasks, n)
    ray = _ray_nested(n)
    return {
        "spear_subtask_wasm_child": summarize(spear),
        "ray_nested_task": summarize(ray) if isinstance(ray, list) else ray,
    }


# -- MCP ----------------------------------------------------------------------------------

MCP_AGENT = """
import json, sys, time
from spear import agent
a = agent.Agent()
samples = []
for i in range(int(sys.argv[1])):
    t0 = time.perf_counter()
    a.call_tool("test/echo", {"text": str(i)})
    samples.append(time.perf_counter() - t0)
a.set_result(json.dumps(samples).encode())
"""


async def _mcp(n: int, per_round: int = 30) -> dict[str, Any]:
    """The three interleaved in rounds of `per_round` calls each (the order rotating from
    round to round), so the machine's load falls on all three alike; each block's first
    2 calls are left out (a new agent process's first calls set up its socket)."""
    from mcp import Client, StdioServerParameters

    from spear import FunctionSpec, LocalNode
    from spear.core.models import Runtime

    samples: dict[str, list[float]] = {"direct": [], "hub": [], "agent": []}
    params = StdioServerParameters(command=MCP_SERVER[0], args=MCP_SERVER[1:])
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "mcp.toml"
        config.write_text(f"[servers.test]\ncommand = {json.dumps(MCP_SERVER)}\n")
        agent = Path(tmp) / "agent.py"
        agent.write_text(MCP_AGENT)
        with open(os.devnull, "w") as sink:  # noqa: ASYNC230 - no I/O happens
            from mcp.client.stdio import stdio_client

            async with (
                LocalNode(Path(tmp) / "home", mcp_config=str(config)) as node,
                Client(stdio_client(params, errlog=sink), cache=None) as client,
            ):
                hub = node.services.tools

                async def direct() -> list[float]:
                    out = []
                    for i in range(per_round):
                        t0 = time.perf_counter()
                        await client.call_tool("echo", {"text": str(i)})
                        out.append(time.perf_counter() - t0)
                    return out

                async def via_hub() -> list[float]:
                    out = []
                    for i in range(per_round):
                        t0 = time.perf_counter()
                        await hub.call("test/echo", {"text": str(i)}, None)
                        out.append(time.perf_counter() - t0)
                    return out

                async def via_agent() -> list[float]:
                    spec = FunctionSpec(str(agent), runtime=Runtime.PROCESS, args=(str(per_round),))
                    task = await node.run(spec)
                    value, _ = await node.objects.get(f"results/{task.id}")
                    return list(json.loads(bytes(value)))

                ways = [("direct", direct), ("hub", via_hub), ("agent", via_agent)]
                await direct()  # (warm-up: the server's first calls)
                for r in range(max(1, n // per_round)):
                    for name, way in ways[r % 3 :] + ways[: r % 3]:
                        samples[name].extend((await way())[2:])
    median = {name: statistics.median(v) for name, v in samples.items()}
    return {
        "rounds_of": per_round,
        "mcp_client_direct": summarize(samples["direct"]),
        "spear_hub_call": summarize(samples["hub"]),
        "spear_process_agent_call_tool": summarize(samples["agent"]),
        "overhead_hub_vs_direct_ms": round((median["hub"] - median["direct"]) * 1e3, 3),
        "overhead_agent_vs_direct_ms": round((median["agent"] - median["direct"]) * 1e3, 3),
    }


def mcp(quick: bool) -> dict[str, Any]:
    return anyio.run(_mcp, 60 if quick else 600)


def run(quick: bool) -> dict[str, Any]:
    return {"mcp": mcp(quick), "subtasks": subtasks(quick), "vectors": vectors(quick)}


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--mcp-only" in argv:  # (the MCP rows alone, into toolkit-mcp.json)
        argv.remove("--mcp-only")
        standalone(__doc__, lambda quick: {"mcp": mcp(quick)}, MCP_RESULT_FILE, argv)
    else:
        standalone(__doc__, run, RESULT_FILE, argv)
