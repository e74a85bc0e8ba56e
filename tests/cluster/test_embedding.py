"""A cluster embedded in Python, without the CLI or a subprocess: `spear.serve_sms` and
`spear.join_cluster`, with real gRPC servers on loopback and real LevelDB data dirs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from conftest import build_wat

import spear
from spear import FunctionSpec, InvalidArgument, TaskState, join_cluster

if TYPE_CHECKING:
    from pathlib import Path

HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from b\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 13))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


def test_an_sms_and_two_members_from_python(tmp_path: Path) -> None:
    hello = build_wat(HELLO_WAT, tmp_path, "hello")
    on_b = FunctionSpec(str(hello), labels=(("zone", "b"),))

    async def main() -> None:
        async with (
            spear.serve_sms(tmp_path / "sms") as sms,
            join_cluster(tmp_path / "a", sms=sms.address, name="a") as a,
            join_cluster(tmp_path / "b", sms=sms.address, name="b", labels={"zone": "b"}),
        ):
            assert [n.name for n in await sms.metadata.nodes()] == ["a", "b"]
            # Submitted to a, placed on b (the only node with zone=b), read back through a.
            handle = await a.submit(on_b)
            result = await handle
            assert result.task.node == "b" and result.task.state is TaskState.COMPLETED
            assert result.output == b"hello from b\n"
            assert (await a.task(handle.id)).node == "b"
            # One call (run and result) placed on b; and a task that fits runs on a itself.
            called = await a.call(on_b)
            assert called.task.node == "b" and called.output == b"hello from b\n"
            here = await a.run(FunctionSpec(str(hello)))
            assert here.node == "a" and here.state is TaskState.COMPLETED
            # `run` with output sinks: placed on b, its output relayed as it is written.
            out: list[bytes] = []
            created: list[str] = []
            relayed = await a.run(
                on_b, stdout=out.append, on_created=lambda t: created.append(t.id)
            )
            assert relayed.node == "b" and b"".join(out) == b"hello from b\n"
            assert created == [relayed.id]

    anyio.run(main)


def test_joining_needs_an_sms(tmp_path: Path) -> None:
    async def main() -> None:
        async with join_cluster(tmp_path / "a"):
            pass  # pragma: no cover

    with pytest.raises(InvalidArgument, match="sms"):
        anyio.run(main)
