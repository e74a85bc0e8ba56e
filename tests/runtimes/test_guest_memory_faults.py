"""A bad guest pointer never crashes the host: guest memory's bounds checks (docs/hostcalls.md:
"a bad one is -EFAULT") on reads and writes at and past the edges of a real wasm memory.

A wrong check would not fail an assertion: the host would read or write past the guest's
memory and the process would die. So the probes outside memory run in a child process,
whose normal end and answers the test checks; the ones inside run here as well."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

from spear.runtimes.wasm.hostcalls import abi

PAGE = 65536
# The guest's one page holds "head" at 0 and "tail" in its last 4 bytes.
GUEST = f"""(module
  (import "t" "probe" (func $probe))
  (memory (export "memory") 1)
  (data (i32.const 0) "head") (data (i32.const {PAGE - 4}) "tail")
  (func (export "run") (call $probe)))"""

Probe = tuple[str, int, int | str]  # ("read", ptr, length) or ("write", ptr, text)

INSIDE: list[Probe] = [("read", 0, 4), ("write", 0, "HEAD"), ("read", 0, 4), ("read", 0, 0)]
EDGES: list[Probe] = [
    ("read", PAGE - 4, 4),  # the last 4 bytes
    ("read", PAGE - 3, 4),  # one byte past the end
    ("read", PAGE, 0),  # empty, at the end: nothing outside is touched
    ("read", PAGE, 1),
    ("read", 8, -1),  # a negative length
    ("read", -1, 4),  # a negative address
    ("read", 0x7FFFFFFF, 2),
    ("read", 0xFFFFFFFF, 1),  # an i32 -1 read unsigned
    ("write", PAGE - 2, "over"),  # would write 2 bytes past the end
    ("write", PAGE - 4, "TAIL"),
    ("read", PAGE - 4, 4),
    ("write", 0xFFFFFFF0, "far"),
]
EDGE_ANSWERS = [
    "tail", "EFAULT", "", "EFAULT", "EFAULT", "EFAULT", "EFAULT", "EFAULT", "EFAULT", "ok",
    "TAIL", "EFAULT",
]  # fmt: skip


def probe_guest(probes: list[Probe]) -> list[str]:
    """Run a guest whose one hostcall makes `probes` on its memory: what each answered."""
    answers: list[str] = []

    def probe(caller: wasmtime.Caller) -> None:
        mem = abi.GuestMemory(caller)
        for op, ptr, arg in probes:
            try:
                if op == "read":
                    assert isinstance(arg, int)
                    answers.append(mem.read(ptr, arg).decode())
                else:
                    mem.write(ptr, str(arg).encode())
                    answers.append("ok")
            except abi.GuestFault:
                answers.append("EFAULT")

    store = wasmtime.Store()
    func = wasmtime.Func(store, wasmtime.FuncType([], []), probe, access_caller=True)
    instance = wasmtime.Instance(store, wasmtime.Module(store.engine, GUEST), [func])
    run = instance.exports(store)["run"]
    assert isinstance(run, wasmtime.Func)
    run(store)
    return answers


if __name__ == "__main__":  # the child: probes as JSON in argv[1], answers on stdout
    print(json.dumps(probe_guest([tuple(p) for p in json.loads(sys.argv[1])])))


@pytest.fixture
def answers() -> tuple[list[str], subprocess.CompletedProcess[str]]:
    inside = probe_guest(INSIDE)
    src = Path(abi.__file__).resolve().parents[4]  # the spear these tests import
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join((str(src), os.environ.get("PYTHONPATH", ""))),
    }
    child = subprocess.run(
        [sys.executable, __file__, json.dumps(EDGES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return inside, child


def test_a_bad_guest_pointer_never_crashes_the_host(
    answers: tuple[list[str], subprocess.CompletedProcess[str]],
) -> None:
    inside, child = answers
    assert inside == ["head", "ok", "HEAD", ""]
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout) == EDGE_ANSWERS
