"""Object-store hostcalls from real C agents (clang --target=wasm32-wasi with sdk/c/spear.h)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from conftest import ROOT, build_c, build_wat

from spear import FunctionSpec, LocalNode, TaskState
from spear.store.objects import result_key

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="session")
def hostcalls_wasm() -> Path:
    return build_c(ROOT / "tests" / "wasm" / "hostcalls.c")


@pytest.fixture(scope="session")
def counter_wasm() -> Path:
    return build_c(ROOT / "examples" / "counter" / "counter.c")


async def _run(node: LocalNode, module: Path, *args: str) -> tuple[int | None, bytes]:
    task = await node.run(FunctionSpec(str(module), args=args, timeout_s=60))
    return task.exit_code, await node.logs_of(task.id, "stdout")


async def test_fifty_concurrent_counters_end_at_exactly_fifty(
    tmp_path: Path, counter_wasm: Path
) -> None:
    async with LocalNode(tmp_path / "home", max_concurrent_tasks=16) as node:
        tasks = [
            await node.submit(FunctionSpec(str(counter_wasm), timeout_s=120)) for _ in range(50)
        ]
        finished = [await node.wait(t.id) for t in tasks]
        assert {t.state for t in finished} == {TaskState.COMPLETED}, [t.reason for t in finished]
        value, _ = await node.objects.get("counter")
        assert bytes(value) == b"50"
        # Each task printed the value it wrote: every one from 1 to 50, once.
        written = sorted([int(await node.logs_of(t.id, "stdout")) for t in tasks])
        assert written == list(range(1, 51))


async def test_bad_pointers_and_lengths_are_error_codes(
    tmp_path: Path, hostcalls_wasm: Path
) -> None:
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(hostcalls_wasm), args=("faults",)))
        stderr = await node.logs_of(task.id, "stderr")
        assert task.state is TaskState.COMPLETED, stderr
        assert node.state.value == "running"


async def test_put_with_versions_from_a_guest(tmp_path: Path, hostcalls_wasm: Path) -> None:
    async with LocalNode(tmp_path / "home") as node:
        code, out = await _run(node, hostcalls_wasm, "put", "k", "one", "0")
        rc, version = out.split()
        assert (code, int(rc)) == (0, 0)
        assert bytes((await node.objects.get("k"))[0]) == b"one"
        assert (await node.objects.get("k"))[1] == int(version)
        # A stale version: -ESTALE (72 in WASI's numbering), and nothing changes.
        _, out = await _run(node, hostcalls_wasm, "put", "k", "two", str(int(version) - 1))
        assert out.split()[0] == b"-72"
        _, out = await _run(node, hostcalls_wasm, "put", "k", "two", "0")
        assert out.split()[0] == b"-72"
        assert bytes((await node.objects.get("k"))[0]) == b"one"
        _, out = await _run(node, hostcalls_wasm, "put", "k", "two", version.decode())
        assert out.split()[0] == b"0" and int(out.split()[1]) > int(version)


async def test_a_small_buffer_gets_enospc_and_the_length_needed(
    tmp_path: Path, hostcalls_wasm: Path
) -> None:
    async with LocalNode(tmp_path / "home") as node:
        payload = bytes(range(256)) * 40_000  # 10 MB, from a file
        await node.objects.put("big", payload)
        code, out = await _run(node, hostcalls_wasm, "enospc", "big")
        assert code == 0 and out == payload


async def test_info_and_list_from_a_guest(tmp_path: Path, hostcalls_wasm: Path) -> None:
    async with LocalNode(tmp_path / "home") as node:
        version = await node.objects.put("dir/a", b"hello")
        await node.objects.put("dir/b", b"x")
        await node.objects.put("other", b"x")
        await node.objects.pin("dir/a")
        await node.objects.add_ref("dir/a")
        _, out = await _run(node, hostcalls_wasm, "info", "dir/a")
        assert out.split() == [b"5", str(version).encode(), b"1", b"1"]
        _, out = await _run(node, hostcalls_wasm, "info", "nope")
        assert out.strip() == b"-44"  # ENOENT
        _, out = await _run(node, hostcalls_wasm, "list", "dir/")
        assert out.splitlines() == [b"dir/a", b"dir/b"]


async def test_a_running_tasks_reference_holds_the_object_until_it_ends(
    tmp_path: Path, hostcalls_wasm: Path
) -> None:
    async with LocalNode(tmp_path / "home") as node:
        await node.objects.put("shared", b"x" * 10_000)
        stream = await node.start_task(FunctionSpec(str(hostcalls_wasm), args=("hold", "shared")))
        assert await stream.receive() == b"holding"
        assert (await node.objects.info("shared")).refs == 1
        assert await node.objects.collect(grace_s=0) == []  # referenced: not collected
        await stream.close()
        task = await stream.wait()
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        assert (await node.objects.info("shared")).refs == 0  # released at the end
        assert "shared" in await node.objects.collect(grace_s=0)  # then collectable


async def test_a_tasks_result_is_its_stdout_or_what_it_set(
    tmp_path: Path, hostcalls_wasm: Path, hello_wasm: Path
) -> None:
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(hello_wasm), args=("you",)))
        value, _ = await node.objects.get(result_key(task.id))
        assert bytes(value) == b"Hello, you!\n"
        task = await node.run(FunctionSpec(str(hostcalls_wasm), args=("result", "explicit")))
        assert task.state is TaskState.COMPLETED
        assert bytes((await node.objects.get(result_key(task.id)))[0]) == b"explicit"
    async with LocalNode(tmp_path / "home") as node:  # still there after a restart
        assert bytes((await node.objects.get(result_key(task.id)))[0]) == b"explicit"
        # The same through run_many, whose results are stored a wave at a time.
        explicit, silent = await node.run_many(
            [
                FunctionSpec(str(hostcalls_wasm), args=("result", "set")),
                FunctionSpec(str(build_wat('(module (func (export "_start")))', tmp_path))),
            ]
        )
        assert bytes((await node.objects.get(result_key(explicit.id)))[0]) == b"set"
        assert bytes((await node.objects.get(result_key(silent.id)))[0]) == b""


WAT_NO_MEMORY = """
(module
  (import "spear" "obj_put" (func $put (param i32 i32 i32 i32 i64 i32) (result i32)))
  (func (export "_start")
    (if (i32.ne (call $put (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 1)
                           (i64.const -1) (i32.const 0))
                (i32.const -21))  ;; EFAULT
      (then unreachable))))
"""


async def test_a_module_without_memory_gets_efault(tmp_path: Path) -> None:
    module = build_wat(WAT_NO_MEMORY, tmp_path, "nomem")
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(module)))
        assert task.state is TaskState.COMPLETED, task.reason
