"""Fuzzing the hostcall ABI from a real wasm guest (issue 14, item 6).

Hypothesis writes a WAT guest per example: a memory image of its choosing (random bytes,
keys, JSON requests) and a sequence of calls to any `spear` hostcall with random
arguments: pointers and lengths inside, at the edge of and far outside memory, negative
ones, small handles that may or may not be open, in any order (so handles are used after
close, polled before they exist, and so on). The guest stores every answer and prints them.

What must hold for every example: the guest is never trapped by a hostcall (the task
completes, exit 0), no hostcall fails with a host bug (nothing logged at ERROR: a Python
exception in a hostcall is logged and answered -EIO), and every answer is >= 0 or a WASI
errno (-1..-76). The node runs one task after another for the whole module, and runs a
plain task at the end.
"""

from __future__ import annotations

import collections
import contextlib
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import pytest
import wasmtime
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

import spear
from spear.core.models import FunctionSpec, TaskState
from spear.runtimes.wasm.hostcalls import REGISTRY

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PAGE = 65536
RESULTS = 61440  # where the guest stores its answers (i32 each)
IOVEC = 61400
MAX_CALLS = 12
# Calls whose arguments are clamped so an example ends quickly (they may block by design).
BOUNDED = {"sleep": {0: (0, 1_000_000)}, "poll": {2: (0, 5)}}
SEEN: collections.Counter[str] = collections.Counter()  # answers, for the docs' numbers


def _i32() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 1100),  # inside the image and the memory below the answers
        st.integers(0, 8),  # handles, small lengths
        st.sampled_from([PAGE - 4, PAGE - 1, PAGE, PAGE + 1, 2**31 - 1, -1, -(2**31), 0]),
        st.integers(-(2**31), 2**31 - 1),
    )


def _i64() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(-2, 8), st.sampled_from([2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1)
    )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_KEYS = st.sampled_from(["k", "results/x", "@ns/a/k", "a/b", "", "../x", "k\x00"])
_IMAGE = st.one_of(
    st.binary(max_size=256),
    _KEYS.map(lambda k: k.encode()),
    _JSON.map(lambda j: __import__("json").dumps(j).encode()),
    st.fixed_dictionaries(
        {"artifact": st.text(max_size=10), "op": st.sampled_from(["list", "query", "x"])}
    ).map(lambda j: __import__("json").dumps(j).encode()),
)


@st.composite
def _calls(draw: st.DrawFn) -> list[tuple[str, list[int]]]:
    out = []
    names = sorted(REGISTRY)
    for _ in range(draw(st.integers(1, MAX_CALLS))):
        name = draw(st.sampled_from(names))
        args = []
        for i, kind in enumerate(REGISTRY[name].params):
            value = draw(_i64() if str(kind) == "i64" else _i32())
            low_high = BOUNDED.get(name, {}).get(i)
            if low_high is not None:
                value = min(max(value, low_high[0]), low_high[1])
            args.append(value)
        out.append((name, args))
    return out


def _guest(image: bytes, calls: list[tuple[str, list[int]]]) -> bytes:
    used = sorted({name for name, _ in calls})
    imports = []
    for name in used:
        params = " ".join(str(p) for p in REGISTRY[name].params)
        result = str(REGISTRY[name].results[0])
        imports.append(
            f'(import "spear" "{name}" (func ${name} (param {params}) (result {result})))'
        )
    body = []
    for i, (name, args) in enumerate(calls):
        consts = " ".join(
            f"({p}.const {a})" for p, a in zip(map(str, REGISTRY[name].params), args, strict=True)
        )
        answer = f"(call ${name} {consts})"
        if str(REGISTRY[name].results[0]) == "i64":
            answer = f"(i32.wrap_i64 {answer})"
        body.append(f"(i32.store (i32.const {RESULTS + 4 * i}) {answer})")
    data = "".join(f"\\{b:02x}" for b in image)
    return wasmtime.wat2wasm(f"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  {" ".join(imports)}
  (memory (export "memory") 1)
  (data (i32.const 0) "{data}")
  (func (export "_start")
    {" ".join(body)}
    (i32.store (i32.const {IOVEC}) (i32.const {RESULTS}))
    (i32.store (i32.const {IOVEC + 4}) (i32.const {4 * len(calls)}))
    (drop (call $write (i32.const 1) (i32.const {IOVEC}) (i32.const 1) (i32.const {IOVEC + 8})))))
""")


class _Node:
    def __init__(self, portal: Any, node: spear.LocalNode, home: Path) -> None:
        self.portal, self.node, self.home = portal, node, home
        self.errors: list[str] = []
        self.count = 0


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Node]:
    home = tmp_path_factory.mktemp("hostcall-fuzz")
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(str(m)), level="ERROR", filter="spear")

    @contextlib.asynccontextmanager
    async def started() -> Any:
        async with spear.LocalNode(home / "node") as node:
            logger.enable("spear")
            yield node

    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            with portal.wrap_async_context_manager(started()) as node:
                found = _Node(portal, node, home)
                found.errors = errors
                yield found
    finally:
        logger.remove(sink)
        logger.disable("spear")


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(image=_IMAGE, calls=_calls())
def test_random_hostcalls_never_trap_nor_fail_the_host(
    fuzz_node: _Node, image: bytes, calls: list[tuple[str, list[int]]]
) -> None:
    fuzz_node.count += 1
    path = fuzz_node.home / f"guest-{fuzz_node.count}.wasm"
    path.write_bytes(_guest(image, calls))
    task = fuzz_node.portal.call(fuzz_node.node.run, FunctionSpec(str(path), timeout_s=60))
    assert task.state is TaskState.COMPLETED, (task.reason, calls)
    assert task.exit_code == 0
    assert not fuzz_node.errors, fuzz_node.errors[-1]
    out = fuzz_node.portal.call(fuzz_node.node.logs_of, task.id, "stdout")
    path.unlink()
    if len(out) != 4 * len(calls):
        return  # a call wrote over the answers (its pointer said so): nothing to read
    for (name, _), i in zip(calls, range(0, len(out), 4), strict=True):
        answer = int.from_bytes(out[i : i + 4], "little", signed=True)
        if name in ("time_now", "abi_version"):
            continue
        assert answer >= -76, (name, answer)  # a WASI errno, or a success
        SEEN[f"{name} {'ok' if answer >= 0 else answer}"] += 1


def test_the_node_runs_on_after_the_fuzzing(fuzz_node: _Node, tmp_path: Path) -> None:
    from wat_tasks import hello

    task = fuzz_node.portal.call(fuzz_node.node.run, FunctionSpec(str(hello(tmp_path))))
    assert task.state is TaskState.COMPLETED
    assert fuzz_node.portal.call(fuzz_node.node.logs_of, task.id, "stdout") == b"hello\n"
