"""The compiled-module cache across agents (as across processes) and its failure modes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear import FunctionSpec, TaskState
from spear.core.models import Task
from spear.runtimes.wasm.agent import WasmWorkerAgent

if TYPE_CHECKING:
    from pathlib import Path


async def _prepare(cache: Path, module: Path) -> dict[str, int]:
    async with WasmWorkerAgent(cache) as agent:
        await agent.prepare(Task(id="t", spec=FunctionSpec(str(module))))
        return agent.cache_stats


async def test_second_agent_loads_instead_of_compiling(tmp_path: Path, hello_wasm: Path) -> None:
    cache = tmp_path / "cache"
    first = await _prepare(cache, hello_wasm)
    assert first["compiles"] == 1
    [entry] = list(cache.iterdir())
    assert entry.suffix == ".cwasm" and "wasmtime" in entry.name
    second = await _prepare(cache, hello_wasm)
    assert (second["compiles"], second["disk_hits"]) == (0, 1)


async def test_corrupt_entry_is_recompiled(tmp_path: Path, hello_wasm: Path) -> None:
    cache = tmp_path / "cache"
    await _prepare(cache, hello_wasm)
    [entry] = list(cache.iterdir())
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    entry.write_bytes(bytes(raw))
    stats = await _prepare(cache, hello_wasm)
    assert (stats["rejected"], stats["compiles"]) == (1, 1)
    assert (await _prepare(cache, hello_wasm))["disk_hits"] == 1  # replaced by a good one


async def test_truncated_and_foreign_entries(tmp_path: Path, hello_wasm: Path) -> None:
    cache = tmp_path / "cache"
    await _prepare(cache, hello_wasm)
    [entry] = list(cache.iterdir())
    entry.write_bytes(entry.read_bytes()[:10])
    assert (await _prepare(cache, hello_wasm))["rejected"] == 1
    # A well-checksummed file that is not a wasmtime artifact is refused by wasmtime itself.
    import hashlib

    payload = b"\x7fELF not really a module" * 10
    entry.write_bytes(hashlib.sha256(payload).digest() + payload)
    stats = await _prepare(cache, hello_wasm)
    assert (stats["rejected"], stats["compiles"]) == (1, 1)


async def test_fuel_engine_keeps_its_own_entries(tmp_path: Path, hello_wasm: Path) -> None:
    cache = tmp_path / "cache"
    async with WasmWorkerAgent(cache) as agent:
        await agent.prepare(Task(id="a", spec=FunctionSpec(str(hello_wasm))))
        await agent.prepare(Task(id="b", spec=FunctionSpec(str(hello_wasm), fuel=10**9)))
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 2 and any("fuel" in n for n in names)


async def test_unwritable_cache_still_runs(tmp_path: Path, hello_wasm: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    from spear import LocalNode

    async with LocalNode(tmp_path / "home") as node:
        # Point the agent's cache somewhere it cannot write: the task must still run.
        agent = WasmWorkerAgent(blocker / "cache")
        node.agents["wasm"] = agent
        node.controller._agents = node.agents  # type: ignore[attr-defined]
        async with agent:
            task = await node.run(FunctionSpec(str(hello_wasm)))
        assert task.state is TaskState.COMPLETED
